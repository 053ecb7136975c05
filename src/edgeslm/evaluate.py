"""Step 5, `eval`: accuracy, latency, size and memory of a checkpoint, an ONNX folder or a bundle.

Each model is measured in a fresh Python process (``python -m edgeslm.evaluate``) so that its peak RSS is its own:
a bundle's process imports the runtime only, a checkpoint's imports torch, as they would on a device.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .data import load_dataset
from .errors import EdgeSLMError, ModelError
from .recipe import EvalConfig

__all__ = ["classification_metrics", "evaluate", "model_facts", "model_kind"]


def model_kind(path: Path) -> str:
    """ "bundle", "onnx" or "torch", from the files in the folder."""
    if (path / "manifest.json").is_file():
        return "bundle"
    if (path / "model.onnx").is_file():
        return "onnx"
    if (path / "model.safetensors").is_file() and (path / "edgeslm.json").is_file():
        return "torch"
    raise ModelError(
        f"`{path}` is not a bundle, an ONNX folder or an edgeslm checkpoint; pass a folder written by edgeslm"
    )


def classification_metrics(pred: Sequence[int], gold: Sequence[int], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1; for data with an out-of-scope label (`oos`), in-scope accuracy and OOS recall."""
    n = len(gold)
    out = {"accuracy": sum(p == g for p, g in zip(pred, gold, strict=True)) / n}
    f1s = []
    for c in sorted(set(gold)):
        tp = sum(p == c and g == c for p, g in zip(pred, gold, strict=True))
        fp = sum(p == c and g != c for p, g in zip(pred, gold, strict=True))
        fn = sum(p != c and g == c for p, g in zip(pred, gold, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    out["macro_f1"] = sum(f1s) / len(f1s)
    if "oos" in labels:
        oos = list(labels).index("oos")
        ins = [(p, g) for p, g in zip(pred, gold, strict=True) if g != oos]
        outs = [(p, g) for p, g in zip(pred, gold, strict=True) if g == oos]
        out["in_scope_accuracy"] = sum(p == g for p, g in ins) / max(1, len(ins))
        out["oos_recall"] = sum(p == g for p, g in outs) / max(1, len(outs))
    return out


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _loader(path: Path, kind: str, threads: int) -> tuple[Callable[[list[str]], Any], dict[str, Any]]:
    """A function texts -> logits (numpy) and facts about the model (file size, parameters)."""
    if kind == "torch":
        import torch

        from .models import load_checkpoint
        from .runtime.predictor import encode, load_tokenizer

        torch.set_num_threads(threads)
        ckpt = load_checkpoint(path)
        tok = load_tokenizer((path / "tokenizer.json").read_text(encoding="utf-8"), ckpt.max_length)

        @torch.no_grad()
        def run(texts: list[str]) -> Any:
            feed = {k: torch.from_numpy(v) for k, v in encode(tok, texts).items()}
            return ckpt.model(**feed).numpy()

        return run, {"runtime": "torch", "labels": ckpt.labels}
    import onnxruntime as ort

    from .runtime.predictor import Predictor, encode, load_tokenizer, session_options

    if kind == "bundle":
        predictor = Predictor(path, threads=threads)
        return predictor.logits, {"runtime": "onnxruntime", "labels": predictor.labels}
    meta = json.loads((path / "edgeslm.json").read_text(encoding="utf-8"))
    tok = load_tokenizer((path / "tokenizer.json").read_text(encoding="utf-8"), meta["max_length"])
    session = ort.InferenceSession(
        str(path / "model.onnx"), session_options(threads), providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]

    def run_onnx(texts: list[str]) -> Any:
        feed = encode(tok, texts)
        return session.run(None, {k: feed[k] for k in names})[0]

    return run_onnx, {"runtime": "onnxruntime", "labels": tuple(meta["labels"])}


def model_facts(path: Path) -> dict[str, Any]:
    """File size and parameter count, read from the weights' headers (nothing is run)."""
    kind = model_kind(path)
    if kind == "torch":
        from safetensors import safe_open

        file = path / "model.safetensors"
        with safe_open(str(file), "np") as f:
            params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    else:
        import onnx

        file = path / "model.onnx"
        if kind == "bundle":  # the manifest names the model file, which may be entropy-coded (model.onnx.xz)
            from .bundle import verify_bundle
            from .runtime.predictor import model_bytes

            manifest, blobs = verify_bundle(path)
            file = path / manifest.model
            graph = onnx.load_from_string(model_bytes(manifest, blobs)).graph
        else:
            graph = onnx.load(str(file), load_external_data=False).graph
        params = sum(math.prod(t.dims) for t in graph.initializer)
    return {"file": file.name, "size_mb": file.stat().st_size / 1e6, "parameters": int(params)}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process. VmHWM belongs to the process image, so unlike ru_maxrss it does not
    carry over the parent's peak through fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux; fallback elsewhere


def _measure(path: Path, config: EvalConfig, texts: list[str], gold: list[int], label_names: list[str]) -> dict:
    """Runs inside the measuring process. Order matters: batch-1 timing first, so peak RSS is the device's."""
    import numpy as np

    kind = model_kind(path)
    t0 = time.perf_counter()
    run, facts = _loader(path, kind, config.threads)
    load_ms = (time.perf_counter() - t0) * 1000
    if list(facts.pop("labels")) != list(label_names):
        raise ModelError(f"`{path}` predicts other labels than the dataset has; evaluate it on its own dataset")
    timed = texts[: config.latency_rows]
    for text in texts[: config.warmup_rows]:
        run([text])
    times = []
    for text in timed:
        t = time.perf_counter()
        run([text])
        times.append((time.perf_counter() - t) * 1000)
    rss_mb = _peak_rss_mb()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    pred = [0] * len(texts)
    for start in range(0, len(order), 32):
        idx = order[start : start + 32]
        for i, row in zip(idx, np.asarray(run([texts[i] for i in idx])), strict=True):
            pred[i] = int(row.argmax())
    return {
        "kind": kind,
        **facts,
        **classification_metrics(pred, gold, label_names),
        "eval_rows": len(texts),
        "latency_rows": len(timed),
        "p50_ms": _percentile(times, 0.5),
        "p95_ms": _percentile(times, 0.95),
        "mean_ms": sum(times) / len(times),
        "threads": config.threads,
        "load_ms": load_ms,
        "peak_rss_mb": rss_mb,
        "predictions": pred,
    }


def evaluate(src: Path, config: EvalConfig) -> dict[str, Any]:
    """Measure the model folder ``src`` on ``config.data``'s eval split, in a fresh process; return the metrics."""
    src = Path(src)
    model_kind(src)  # fail early, in this process, on a folder that is not a model
    ds = load_dataset(config.data)
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(
            json.dumps(
                {
                    "path": str(src.resolve()),
                    "config": {k: v for k, v in config.__dict__.items() if k != "data"},
                    "texts": list(ds.eval.texts),
                    "gold": list(ds.eval.labels),
                    "labels": list(ds.label_names),
                }
            )
        )
        env = {**os.environ, "OMP_NUM_THREADS": str(config.threads)}
        proc = subprocess.run(
            [sys.executable, "-m", "edgeslm.evaluate", str(job)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"measuring `{src}` failed: {last}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(model_facts(src))
    result["eval_split"] = ds.eval_split
    result["dataset"] = ds.name
    return result


def _main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    config = EvalConfig(**job["config"])
    try:
        out = _measure(Path(job["path"]), config, job["texts"], job["gold"], job["labels"])
    except EdgeSLMError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(1) from e
    print(json.dumps(out))


if __name__ == "__main__":
    _main(sys.argv[1])
