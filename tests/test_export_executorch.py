"""`convert --format executorch|coreml`: a real tiny BERT through torch.export, ExecuTorch (XNNPACK) and coremltools.

The conversions need executorch / coremltools in .venv-export; without them those tests skip and say the install
command. The .pte runs in ExecuTorch's own runtime and is compared with ONNX Runtime; the .mlpackage is checked by
its spec only (Core ML prediction needs macOS). The error paths run everywhere.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_random_classifier
from edgeslm.errors import MissingExtraError
from edgeslm.export.executorch import (
    COREML_HELP,
    EXECUTORCH_HELP,
    ETConfig,
    export_coreml,
    export_executorch,
    has_package,
)
from edgeslm.recipe import DataConfig

needs_et = pytest.mark.skipif(
    not has_package("executorch"), reason=f"executorch is not in .venv-export; install it with: {EXECUTORCH_HELP}"
)
needs_ct = pytest.mark.skipif(
    not has_package("coremltools"), reason=f"coremltools is not in .venv-export; install it with: {COREML_HELP}"
)


@pytest.fixture(scope="module")
def small_ckpt(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer, 64-wide classifier (no training: conversion fidelity is what these tests check)."""
    out = tmp_path_factory.mktemp("et") / "ckpt"
    return write_random_classifier(out, tiny_base / "tokenizer.json", hidden=64, ffn=128, seed=1)


@needs_et
def test_pte_runs_in_executorch_and_agrees_with_onnx(small_ckpt: Path, tiny_data: DataConfig, tmp_path: Path) -> None:
    from edgeslm.export.onnx import export_onnx
    from edgeslm.recipe import ExportConfig

    onnx = export_onnx(small_ckpt, tmp_path / "onnx", ExportConfig(data=tiny_data, check_rows=4))
    out = export_executorch(small_ckpt, tmp_path / "et", ETConfig(check_rows=24), data=tiny_data, onnx=onnx)
    report = json.loads((out / "executorch.json").read_text())
    assert (out / "model.pte").read_bytes()[4:8] == b"ET12"  # the ExecuTorch program flatbuffer's identifier
    assert report["files"]["model.pte"] == (out / "model.pte").stat().st_size
    assert report["xnnpack_subgraphs"] >= 1  # the linears and matmuls went to XNNPACK
    assert "embedding" in report["portable_ops"]  # the id lookup is in the program (portable kernel), not outside
    check = report["check"]
    assert check["rows"] == 24 and check["reference"] == "onnx" and check["threads_set"]
    et = check["runs"]["executorch_xnnpack"]
    # float32 in both runtimes, same graph: only summation order differs
    assert et["max_abs_logit_diff_vs_onnx"] < 1e-3 * max(1.0, check["reference_max_abs_logit"])
    assert et["label_agreement_vs_onnx"] == 1.0
    assert et["accuracy"] == check["runs"]["onnx"]["accuracy"]
    assert 0 < et["p50_ms"] <= et["p95_ms"]


@needs_ct
def test_mlpackage_spec_has_the_inputs_and_logits(small_ckpt: Path, tiny_data: DataConfig, tmp_path: Path) -> None:
    out = export_coreml(small_ckpt, tmp_path / "coreml", data=tiny_data)
    report = json.loads((out / "coreml.json").read_text())
    assert (out / "model.mlpackage" / "Manifest.json").is_file()
    inputs = {f["name"]: f for f in report["inputs"]}
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert all(f["shape"] == [1, 16] and f["dtype"] == "INT32" for f in inputs.values())
    (logits,) = report["outputs"]
    assert logits == {"name": "logits", "type": "multiArrayType", "shape": [1, 2], "dtype": "FLOAT32"}
    assert report["files"]["model.mlpackage"] > 64 * 64 * 4  # at least the float32 weights of one 64x64 linear
    assert "not run" in report["prediction"] and "macOS" in report["prediction"]


def test_unknown_format_lists_every_format(small_ckpt: Path, tmp_path: Path) -> None:
    from edgeslm.cli import app

    result = CliRunner().invoke(app, ["convert", str(small_ckpt), "--format", "onnx2", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "onnx2" in text and all(f in text for f in ("tflite", "c-array", "executorch", "coreml"))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("convert", "module"), [(export_executorch, "executorch"), (export_coreml, "coremltools")])
def test_missing_converter_says_how_to_install_it(
    convert: object, module: str, small_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the main venv is a real interpreter without executorch and coremltools (kept out of it on purpose)
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed in the main venv too, so it cannot stand in for a venv without it")
    monkeypatch.setenv("EDGESLM_EXPORT_PYTHON", sys.executable)
    with pytest.raises(MissingExtraError, match=f"`{module}` is not installed in .venv-export.*uv pip install"):
        convert(small_ckpt, tmp_path / "out")  # type: ignore[operator]
    assert not (tmp_path / "out").exists()
