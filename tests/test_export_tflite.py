"""`convert --format tflite`: a real tiny BERT through litert-torch, ai-edge-quantizer, LiteRT and TFLite Micro.

The conversion tests need .venv-export (litert-torch pins an older pydantic, so it has its own venv); without it
they skip and say how to create it. The error paths run everywhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeslm.errors import MissingExtraError, ModelError
from edgeslm.export.tflite import EXPORT_VENV_HELP, TFLiteConfig, export_python, export_tflite, resolve_checkpoint
from edgeslm.recipe import DataConfig


def _has_export_venv() -> bool:
    try:
        export_python()
    except MissingExtraError:
        return False
    return True


needs_venv = pytest.mark.skipif(
    not _has_export_venv(), reason=f".venv-export is absent; create it with: {EXPORT_VENV_HELP}"
)


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_base: Path, tiny_data: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier checkpoint on the tiny random BERT (no training: conversion fidelity is what we test)."""
    import torch

    from edgeslm.models import new_classifier, save_checkpoint

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tflite") / "ckpt"
    model = new_classifier(tiny_base, ("negative", "positive"))
    save_checkpoint(model, out, tiny_base / "tokenizer.json", ("negative", "positive"), 16, {"step": "test"})
    return out


@pytest.fixture(scope="module")
def converted(tiny_ckpt: Path, tiny_data: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeslm.export.onnx import export_onnx
    from edgeslm.recipe import ExportConfig

    root = tmp_path_factory.mktemp("tflite-out")
    onnx = export_onnx(tiny_ckpt, root / "onnx", ExportConfig(data=tiny_data, check_rows=4))
    config = TFLiteConfig(calibration_rows=32, check_rows=24, micro=True)
    return export_tflite(tiny_ckpt, root / "tflite", config, data=tiny_data, onnx=onnx)


@needs_venv
def test_float_and_int8_tflite_agree_with_onnx(converted: Path) -> None:
    report = json.loads((converted / "tflite.json").read_text())
    for name in ("model_float.tflite", "model_int8.tflite"):
        assert (converted / name).read_bytes()[4:8] == b"TFL3"
    runs = report["check"]["runs"]
    assert report["check"]["rows"] == 24 and report["seq_len"] == 16
    # float: the same function as ONNX up to the tanh-GELU form and float rounding
    assert runs["tflite_float"]["max_abs_logit_diff_vs_onnx"] < 1e-2
    assert runs["tflite_float"]["label_agreement_vs_onnx"] >= 0.9
    # int8: every compute op integer; the float EMBEDDING_LOOKUP output is quantized right after the lookup
    assert "GELU" not in report["ops"]["int8"] and "QUANTIZE" in report["ops"]["int8"]
    # a random 32-wide model's logits span only ~0.5, so int8's steps show; the trained student's numbers are in
    # benchmarks/results/export_tflite.json
    assert runs["tflite_int8"]["max_abs_logit_diff_vs_onnx"] < 0.5 * report["check"]["reference_max_abs_logit"]
    assert report["files"]["model_int8.tflite"] < report["files"]["model_float.tflite"] / 2.5


@needs_venv
def test_tflite_micro_runs_int8_model_and_finds_its_arena(converted: Path) -> None:
    from edgeslm.export.tflite import micro_check

    check = micro_check(converted, rows=3, name="int8")
    assert 1024 < check["arena_bytes"] < 8 << 20
    # Known gap (issue 7 note): TFLM's hybrid int8 EMBEDDING_LOOKUP disagrees with LiteRT's, so outputs differ by
    # tens of int8 steps here (~0.12 on logits within ~0.5) and badly on the student. This bound only catches a
    # wrong input order or a dead model; tighten it to one step once the lookup moves out of the graph.
    assert check["max_abs_logit_diff_vs_litert"] < 0.5 * check["litert_max_abs_logit"]
    assert check["label_agreement_vs_litert"] >= 2 / 3


@needs_venv
def test_gelu_model_is_refused_by_tflite_micro_naming_the_operator(
    tiny_ckpt: Path, tiny_data: DataConfig, tmp_path: Path
) -> None:
    from edgeslm.export.tflite import micro_check

    folder = export_tflite(
        tiny_ckpt, tmp_path / "t", TFLiteConfig(int8=False, calibration_rows=2, check_rows=0), data=tiny_data
    )
    with pytest.raises(ModelError, match=r"GELU.*encoder\.layer\.N\.intermediate.*--format tflite --micro"):
        micro_check(folder, rows=1, name="float")


def test_missing_export_venv_names_the_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGESLM_EXPORT_PYTHON", str(tmp_path / "nowhere"))
    with pytest.raises(MissingExtraError, match=r"python3 -m venv \.venv-export .*litert-torch==0\.10\.0"):
        export_python()


def test_bundle_without_report_asks_for_the_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ModelError, match="pass the student checkpoint"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(ModelError, match="neither a checkpoint"):
        resolve_checkpoint(tmp_path / "missing")


def test_cli_unknown_format_lists_the_formats(tmp_path: Path) -> None:
    from edgeslm.cli import app

    result = CliRunner().invoke(app, ["convert", str(tmp_path), "--format", "coreml", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "unknown --format `coreml`; choose one of: tflite, c-array" in result.output


@needs_venv
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs the host g++ to compile the C array")
def test_cli_c_array_from_converted_folder_holds_the_int8_model(converted: Path, tmp_path: Path) -> None:
    import re

    from edgeslm.cli import app

    out = tmp_path / "c"
    args = ["convert", str(converted), "--format", "c-array", "--out", str(out), "--micro-rows", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    arena = int(re.search(r"arena (\d+) B", result.output).group(1))  # type: ignore[union-attr]
    assert f"kArenaSize = {arena + 4096};" in (out / "main.cc").read_text()
    driver = out / "dump.cc"
    driver.write_text(
        '#include <cstdio>\n#include "model_data.h"\n'
        "int main() { fwrite(g_model_data, 1, g_model_data_len, stdout); return 0; }\n"
    )
    exe = tmp_path / "dump"
    cmd = ["g++", "-std=c++17", "-O0", "-I", str(out), str(driver), str(out / "model_data.cc"), "-o", str(exe)]
    subprocess.run(cmd, check=True)
    dumped = subprocess.run([str(exe)], capture_output=True, check=True).stdout
    assert dumped == (converted / "model_int8.tflite").read_bytes()
