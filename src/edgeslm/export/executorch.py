"""`convert --format executorch|coreml`: the student as an ExecuTorch program (.pte, XNNPACK) or a Core ML package.

Both converters are torch.export front ends that live beside litert-torch in ``.venv-export`` and run through the
same JSON worker (``_tflite_worker`` -> ``_et_worker``). The models take int32 token ids and the int32 mask (the
lookup is in the graph): the .pte at any length up to the checkpoint's (each sentence at its own length, as the
ONNX bundle runs it), the .mlpackage at the frozen length. With ``int8`` the .pte is also written quantized
(XNNPACK's PT2E quantizer, calibrated on train sentences, with an int8 embedding table) and the .mlpackage with
int8 weights. The .pte files are run here with ExecuTorch's Python runtime and compared with ONNX Runtime on dev
sentences (``executorch.json``); an .mlpackage cannot be run off macOS, so ``coreml.json`` holds its spec (inputs,
outputs, ops, size) as read back from disk, and says that prediction was not run.
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
    int8: bool = True  # also write the INT8 model (.pte: XNNPACK PT2E static; .mlpackage: int8 weights only)
    calibration_rows: int = 200  # real train sentences whose activation ranges set the .pte's INT8 scales
    seq_len: int | None = None  # the frozen input length; None: the checkpoint's max_length
    threads: int = 1  # XNNPACK threadpool size for the latency runs (one, like every benchmark here)
    dynamic_length: bool = True  # .pte takes 2..seq_len tokens, each sentence at its own length as in ONNX Runtime
    # (False: frozen at seq_len, every sentence padded: 2.2x the work at SST-2's median 24 tokens); Core ML: frozen


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


def _rows(tokenizer_json: str, texts: list[str], seq_len: int, dynamic: bool) -> dict[str, list[list[int]]]:
    """ids and mask per sentence: at its own length (truncated to ``seq_len``, as the Predictor encodes a single
    text) for a dynamic-length program, else padded to exactly ``seq_len``."""
    if not dynamic:
        return {k: v.tolist() for k, v in _fixed_encode(tokenizer_json, texts, seq_len).items()}
    from ..runtime.predictor import encode, load_tokenizer

    tok = load_tokenizer(tokenizer_json, seq_len)
    feeds = [encode(tok, [text]) for text in texts]
    return {k: [f[k][0].tolist() for f in feeds] for k in ("input_ids", "attention_mask")}


def _check(
    got: dict[str, Any],
    tokenizer_json: str,
    seq_len: int,
    texts: list[str],
    labels: list[int],
    onnx: Path | None,
    threads: int,
) -> dict[str, Any]:
    """ONNX Runtime beside each ExecuTorch program's run on the same sentences (``got``: the worker's ``run_pte``
    answer), one at a time: agreement, accuracy, max logit difference, latency."""
    runs: dict[str, dict[str, Any]] = {}
    if onnx is not None:
        logits, times = _onnx_logits(onnx, tokenizer_json, seq_len, texts)
        runs["onnx"] = {"logits": logits, "latency": _stats(times)}
    for name, run in got["runs"].items():
        runs[name] = {"logits": np.asarray(run["logits"]), "latency": _stats(run["latency_ms"])}
    ref_name = "onnx" if "onnx" in runs else next(iter(got["runs"]))
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


def _convert(
    command: str, checkpoint: Path, tokenizer_json: str, seq_len: int, text: str, tmp: Path, **extra: Any
) -> dict[str, Any]:
    """Run the export worker's ``command`` (one real sentence as the sample input); the tokenizer goes beside."""
    sample = _fixed_encode(tokenizer_json, [text], seq_len)
    request = {"checkpoint": str(checkpoint.resolve()), "out": str(tmp), **{k: v.tolist() for k, v in sample.items()}}
    request.update(extra)
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
    calibration: dict[str, Any] = {"dynamic": config.dynamic_length}
    if config.int8:
        calib = _rows(tokenizer_json, list(ds.train.texts[: config.calibration_rows]), seq_len, config.dynamic_length)
        calibration.update(calibration_ids=calib["input_ids"], calibration_mask=calib["attention_mask"])
    length = f"2..{seq_len}" if config.dynamic_length else str(seq_len)
    with atomic_dir(Path(out), force=force) as tmp:
        rows = min(config.check_rows, len(ds.eval))
        texts, labels = list(ds.eval.texts[:rows]), list(ds.eval.labels[:rows])
        run = (
            {**_rows(tokenizer_json, texts, seq_len, config.dynamic_length), "threads": config.threads} if rows else {}
        )
        converted = _convert(
            "executorch", checkpoint, tokenizer_json, seq_len, ds.train.texts[0], tmp, **calibration, check=run
        )
        got = converted.get("check")
        check = _check(got, tokenizer_json, seq_len, texts, labels, onnx, config.threads) if got else None
        report = {
            "checkpoint": str(checkpoint),
            "labels": meta["labels"],
            "seq_len": seq_len,
            "inputs": [f"input_ids [1, {length}] int32", f"attention_mask [1, {length}] int32"],
            "dynamic_length": config.dynamic_length,
            "backend": "XNNPACK",
            "xnnpack_subgraphs": converted["float"]["xnnpack_subgraphs"],
            "portable_ops": converted["float"]["portable_ops"],
            "int8": (
                {
                    "model": "model_int8.pte",
                    "quantizer": "XNNPACKQuantizer, symmetric per-channel int8 weights, static int8 activations (PT2E)",
                    "calibration_rows": len(calibration["calibration_ids"]),
                    **converted["int8"],
                }
                if "int8" in converted
                else None
            ),
            "dataset": ds.name,
            "eval_split": ds.eval_split,
            "files": {p.name: p.stat().st_size for p in sorted(tmp.glob("*.pte"))},
            "seconds": converted["float"]["seconds"],
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
        converted = _convert("coreml", checkpoint, tokenizer_json, seq_len, ds.train.texts[0], tmp, int8=config.int8)
        int8 = converted.pop("int8", None)
        packages = ["model.mlpackage"] + (["model_int8.mlpackage"] if int8 else [])
        report = {
            "checkpoint": str(checkpoint),
            "labels": meta["labels"],
            "seq_len": seq_len,
            **converted,
            "int8": (
                {
                    "model": "model_int8.mlpackage",
                    "quantizer": "coremltools linear_quantize_weights: int8 symmetric per-channel weights, "
                    "float32 activations and compute",
                    **int8,
                }
                if int8
                else None
            ),
            "files": {name: _tree_size(tmp / name) for name in packages},
            "prediction": "not run: Core ML prediction needs macOS; the spec above was read back from the package",
        }
        write_json(tmp / "coreml.json", report)
    return Path(out)
