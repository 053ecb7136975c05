"""`convert --format executorch|coreml`: the student as an ExecuTorch program (.pte, XNNPACK) or a Core ML package.

Both converters are torch.export front ends that live beside litert-torch in ``.venv-export`` and run through the
same JSON worker (``_tflite_worker`` -> ``_et_worker``). The models take int32 token ids and the int32 mask at the
frozen length (the lookup is in the graph). The .pte is run here with ExecuTorch's Python runtime and compared with
ONNX Runtime on dev sentences (``executorch.json``); the .mlpackage cannot be run off macOS, so ``coreml.json``
holds its spec (inputs, outputs, ops, size) as read back from disk, and says that prediction was not run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._fs import atomic_dir, write_json
from ..errors import MissingExtraError
from ..recipe import DataConfig
from .tflite import _fixed_encode, _onnx_logits, _stats, call_worker, export_python, resolve_checkpoint

__all__ = ["COREML_HELP", "EXECUTORCH_HELP", "ETConfig", "export_coreml", "export_executorch", "has_package"]

EXECUTORCH_HELP = ".venv/bin/uv pip install --python .venv-export/bin/python executorch==1.5.1"
COREML_HELP = ".venv/bin/uv pip install --python .venv-export/bin/python coremltools==9.0"


@dataclass(frozen=True)
class ETConfig:
    """How the .pte / .mlpackage is made and checked."""

    check_rows: int = 200  # dev sentences for agreement, accuracy and latency (0: skip; executorch only)
    seq_len: int | None = None  # the frozen input length; None: the checkpoint's max_length
    threads: int = 1  # XNNPACK threadpool size for the latency runs (one, like every benchmark here)


def has_package(module: str) -> bool:
    """Whether ``.venv-export`` can import ``module`` (asked of its interpreter; nothing is imported here)."""
    try:
        python = export_python()
    except MissingExtraError:
        return False
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([str(python), "-c", code], capture_output=True, timeout=120).returncode == 0


def _require(module: str, fix: str) -> None:
    export_python()  # says how to create the venv when it is missing
    if not has_package(module):
        raise MissingExtraError(f"`{module}` is not installed in .venv-export; install it with: {fix}")


def _prepare(src: Path, config: ETConfig, data: DataConfig | None) -> tuple[Path, Path | None, dict[str, Any], Any]:
    from ..data import load_dataset

    checkpoint, bundle = resolve_checkpoint(Path(src))
    meta = json.loads((checkpoint / "edgeslm.json").read_text(encoding="utf-8"))
    if data is None:
        fields = meta.get("config", {}).get("data", {})
        data = DataConfig(**{k: v for k, v in fields.items() if k in DataConfig.__dataclass_fields__})
    meta["seq_len"] = config.seq_len or int(meta["max_length"])
    return checkpoint, bundle, meta, load_dataset(data)


def _check(
    pte: Path, tokenizer_json: str, seq_len: int, texts: list[str], labels: list[int], onnx: Path | None, threads: int
) -> dict[str, Any]:
    """ONNX Runtime and ExecuTorch on the same sentences, one at a time: agreement, accuracy, latency."""
    feed = _fixed_encode(tokenizer_json, texts, seq_len)
    got = call_worker("run-pte", {"model": str(pte), **{k: v.tolist() for k, v in feed.items()}, "threads": threads})
    runs: dict[str, dict[str, Any]] = {}
    if onnx is not None:
        logits, times = _onnx_logits(onnx, tokenizer_json, seq_len, texts)
        runs["onnx"] = {"logits": logits, "latency": _stats(times)}
    runs["executorch_xnnpack"] = {"logits": np.asarray(got["logits"]), "latency": _stats(got["latency_ms"])}
    ref_name = "onnx" if "onnx" in runs else "executorch_xnnpack"
    ref, truth = runs[ref_name]["logits"], np.asarray(labels)
    table = {
        name: {
            "accuracy": float((run["logits"].argmax(1) == truth).mean()),
            f"label_agreement_vs_{ref_name}": float((run["logits"].argmax(1) == ref.argmax(1)).mean()),
            f"max_abs_logit_diff_vs_{ref_name}": float(np.abs(run["logits"] - ref).max()),
            **run["latency"],
        }
        for name, run in runs.items()
    }
    return {
        "rows": len(texts),
        "reference": ref_name,
        "reference_max_abs_logit": float(np.abs(ref).max()),
        "threads": threads,
        "threads_set": bool(got["threads_set"]),  # False: this executorch build cannot resize its threadpool
        "runs": table,
    }


def _convert(command: str, checkpoint: Path, tokenizer_json: str, seq_len: int, text: str, tmp: Path) -> dict[str, Any]:
    """Run the export worker's ``command`` (one real sentence as the sample input); the tokenizer goes beside."""
    sample = _fixed_encode(tokenizer_json, [text], seq_len)
    request = {"checkpoint": str(checkpoint.resolve()), "out": str(tmp), **{k: v.tolist() for k, v in sample.items()}}
    converted = call_worker(command, request)
    shutil.copyfile(checkpoint / "tokenizer.json", tmp / "tokenizer.json")
    return dict(converted)


