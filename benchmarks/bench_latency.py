"""Latency side by side, in one process, round-robin: the student bundle against the baselines a user would run.

For every dev sentence (batch 1, one intra-op thread, after a warm-up), each system runs once, in a new random
order per sentence, so drift on a shared machine hits all of them alike and no system always follows the same one
(see round_robin). The ratios are the result; absolute milliseconds move by ~10% between runs here.

    python benchmarks/bench_latency.py [--build out/bench-sst2] [--recipe benchmarks/sst2.toml]

Builds first (cached per step) when the build folder does not exist, then writes
benchmarks/results/latency_<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edgeslm import build, load_recipe
from edgeslm.data import load_dataset
from edgeslm.models import load_checkpoint
from edgeslm.runtime import Predictor, encode, load_tokenizer
from edgeslm.runtime.predictor import session_options

HERE = Path(__file__).parent


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q * 100))


def systems(report: dict, bundle: Path) -> dict[str, tuple[Callable[[dict[str, np.ndarray]], object], object]]:
    """name -> (run(feed), tokenizer). Tokenization happens outside the timer, for every system alike."""
    art = {k: Path(v) for k, v in report["artifacts"].items()}
    torch.set_num_threads(1)
    teacher = load_checkpoint(art["teacher"])
    t_tok = load_tokenizer((art["teacher"] / "tokenizer.json").read_text(), teacher.max_length)

    @torch.no_grad()
    def run_torch(feed: dict[str, np.ndarray]) -> object:
        return teacher.model(**{k: torch.from_numpy(v) for k, v in feed.items()})

    def ort_runner(path: Path) -> Callable[[dict[str, np.ndarray]], object]:
        s = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
        return lambda feed: s.run(None, feed)

    predictor = Predictor(bundle, threads=1)
    s_tok = predictor._tokenizer
    student_session = predictor._session
    return {
        "teacher torch FP32": (run_torch, t_tok),
        "teacher ORT FP32": (ort_runner(art["teacher_onnx"] / "model.onnx"), t_tok),
        "teacher ORT INT8 (one-click)": (ort_runner(art["teacher_int8"] / "model.onnx"), t_tok),
        "student ORT FP32": (ort_runner(art["student_onnx"] / "model.onnx"), s_tok),
        "student bundle ORT INT8": (lambda feed: student_session.run(None, feed), s_tok),
    }


def round_robin(
    runs: dict[str, Callable[[dict[str, np.ndarray]], object]],
    feeds: dict[str, list[dict[str, np.ndarray]]],
    warmup: int,
    block: int = 1,
) -> tuple[dict[str, list[float]], dict[str, list[object]]]:
    """Every system on every sentence, in a new (seeded) random order per sentence: ms per call, and the outputs.

    ``block`` > 1: the order changes per block of that many sentences, and each system runs the whole block in a
    row, so from its second call on it finds its own weights in the caches (requests back to back, as on a device
    that serves one model) instead of the previous system's.

    Not a rotation: rotating the first system keeps the cyclic order, so each system always ran right after the
    same one, and the student after the 23 MB one-click teacher found its weights evicted from the CPU caches every
    time (CLINC150, session 11: identical student graphs timed 0.45 ms right after the teacher, 0.36-0.39 ms after
    small students). A random order gives every system every predecessor alike.
    """
    names = list(runs)
    count = len(next(iter(feeds.values())))
    for i in range(warmup):
        for n in names:
            runs[n](feeds[n][i % count])
    times: dict[str, list[float]] = {n: [] for n in names}
    outputs: dict[str, list[object]] = {n: [] for n in names}
    rng = random.Random(0)
    for start in range(0, count, block):
        for n in rng.sample(names, len(names)):
            for i in range(start, min(start + block, count)):
                t = time.perf_counter()
                out = runs[n](feeds[n][i])
                times[n].append((time.perf_counter() - t) * 1000)
                outputs[n].append(out)
    return times, outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=HERE / "sst2.toml")
    ap.add_argument("--build", type=Path, default=Path("out/bench-sst2"))
    ap.add_argument("--warmup", type=int, default=60)
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    if not (args.build / "report.json").is_file():
        build(recipe, args.build, log=print)
    report = json.loads((args.build / "report.json").read_text())
    texts = list(load_dataset(recipe.data).eval.texts)
    runs = systems(report, args.build / "bundle")
    names = list(runs)
    feeds = {n: [encode(tok, [t]) for t in texts] for n, (_, tok) in runs.items()}  # type: ignore[arg-type]
    times, _ = round_robin({n: run for n, (run, _) in runs.items()}, feeds, args.warmup)
    rows = {
        n: {"p50_ms": _percentile(v, 0.5), "p95_ms": _percentile(v, 0.95), "mean_ms": statistics.fmean(v)}
        for n, v in times.items()
    }
    student = rows["student bundle ORT INT8"]["p50_ms"]
    by_name = {m["name"]: m for m in report["models"]}
    teacher, bundle = by_name["teacher"], by_name["student bundle"]
    result = {
        "dataset": report["dataset"],
        "eval_split": report["eval_split"],
        "sentences": len(texts),
        "mean_tokens": float(np.mean([f["input_ids"].shape[1] for f in feeds[names[-1]]])),
        "threads": 1,
        "batch": 1,
        "warmup": args.warmup,
        "latency": rows,
        "ratios": {
            "student_int8_speedup_vs_teacher_torch_fp32": rows["teacher torch FP32"]["p50_ms"] / student,
            "student_int8_speedup_vs_teacher_ort_int8": rows["teacher ORT INT8 (one-click)"]["p50_ms"] / student,
            "student_int8_size_ratio_vs_teacher_fp32": by_name["teacher"]["size_mb"]
            / by_name["student bundle"]["size_mb"],
            "student_int8_accuracy_vs_teacher": bundle["accuracy"] / teacher["accuracy"],
        },
        "accuracy": {m["name"]: m["accuracy"] for m in report["models"]},
        "size_mb": {m["name"]: m["size_mb"] for m in report["models"]},
        "recipe": report["recipe"],
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
        },
    }
    out = HERE / "results" / f"latency_{report['dataset']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for n, r in rows.items():
        print(f"{n:32s} p50 {r['p50_ms']:7.2f} ms   p95 {r['p95_ms']:7.2f} ms")
    for k, v in result["ratios"].items():
        print(f"{k:48s} {v:6.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
