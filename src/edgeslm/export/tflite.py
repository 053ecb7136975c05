"""`convert --format tflite`: the student to LiteRT (.tflite), float and full-integer INT8, checked on the dev set.

litert-torch pins an older pydantic, so it lives in its own venv (``.venv-export``); this module runs there only
through ``_tflite_worker`` in a subprocess, with JSON files both ways. The main side tokenizes (fixed length, the
shape the .tflite is frozen to), compares the TFLite logits with ONNX Runtime on the same sentences and writes
``tflite.json``: sizes, operators, label agreement, accuracy difference and latency side by side; with ``micro``,
also TensorFlow Lite Micro's smallest arena and its agreement with LiteRT (what `edgeslm fit` checks on an MCU).

The models take word embeddings, not token ids: the table (``embedding_float.npy``, ``embedding_int8.npy``) sits
beside them and the caller copies one row per token (see ``_tflite_worker._wrapper`` for why).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._fs import atomic_dir, write_json
from ..errors import MissingExtraError, ModelError
from ..recipe import DataConfig

__all__ = [
    "EXPORT_VENV_HELP",
    "TFLiteConfig",
    "call_worker",
    "export_python",
    "export_tflite",
    "micro_check",
    "resolve_checkpoint",
]

_SRC = Path(__file__).resolve().parents[2]  # the folder holding the edgeslm package (put on the worker's path)
EXPORT_VENV_HELP = (
    "python3 -m venv .venv-export && .venv-export/bin/pip install torch==2.13.0 && .venv-export/bin/pip install uv && "
    ".venv-export/bin/uv pip install --python .venv-export/bin/python litert-torch==0.10.0 ai-edge-litert==2.3.0 "
    "transformers safetensors tokenizers tflite-micro"
)


@dataclass(frozen=True)
class TFLiteConfig:
    """How the .tflite files are made and checked."""

    int8: bool = True  # also write the full-integer INT8 model (ai-edge-quantizer static_wi8_ai8)
    calibration_rows: int = 200  # real train sentences whose activation ranges set the INT8 scales
    check_rows: int = 200  # dev sentences for agreement, accuracy and latency (0: skip the check)
    seq_len: int | None = None  # the frozen input length; None: the checkpoint's max_length
    threads: int = 1  # interpreter threads for the latency measurement (one, like every benchmark here)
    micro: bool = False  # GELU as its tanh form (TFLite Micro has no GELU kernel); changes logits by ~1e-3
    micro_rows: int = 5  # with `micro`: dev sentences run in TFLite Micro, which also measures the arena; 0: skip


def export_python() -> Path:
    """The export venv's interpreter: $EDGESLM_EXPORT_PYTHON, else .venv-export in the cwd or the repository."""
    env = os.environ.get("EDGESLM_EXPORT_PYTHON")
    candidates = [Path(env)] if env else [Path.cwd() / ".venv-export", _SRC.parent / ".venv-export"]
    for c in candidates:
        python = c if c.is_file() else c / "bin" / "python"
        if python.is_file():
            return python
    raise MissingExtraError(
        "TFLite export needs the export environment (.venv-export: litert-torch pins an older pydantic); "
        f"create it with: {EXPORT_VENV_HELP}"
    )