def export_executorch(
    src: Path,
    out: Path,
    config: ETConfig = ETConfig(),
    *,
    data: DataConfig | None = None,
    onnx: Path | None = None,
    force: bool = False,
) -> Path:
    """Convert the checkpoint (or the bundle's student) ``src`` to ``out/model.pte`` and check it against ONNX."""
    _require("executorch", EXECUTORCH_HELP)
    checkpoint, bundle, meta, ds = _prepare(src, config, data)
    onnx = onnx or bundle
    seq_len = int(meta["seq_len"])
    tokenizer_json = (checkpoint / "tokenizer.json").read_text(encoding="utf-8")
    with atomic_dir(Path(out), force=force) as tmp:
        converted = _convert("executorch", checkpoint, tokenizer_json, seq_len, ds.train.texts[0], tmp)
        rows = min(config.check_rows, len(ds.eval))
        texts, labels = list(ds.eval.texts[:rows]), list(ds.eval.labels[:rows])
        check = (
            _check(tmp / "model.pte", tokenizer_json, seq_len, texts, labels, onnx, config.threads) if rows else None
        )
        report = {
            "checkpoint": str(checkpoint),
            "labels": meta["labels"],
            "seq_len": seq_len,
            "inputs": [f"input_ids [1, {seq_len}] int32", f"attention_mask [1, {seq_len}] int32"],
            "backend": "XNNPACK",
            "xnnpack_subgraphs": converted["xnnpack_subgraphs"],
            "portable_ops": converted["portable_ops"],
            "dataset": ds.name,
            "eval_split": ds.eval_split,
            "files": {"model.pte": (tmp / "model.pte").stat().st_size},
            "seconds": converted["seconds"],
            "check": check,
            "python": sys.version.split()[0],
        }
        write_json(tmp / "executorch.json", report)
    return Path(out)


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_coreml(
    src: Path, out: Path, config: ETConfig = ETConfig(), *, data: DataConfig | None = None, force: bool = False
) -> Path:
    """Convert the checkpoint (or the bundle's student) ``src`` to ``out/model.mlpackage``; validate its spec.

    Prediction is not run: Core ML's runtime exists only on macOS. ``coreml.json`` records that plainly.
    """
    _require("coremltools", COREML_HELP)
    checkpoint, _, meta, ds = _prepare(src, config, data)
    seq_len = int(meta["seq_len"])
    tokenizer_json = (checkpoint / "tokenizer.json").read_text(encoding="utf-8")
    with atomic_dir(Path(out), force=force) as tmp:
        converted = _convert("coreml", checkpoint, tokenizer_json, seq_len, ds.train.texts[0], tmp)
        report = {
            "checkpoint": str(checkpoint),
            "labels": meta["labels"],
            "seq_len": seq_len,
            **converted,
            "files": {"model.mlpackage": _tree_size(tmp / "model.mlpackage")},
            "prediction": "not run: Core ML prediction needs macOS; the spec above was read back from the package",
        }
        write_json(tmp / "coreml.json", report)
    return Path(out)
