"""A bundle that carries more than one runtime: the ONNX bundle plus the LiteRT / TFLite Micro, ExecuTorch or Core ML
files of its student.

The manifest format needs no new field: ``extra.runtimes`` lists, per runtime, the files it loads and the checks
measured for it, so older readers (and the onnxruntime Predictor) see the same bundle they always did. The new
bundle is written unsigned: its manifest changed, so the old ``manifest.sig`` cannot cover it; sign it again.
One function (``bundle_with_files``) does the carrying; the ``bundle_with_<format>`` functions only read their
converter's report and say which files to add and what to list.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from ..bundle import verify_bundle, write_bundle
from ..errors import BundleError

__all__ = ["bundle_with_coreml", "bundle_with_executorch", "bundle_with_files", "bundle_with_tflite"]

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the oldest time zip can hold: the archive's bytes depend on the files only


def bundle_with_files(
    bundle: Path, out: Path, files: dict[str, Path], runtimes: dict[str, Any], *, force: bool = False
) -> Path:
    """Write ``out``: every verified file of ``bundle`` + ``files`` (bundle name -> path), with ``runtimes`` merged
    into ``extra.runtimes`` (an entry of the same name is replaced, so carrying twice updates rather than stacks).

    The bundle's own model and tokenizer cannot be replaced this way: the ONNX runtime's files stay what was
    verified. Every added file gets its sha256 in the manifest like the others (``verify_bundle`` checks them).
    """
    manifest, blobs = verify_bundle(Path(bundle))
    for name in files:
        if name in (manifest.model, manifest.tokenizer):
            raise BundleError(
                f"`{name}` is the bundle's own model or tokenizer; a carried runtime's file needs another name"
            )
    merged = {**(manifest.extra.get("runtimes") or {}), "onnxruntime": {"model": manifest.model}, **runtimes}
    with tempfile.TemporaryDirectory(prefix="edgeslm-carry-") as scratch:
        sources: dict[str, Path] = {}
        for name, data in blobs.items():
            if name not in files:
                sources[name] = Path(scratch) / name
                sources[name].write_bytes(data)  # the verified bytes, not a re-read of the folder
        sources.update(files)
        fields = {f.name: getattr(manifest, f.name) for f in dataclasses.fields(manifest)}
        fields = {k: v for k, v in fields.items() if k not in ("format_version", "files")}
        fields["extra"] = {**manifest.extra, "runtimes": merged}
        write_bundle(sources, Path(out), fields, force=force)
    return Path(out)


def bundle_with_tflite(bundle: Path, tflite: Path, out: Path, *, force: bool = False) -> Path:
    """Write ``out``: every file of ``bundle`` + the INT8 (else float) .tflite and its embedding table from the
    folder ``tflite`` (written by `convert --format tflite`), and ``extra.runtimes`` naming who loads what."""
    report = json.loads((Path(tflite) / "tflite.json").read_text(encoding="utf-8"))
    name = "int8" if (Path(tflite) / "model_int8.tflite").is_file() else "float"
    model, table = f"model_{name}.tflite", f"embedding_{name}.npy"
    runs = (report.get("check") or {}).get("runs") or {}
    runtimes: dict[str, Any] = {
        "litert": {
            "model": model,
            "embedding_table": table,
            "inputs": report["inputs"],
            "seq_len": report["seq_len"],
            "input_quantization": report.get("input_quantization") if name == "int8" else None,
            "check": {"rows": (report.get("check") or {}).get("rows"), **runs.get(f"tflite_{name}", {})},
        }
    }
    micro = (report.get("tflm") or {}).get(name)
    if micro:
        runtimes["tflite-micro"] = {"model": model, "embedding_table": table, **micro}
    files = {model: Path(tflite) / model, table: Path(tflite) / table}
    return bundle_with_files(bundle, out, files, runtimes, force=force)


def bundle_with_executorch(bundle: Path, folder: Path, out: Path, *, force: bool = False) -> Path:
    """Write ``out``: ``bundle`` + the INT8 (else float) .pte from ``folder`` (written by `convert --format
    executorch`), listed under ``extra.runtimes.executorch`` with its measured check against ONNX."""
    report = json.loads((Path(folder) / "executorch.json").read_text(encoding="utf-8"))
    int8 = (Path(folder) / "model_int8.pte").is_file()
    model, run = ("model_int8.pte", "executorch_xnnpack_int8") if int8 else ("model.pte", "executorch_xnnpack")
    check = report.get("check") or {}
    entry = {
        "model": model,
        "backend": report["backend"],
        "precision": "int8" if int8 else "float32",
        "inputs": report["inputs"],
        "seq_len": report["seq_len"],
        "check": {"rows": check.get("rows"), "threads": check.get("threads"), **(check.get("runs") or {}).get(run, {})},
    }
    return bundle_with_files(bundle, out, {model: Path(folder) / model}, {"executorch": entry}, force=force)


def _zip_stored(package: Path, archive: Path) -> Path:
    """``package`` (a folder) as a zip without compression, entries sorted, timestamps fixed.

    Why a zip: a bundle holds plain files only (no subfolders; bundle.py refuses paths, so a manifest cannot name
    `../x`), and an .mlpackage is a folder (Manifest.json + Data/com.apple.CoreML/{model.mlmodel, weights/}). One
    archive keeps the bundle flat and gives the package one hash. Stored, not deflated: float weights barely
    compress, and a device can then read the members in place; the app unzips it to `model.mlpackage/`
    before `MLModel.compileModel(at:)`.
    """
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:
        for path in sorted(p for p in package.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{package.name}/{path.relative_to(package).as_posix()}", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            z.writestr(info, path.read_bytes(), compress_type=zipfile.ZIP_STORED)
    return archive


def bundle_with_coreml(bundle: Path, folder: Path, out: Path, *, force: bool = False) -> Path:
    """Write ``out``: ``bundle`` + the INT8-weight (else float) .mlpackage from ``folder`` (written by `convert
    --format coreml`) as a stored zip, listed under ``extra.runtimes.coreml`` with the spec validated here.
    Core ML prediction was not run (it needs macOS); the entry says so."""
    report = json.loads((Path(folder) / "coreml.json").read_text(encoding="utf-8"))
    int8 = (Path(folder) / "model_int8.mlpackage").is_dir()
    package = Path(folder) / ("model_int8.mlpackage" if int8 else "model.mlpackage")
    entry = {
        "model": f"{package.name}.zip",
        "archive": f"zip (stored) of the folder {package.name}/; unzip it before MLModel.compileModel(at:)",
        "precision": "int8 weights, float32 compute" if int8 else "float32",
        "inputs": report["inputs"],
        "outputs": report["outputs"],
        "seq_len": report["seq_len"],
        "spec_version": report["spec_version"],
        "package_bytes": report["files"][package.name],
        "prediction": report["prediction"],
    }
    with tempfile.TemporaryDirectory(prefix="edgeslm-coreml-") as scratch:
        archive = _zip_stored(package, Path(scratch) / f"{package.name}.zip")
        return bundle_with_files(bundle, out, {archive.name: archive}, {"coreml": entry}, force=force)