def call_worker(command: str, request: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run one ``_tflite_worker`` command in the export venv; JSON in, JSON out."""
    python = export_python()
    with tempfile.TemporaryDirectory(prefix="edgeslm-tflite-") as tmp:
        req_path, answer = Path(tmp) / "request.json", Path(tmp) / "answer.json"
        req_path.write_text(json.dumps({**request, "answer": str(answer)}), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_SRC), os.environ.get("PYTHONPATH", "")])}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        cmd = [str(python), "-m", "edgeslm.export._tflite_worker", command, str(req_path)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not answer.is_file():
            tail = " | ".join(done.stderr.strip().splitlines()[-3:]) or f"exit code {done.returncode}"
            raise ModelError(f"the export worker `{command}` failed ({tail}); see the message for the operator")
        result: dict[str, Any] = json.loads(answer.read_text(encoding="utf-8"))
    return result


def resolve_checkpoint(src: Path) -> tuple[Path, Path | None]:
    """A checkpoint folder and the ONNX folder to compare with, from a checkpoint or a built bundle.

    A bundle holds no torch weights; its build's report.json (one level up) names the student checkpoint.
    """
    src = Path(src)
    if (src / "model.safetensors").is_file():
        return src, None
    if (src / "model.onnx").is_file():
        report = src.parent / "report.json"
        student = json.loads(report.read_text()).get("artifacts", {}).get("student") if report.is_file() else None
        if student:
            for base in (Path.cwd(), src.parent.parent.parent, src.parent):
                if (base / student / "model.safetensors").is_file():
                    return base / student, src
        raise ModelError(
            f"`{src}` is an ONNX bundle without torch weights and no report.json next to it names the student; "
            "pass the student checkpoint folder (report.json `artifacts.student`)"
        )
    raise ModelError(f"`{src}` is neither a checkpoint (model.safetensors) nor a bundle (model.onnx)")


def _fixed_encode(tokenizer_json: str, texts: list[str], seq_len: int) -> dict[str, np.ndarray]:
    """ids and mask padded to exactly ``seq_len`` (a .tflite has one frozen input shape)."""
    from ..runtime.predictor import encode, load_tokenizer

    tok = load_tokenizer(tokenizer_json, seq_len)
    pad = tok.padding or {}
    tok.enable_padding(pad_id=pad.get("pad_id", 0), pad_token=pad.get("pad_token", "[PAD]"), length=seq_len)
    feed = encode(tok, texts)
    return {"input_ids": feed["input_ids"].astype(np.int32), "attention_mask": feed["attention_mask"].astype(np.int32)}


def _onnx_logits(
    folder: Path, tokenizer_json: str, max_length: int, texts: list[str]
) -> tuple[np.ndarray, list[float]]:
    """Logits and per-row latency from ONNX Runtime, one sentence at a time, one thread (the bundle's path)."""
    import time

    import onnxruntime as ort

    from ..runtime.predictor import encode, load_tokenizer, session_options

    session = ort.InferenceSession(str(folder / "model.onnx"), session_options(1), providers=["CPUExecutionProvider"])
    tok = load_tokenizer(tokenizer_json, max_length)
    session.run(None, encode(tok, texts[:1]))  # warm-up
    logits, times = [], []
    for text in texts:
        feed = encode(tok, [text])
        t0 = time.perf_counter()
        (got,) = session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
        logits.append(got[0])
    return np.asarray(logits, dtype=np.float32), times


def _stats(times: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


def _check(
    tmp: Path, tokenizer_json: str, seq_len: int, texts: list[str], labels: list[int], onnx: Path | None, threads: int
) -> dict[str, Any]:
    feed = _fixed_encode(tokenizer_json, texts, seq_len)
    rows = {k: v.tolist() for k, v in feed.items()}
    runs: dict[str, Any] = {}
    if onnx is not None:
        logits, times = _onnx_logits(onnx, tokenizer_json, seq_len, texts)
        runs["onnx"] = {"logits": logits, "latency": _stats(times), "file": str(onnx / "model.onnx")}
    for name in ("float", "int8"):
        path = tmp / f"model_{name}.tflite"
        if path.is_file():
            got = call_worker("run", {"model": str(path), **rows, "threads": threads, "warmup": 2})
            runs[f"tflite_{name}"] = {"logits": np.asarray(got["logits"]), "latency": _stats(got["latency_ms"])}
    truth = np.asarray(labels)
    ref_name = "onnx" if "onnx" in runs else "tflite_float"
    ref = runs[ref_name]["logits"].argmax(1)
    table = {}
    for name, run in runs.items():
        pred = run["logits"].argmax(1)
        table[name] = {
            "accuracy": float((pred == truth).mean()),
            f"label_agreement_vs_{ref_name}": float((pred == ref).mean()),
            f"max_abs_logit_diff_vs_{ref_name}": float(np.abs(run["logits"] - runs[ref_name]["logits"]).max()),
            **run["latency"],
        }
    scale = float(np.abs(runs[ref_name]["logits"]).max())
    return {"rows": len(texts), "reference": ref_name, "reference_max_abs_logit": scale, "runs": table}


def export_tflite(
    src: Path,
    out: Path,
    config: TFLiteConfig = TFLiteConfig(),
    *,
    data: DataConfig | None = None,
    onnx: Path | None = None,
    force: bool = False,
) -> Path:
    """Convert the checkpoint (or the bundle's student) ``src`` to ``out/model_float.tflite`` [+ ``model_int8``]."""
    from ..data import load_dataset

    checkpoint, bundle = resolve_checkpoint(Path(src))
    onnx = onnx or bundle
    export_python()  # fail fast, before loading data, when the venv is missing
    meta = json.loads((checkpoint / "edgeslm.json").read_text(encoding="utf-8"))
    seq_len = config.seq_len or int(meta["max_length"])
    if data is None:
        fields = meta.get("config", {}).get("data", {})
        data = DataConfig(**{k: v for k, v in fields.items() if k in DataConfig.__dataclass_fields__})
    ds = load_dataset(data)
    tokenizer_json = (checkpoint / "tokenizer.json").read_text(encoding="utf-8")
    calib = _fixed_encode(tokenizer_json, list(ds.train.texts[: config.calibration_rows]), seq_len)
    with atomic_dir(Path(out), force=force) as tmp:
        request = {"checkpoint": str(checkpoint.resolve()), "out": str(tmp), "int8": config.int8, "micro": config.micro}
        converted = call_worker("convert", {**request, **{k: v.tolist() for k, v in calib.items()}})
        shutil.copyfile(checkpoint / "tokenizer.json", tmp / "tokenizer.json")
        rows = min(config.check_rows, len(ds.eval))
        check = (
            _check(
                tmp,
                tokenizer_json,
                seq_len,
                list(ds.eval.texts[:rows]),
                list(ds.eval.labels[:rows]),
                onnx,
                config.threads,
            )
            if rows
            else None
        )
        report = {
            "checkpoint": str(checkpoint),
            "labels": meta["labels"],
            "seq_len": seq_len,
            "micro": config.micro,
            "inputs": [
                f"embeddings [1, {seq_len}, {converted['hidden']}]: rows of embedding_<model>.npy for the token ids",
                f"attention_mask [1, {seq_len}] int32",
            ],
            "hidden": converted["hidden"],
            "input_quantization": converted.get("input_quantization"),
            "inlined_buffers": converted.get("inlined_buffers"),  # constants moved into the flatbuffer for TFLM
            "calibration_rows": len(calib["input_ids"]),
            "dataset": ds.name,
            "eval_split": ds.eval_split,
            "files": {p.name: p.stat().st_size for p in sorted([*tmp.glob("*.tflite"), *tmp.glob("*.npy")])},
            "ops": {"float": converted["ops_float"], "int8": converted.get("ops_int8")},
            "seconds": {"float": converted["float_seconds"], "int8": converted.get("int8_seconds")},
            "check": check,
            "python": sys.version.split()[0],
        }
        write_json(tmp / "tflite.json", report)
        if config.micro and config.micro_rows:
            name = "int8" if config.int8 else "float"
            report["tflm"] = {name: micro_check(tmp, config.micro_rows, name, data=data)}  # `edgeslm fit` reads it
            write_json(tmp / "tflite.json", report)
    return Path(out)


_LAYER_HINTS = {
    "GELU": " (the FFN activation of every encoder layer, encoder.layer.N.intermediate); fix: re-convert with "
    "`edgeslm convert CHECKPOINT --format tflite --micro` (or c-array from the checkpoint): GELU in its tanh form",
}


def micro_check(
    folder: Path, rows: int = 20, name: str = "int8", max_arena: int = 64 << 20, data: DataConfig | None = None
) -> dict[str, Any]:
    """Run ``folder/model_<name>.tflite`` in TensorFlow Lite Micro (its Python package, on the host).

    Finds the smallest arena that works (bisection; a too-small arena segfaults, so each probe is a subprocess)
    and compares TFLM's logits with LiteRT's on ``rows`` dev sentences. Writes nothing; returns the numbers.
    """
    from ..data import load_dataset

    folder = Path(folder)
    report = json.loads((folder / "tflite.json").read_text(encoding="utf-8"))
    if data is None:
        meta = json.loads((Path(report["checkpoint"]) / "edgeslm.json").read_text(encoding="utf-8"))
        fields = meta.get("config", {}).get("data", {})
        data = DataConfig(**{k: v for k, v in fields.items() if k in DataConfig.__dataclass_fields__})
    ds = load_dataset(data)
    tokenizer_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
    feed = _fixed_encode(tokenizer_json, list(ds.eval.texts[:rows]), int(report["seq_len"]))
    model = folder / f"model_{name}.tflite"
    request = {"model": str(model), **{k: v.tolist() for k, v in feed.items()}}
    micro = call_worker("micro", {**request, "max_arena": max_arena})
    if "error" in micro:
        hint = _LAYER_HINTS.get(micro["error"].rsplit("'", 2)[-2] if micro.get("missing_op") else "", "")
        raise ModelError(f"TensorFlow Lite Micro cannot run `{model}`: {micro['error']}{hint}")
    lite = call_worker("run", {**request, "threads": 1, "warmup": 1})
    a, b = np.asarray(micro["logits"]), np.asarray(lite["logits"])
    truth = np.asarray(ds.eval.labels[:rows])
    return {
        "model": model.name,
        "rows": rows,
        "arena_bytes": micro["arena_bytes"],
        "tflm_p50_ms": micro["ms_per_row"],  # host, one row: copy + invoke (TFLM reference kernels)
        "max_abs_logit_diff_vs_litert": float(np.abs(a - b).max()),
        "litert_max_abs_logit": float(np.abs(b).max()),
        "label_agreement_vs_litert": float((a.argmax(1) == b.argmax(1)).mean()),
        "accuracy": float((a.argmax(1) == truth).mean()),
        "litert_accuracy": float((b.argmax(1) == truth).mean()),
    }
