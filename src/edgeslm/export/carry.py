"""A bundle that carries more than one runtime: the ONNX bundle plus the LiteRT / TFLite Micro files of its student.

The manifest format needs no new field: ``extra.runtimes`` lists, per runtime, the files it loads and the checks
measured for it, so older readers (and the onnxruntime Predictor) see the same bundle they always did. The new
bundle is written unsigned: its manifest changed, so the old ``manifest.sig`` cannot cover it; sign it again.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

from ..bundle import verify_bundle, write_bundle

__all__ = ["bundle_with_tflite"]


def bundle_with_tflite(bundle: Path, tflite: Path, out: Path, *, force: bool = False) -> Path:
    """Write ``out``: every file of ``bundle`` + the INT8 (else float) .tflite and its embedding table from the
    folder ``tflite`` (written by `convert --format tflite`), and ``extra.runtimes`` naming who loads what."""
    manifest, blobs = verify_bundle(Path(bundle))
    report = json.loads((Path(tflite) / "tflite.json").read_text(encoding="utf-8"))
    name = "int8" if (Path(tflite) / "model_int8.tflite").is_file() else "float"
    model, table = f"model_{name}.tflite", f"embedding_{name}.npy"
    runs = (report.get("check") or {}).get("runs") or {}
    litert: dict[str, Any] = {
        "model": model,
        "embedding_table": table,
        "inputs": report["inputs"],
        "seq_len": report["seq_len"],
        "input_quantization": report.get("input_quantization") if name == "int8" else None,
        "check": {"rows": (report.get("check") or {}).get("rows"), **runs.get(f"tflite_{name}", {})},
    }
    runtimes: dict[str, Any] = {
        **(manifest.extra.get("runtimes") or {}),
        "onnxruntime": {"model": manifest.model},
        "litert": litert,
    }
    micro = (report.get("tflm") or {}).get(name)
    if micro:
        runtimes["tflite-micro"] = {"model": model, "embedding_table": table, **micro}
    with tempfile.TemporaryDirectory(prefix="edgeslm-carry-") as scratch:
        files: dict[str, Path] = {}
        for file, data in blobs.items():
            files[file] = Path(scratch) / file
            files[file].write_bytes(data)  # the verified bytes, not a re-read of the folder
        files[model], files[table] = Path(tflite) / model, Path(tflite) / table
        fields = {f.name: getattr(manifest, f.name) for f in dataclasses.fields(manifest)}
        fields = {k: v for k, v in fields.items() if k not in ("format_version", "files")}
        fields["extra"] = {**manifest.extra, "runtimes": runtimes}
        write_bundle(files, Path(out), fields, force=force)
    return Path(out)
