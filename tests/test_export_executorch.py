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
from edgeslm.errors import BundleError, MissingExtraError
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


@pytest.fixture(scope="module")
def et_folder(small_ckpt: Path, tiny_data: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The float and INT8 .pte of ``small_ckpt``, checked against its ONNX export on 24 dev rows."""
    from edgeslm.export.onnx import export_onnx
    from edgeslm.recipe import ExportConfig

    root = tmp_path_factory.mktemp("et-out")
    onnx = export_onnx(small_ckpt, root / "onnx", ExportConfig(data=tiny_data, check_rows=4))
    config = ETConfig(check_rows=24, calibration_rows=16)
    return export_executorch(small_ckpt, root / "et", config, data=tiny_data, onnx=onnx)


@pytest.fixture(scope="module")
def coreml_folder(small_ckpt: Path, tiny_data: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_coreml(small_ckpt, tmp_path_factory.mktemp("coreml-out") / "coreml", data=tiny_data)


@needs_et
def test_pte_runs_in_executorch_and_agrees_with_onnx(et_folder: Path) -> None:
    out = et_folder
    report = json.loads((out / "executorch.json").read_text())
    assert (out / "model.pte").read_bytes()[4:8] == b"ET12"  # the ExecuTorch program flatbuffer's identifier
    assert report["files"]["model.pte"] == (out / "model.pte").stat().st_size
    assert report["xnnpack_subgraphs"] >= 1  # the linears and matmuls went to XNNPACK
    assert "embedding" in report["portable_ops"]  # the id lookup is in the program (portable kernel), not outside
    check = report["check"]
    assert check["rows"] == 24 and check["reference"] == "onnx" and check["threads_set"]
    # one program for every length up to 16: the dev sentences ran at their own lengths, as in ONNX Runtime
    assert report["dynamic_length"] and report["inputs"][0] == "input_ids [1, 2..16] int32"
    et = check["runs"]["executorch_xnnpack"]
    # float32 in both runtimes, same graph: only summation order differs
    assert et["max_abs_logit_diff_vs_onnx"] < 1e-3 * max(1.0, check["reference_max_abs_logit"])
    assert et["label_agreement_vs_onnx"] == 1.0
    assert et["accuracy"] == check["runs"]["onnx"]["accuracy"]
    assert 0 < et["p50_ms"] <= et["p95_ms"]


@needs_et
def test_int8_pte_is_quantized_smaller_and_close_to_onnx(et_folder: Path) -> None:
    report = json.loads((et_folder / "executorch.json").read_text())
    assert (et_folder / "model_int8.pte").read_bytes()[4:8] == b"ET12"
    int8 = report["int8"]
    assert int8["calibration_rows"] == 16 and int8["xnnpack_subgraphs"] >= 1
    # the table is int8 (one scale per row) and looked up by ExecuTorch's quantized kernel, not the float one
    assert "embedding_byte" in int8["portable_ops"] and "embedding" not in int8["portable_ops"]
    # the 30,522 x 64 table dominates: float 7.8 MB, int8 2.0 MB (+ its scales)
    assert report["files"]["model_int8.pte"] < 0.35 * report["files"]["model.pte"]
    check = report["check"]
    q, ref = check["runs"]["executorch_xnnpack_int8"], check["reference_max_abs_logit"]
    # int8 is lossy but not noise: within a tenth of the logit range, yet not the float answer bit for bit
    assert 1e-4 < q["max_abs_logit_diff_vs_onnx"] < 0.1 * max(1.0, ref), q
    assert 0 < q["p50_ms"] <= q["p95_ms"]


@needs_ct
def test_mlpackage_spec_has_the_inputs_and_logits(coreml_folder: Path) -> None:
    out = coreml_folder
    report = json.loads((out / "coreml.json").read_text())
    assert (out / "model.mlpackage" / "Manifest.json").is_file()
    inputs = {f["name"]: f for f in report["inputs"]}
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert all(f["shape"] == [1, 16] and f["dtype"] == "INT32" for f in inputs.values())
    (logits,) = report["outputs"]
    assert logits == {"name": "logits", "type": "multiArrayType", "shape": [1, 2], "dtype": "FLOAT32"}
    assert report["files"]["model.mlpackage"] > 64 * 64 * 4  # at least the float32 weights of one 64x64 linear
    assert "not run" in report["prediction"] and "macOS" in report["prediction"]
    int8 = report["int8"]  # the same interface, weights stored int8 and dequantized by constexpr ops
    assert (int8["inputs"], int8["outputs"]) == (report["inputs"], report["outputs"])
    assert "constexpr_affine_dequantize" in int8["mil_ops"] and "constexpr_affine_dequantize" not in report["mil_ops"]
    assert report["files"]["model_int8.mlpackage"] < 0.3 * report["files"]["model.mlpackage"]


def _same_answers(src: Path, out: Path) -> None:
    from edgeslm.runtime.predictor import Predictor

    texts = ["a fine, moving film", "dull and far too long", "fine"]
    assert Predictor(out).predict(texts) == Predictor(src).predict(texts)  # older readers see the same bundle
    assert Predictor(out).logits(texts).tolist() == Predictor(src).logits(texts).tolist()


@needs_et
def test_bundle_carries_the_pte_and_lists_executorch(et_folder: Path, tmp_path: Path) -> None:
    from conftest import write_tiny_bundle
    from edgeslm.bundle import SIGNATURE, verify_bundle
    from edgeslm.export.carry import bundle_with_executorch

    src = write_tiny_bundle(tmp_path / "b")
    out = bundle_with_executorch(src, et_folder, tmp_path / "carry")
    manifest, blobs = verify_bundle(out)  # every file hashed, the .pte included
    assert blobs["model_int8.pte"] == (et_folder / "model_int8.pte").read_bytes()
    assert set(blobs) == {"model.onnx", "tokenizer.json", "model_int8.pte"} and not (out / SIGNATURE).exists()
    runtimes = manifest.extra["runtimes"]
    assert set(runtimes) == {"onnxruntime", "executorch"} and runtimes["onnxruntime"] == {"model": "model.onnx"}
    et = runtimes["executorch"]
    assert (et["model"], et["precision"], et["backend"], et["seq_len"]) == ("model_int8.pte", "int8", "XNNPACK", 16)
    measured = json.loads((et_folder / "executorch.json").read_text())["check"]["runs"]["executorch_xnnpack_int8"]
    assert et["check"] == {"rows": 24, "threads": 1, **measured}
    _same_answers(src, out)
    (out / "model_int8.pte").write_bytes(b"x" + blobs["model_int8.pte"][1:])  # the carried file is covered too
    with pytest.raises(BundleError, match="model_int8.pte` does not match its hash"):
        verify_bundle(out)


@needs_ct
def test_bundle_carries_the_mlpackage_as_a_stored_zip(coreml_folder: Path, tmp_path: Path) -> None:
    import zipfile

    from conftest import write_tiny_bundle
    from edgeslm.bundle import verify_bundle
    from edgeslm.export.carry import bundle_with_coreml

    src = write_tiny_bundle(tmp_path / "b")
    out = bundle_with_coreml(src, coreml_folder, tmp_path / "carry")
    manifest, blobs = verify_bundle(out)
    entry = manifest.extra["runtimes"]["coreml"]
    assert entry["model"] == "model_int8.mlpackage.zip" and entry["model"] in blobs
    assert "macOS" in entry["prediction"] and entry["inputs"][0]["name"] == "input_ids"
    package = coreml_folder / "model_int8.mlpackage"
    with zipfile.ZipFile(out / entry["model"]) as z:  # every file of the package, byte for byte, uncompressed
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        members = {i.filename: z.read(i) for i in z.infolist()}
    expected = {
        f"model_int8.mlpackage/{p.relative_to(package).as_posix()}": p.read_bytes()
        for p in package.rglob("*")
        if p.is_file()
    }
    assert members == expected and sum(map(len, members.values())) == entry["package_bytes"]
    _same_answers(src, out)
    again = bundle_with_coreml(out, coreml_folder, tmp_path / "again")  # carrying twice replaces, it does not stack
    assert verify_bundle(again)[1] == blobs


def test_bundle_out_is_refused_for_c_array_and_for_a_checkpoint(small_ckpt: Path, tmp_path: Path) -> None:
    from edgeslm.cli import app

    for fmt, needle in (("executorch", "needs a bundle as SRC"), ("c-array", "a C array is compiled in")):
        args = [
            "convert",
            str(small_ckpt),
            "--format",
            fmt,
            "--out",
            str(tmp_path / "x"),
            "--bundle-out",
            str(tmp_path / "b"),
        ]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and needle in " ".join(result.output.split()), result.output
        assert not (tmp_path / "x").exists() and not (tmp_path / "b").exists()


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
