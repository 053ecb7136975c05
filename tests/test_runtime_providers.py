"""Execution providers: ask for accelerators, fall back to the CPU with the reason kept; `edgeslm doctor`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from conftest import write_tiny_bundle
from edgeslm.cli import app as cli_app
from edgeslm.errors import ConfigError
from edgeslm.runtime import Predictor
from edgeslm.runtime import providers as providers_module
from edgeslm.runtime.providers import CPU, provider_name


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("prov") / "bundle")


def test_missing_accelerators_fall_back_to_cpu_with_the_reason(bundle: Path) -> None:
    p = Predictor(bundle, providers=["xnnpack", "cuda"])
    assert p.execution.provider == CPU
    assert p.execution.requested == ("XnnpackExecutionProvider", "CUDAExecutionProvider", CPU)
    reasons = dict(p.execution.fallbacks)
    assert set(reasons) == {"XnnpackExecutionProvider", "CUDAExecutionProvider"}
    assert all("not in this onnxruntime build" in r for r in reasons.values())
    assert p.predict("still answers").label == "neg"


def test_default_is_auto_and_cpu_has_no_fallback(bundle: Path) -> None:
    p = Predictor(bundle)
    assert p.execution.provider == CPU and not p.execution.fell_back


def test_unknown_provider_is_a_config_error() -> None:
    assert provider_name("cuda") == "CUDAExecutionProvider"
    with pytest.raises(ConfigError, match="unknown execution provider `warp-drive`"):
        provider_name("warp-drive")


def test_a_provider_that_fails_to_build_the_session_falls_back(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No accelerator exists here, so one is simulated: ORT lists it, and building a session on it raises.
    real = ort.InferenceSession

    def session(model: Any, options: Any, providers: list[str]) -> Any:
        if providers[0] == "CoreMLExecutionProvider":
            raise RuntimeError("CoreML: unsupported op ReduceMean\nmore detail")
        return real(model, options, providers=providers)

    monkeypatch.setattr(providers_module.ort, "get_available_providers", lambda: ["CoreMLExecutionProvider", CPU])
    monkeypatch.setattr(providers_module.ort, "InferenceSession", session)
    p = Predictor(bundle, providers=["auto"])
    assert p.execution.provider == CPU
    assert p.execution.fallbacks == (
        ("CoreMLExecutionProvider", "session build failed: CoreML: unsupported op ReduceMean"),
    )


def test_doctor_reports_machine_and_bundle(bundle: Path) -> None:
    result = CliRunner().invoke(cli_app, ["doctor", str(bundle), "--provider", "xnnpack", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert "CPUExecutionProvider" in report["machine"]["providers_available"]
    assert report["machine"]["cores_usable"] >= 1 and report["machine"]["onnxruntime"] == ort.__version__
    assert report["bundle"]["provider"] == CPU
    assert report["bundle"]["fallbacks"][0]["provider"] == "XnnpackExecutionProvider"
    assert report["bundle"]["one_sentence_ms"] > 0
    text = CliRunner().invoke(cli_app, ["doctor"])
    assert text.exit_code == 0 and "providers_available" in text.output
