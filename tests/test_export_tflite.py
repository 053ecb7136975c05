"""`convert --format tflite`: a real tiny BERT through litert-torch, ai-edge-quantizer, LiteRT and TFLite Micro.

The conversion tests need .venv-export (litert-torch pins an older pydantic, so it has its own venv); without it
they skip and say how to create it. The error paths run everywhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_random_classifier
from edgeslm.errors import ConfigError, MissingExtraError, ModelError
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
    """A random classifier (no training: conversion fidelity is what we test), 128 wide with a 1024 FFN: large
    enough (0.66 MB of INT8 weights) that ai-edge-quantizer stores constants after the flatbuffer, the format
    TensorFlow Lite Micro cannot read until `inline_buffers` moves them back."""
    out = tmp_path_factory.mktemp("tflite") / "ckpt"
    return write_random_classifier(out, tiny_base / "tokenizer.json", hidden=128, ffn=1024, seed=0)


@pytest.fixture(scope="module")
def converted(tiny_ckpt: Path, tiny_data: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeslm.export.onnx import export_onnx
    from edgeslm.recipe import ExportConfig

    root = tmp_path_factory.mktemp("tflite-out")
    onnx = export_onnx(tiny_ckpt, root / "onnx", ExportConfig(data=tiny_data, check_rows=4))
    config = TFLiteConfig(calibration_rows=32, check_rows=24, micro=True, micro_rows=3)
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
    # int8: every op integer, and no lookup in the graph: the input is the embedding rows (see _wrapper)
    assert "GELU" not in report["ops"]["int8"] and "EMBEDDING_LOOKUP" not in report["ops"]["int8"]
    # a random model's logits span only ~0.5 (measured 0.095 of 0.48), so int8's steps show; the trained models'
    # numbers are in benchmarks/results/export_tflite.json and nano_*.json (max 0.18 of 4.2 on the nano)
    assert runs["tflite_int8"]["max_abs_logit_diff_vs_onnx"] < 0.3 * report["check"]["reference_max_abs_logit"]
    assert runs["tflite_int8"]["label_agreement_vs_onnx"] >= 0.9
    assert report["files"]["model_int8.tflite"] < report["files"]["model_float.tflite"]


@needs_venv
def test_int8_table_is_the_float_table_in_the_input_scale_unclipped(converted: Path) -> None:
    """The device copies rows of the int8 table into the input; every row (rare words too) must be in range."""
    report = json.loads((converted / "tflite.json").read_text())
    scale, zero = report["input_quantization"]["scale"], report["input_quantization"]["zero_point"]
    table = np.load(converted / "embedding_float.npy")
    q = np.load(converted / "embedding_int8.npy")
    assert q.dtype == np.int8 and q.shape == table.shape == (30522, 128)
    assert np.abs((q.astype(np.float32) - zero) * scale - table).max() <= scale * 0.5 + 1e-6
    assert q.min() == -128 or q.max() == 127  # the range is used, not a sliver of it


@needs_venv
def test_tflite_micro_runs_int8_model_and_finds_its_arena(converted: Path) -> None:
    report = json.loads((converted / "tflite.json").read_text())
    assert report["inlined_buffers"] > 0  # the quantizer wrote its large-model format; TFLM reads zeros from it
    check = report["tflm"]["int8"]  # measured by the --micro export
    assert check["rows"] == 3 and 1024 < check["arena_bytes"] < 8 << 20
    # The lookup is out of the graph, so TFLM and LiteRT run the same int8 kernels on the same int8 input: equal
    # up to an output step or two (before, TFLM's hybrid int8 EMBEDDING_LOOKUP made this 0.12 on logits of ~0.5)
    assert check["max_abs_logit_diff_vs_litert"] < 0.03 * check["litert_max_abs_logit"]
    assert check["label_agreement_vs_litert"] == 1.0


@needs_venv
def test_fit_reads_the_measured_arena_and_says_by_how_much_a_model_misses(converted: Path, tmp_path: Path) -> None:
    from edgeslm.cli import app
    from edgeslm.fit import fit

    arena = json.loads((converted / "tflite.json").read_text())["tflm"]["int8"]["arena_bytes"]
    _, lines = fit(converted, "esp32-s3")
    assert all(line.ok is not False for line in lines), lines
    sram = next(line for line in lines if "arena" in line.check)
    assert sram.need == f"{arena / 1024:,.1f} KiB" and sram.budget == "512.0 KiB"
    # the 30,522 x 128 int8 table alone (3.9 MB) is more than the STM32H7's 2 MB of flash
    _, lines = fit(converted, "stm32h7")
    flash = lines[0]
    assert flash.ok is False and flash.check.startswith("flash (model")
    need = sum((converted / f).stat().st_size for f in ("model_int8.tflite", "embedding_int8.npy")) - 128
    assert flash.margin.startswith("-") and abs(float(flash.margin.split()[0]) + (need - 2e6) / 1e6) < 0.5
    result = CliRunner().invoke(app, ["fit", str(converted), "--device", "stm32h7"])
    assert result.exit_code == 1 and "does not fit stm32h7: flash (model" in result.output
    bare = tmp_path / "bare"
    shutil.copytree(converted, bare)
    (bare / "tflite.json").write_text(json.dumps({**json.loads((bare / "tflite.json").read_text()), "tflm": None}))
    with pytest.raises(ConfigError, match="no TensorFlow Lite Micro arena measured.*--format tflite --micro"):
        fit(bare, "esp32-s3")


@needs_venv
def test_bundle_carries_onnx_and_tflite_and_lists_its_runtimes(converted: Path, tmp_path: Path) -> None:
    from conftest import write_tiny_bundle
    from edgeslm.bundle import verify_bundle
    from edgeslm.export.carry import bundle_with_tflite
    from edgeslm.runtime.predictor import Predictor

    src = write_tiny_bundle(tmp_path / "b")
    out = bundle_with_tflite(src, converted, tmp_path / "carry")
    manifest, blobs = verify_bundle(out)  # every file hashed, the new ones included
    assert blobs["model_int8.tflite"] == (converted / "model_int8.tflite").read_bytes()
    runtimes = manifest.extra["runtimes"]
    assert set(runtimes) == {"onnxruntime", "litert", "tflite-micro"}
    assert runtimes["litert"]["embedding_table"] == "embedding_int8.npy" and runtimes["litert"]["seq_len"] == 16
    assert runtimes["tflite-micro"]["arena_bytes"] > 1024
    assert Predictor(out).predict("fine") == Predictor(src).predict("fine")  # older readers see the same bundle


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
