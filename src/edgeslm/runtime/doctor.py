"""`edgeslm doctor`: what this machine offers a bundle, and what a given bundle will actually run on.

The CPU features that matter for INT8 transformers are listed by name: AVX-512 VNNI / AVX-VNNI (x86 INT8 dot
products, what onnxruntime's dynamic-INT8 MatMul uses), AMX, and on Arm the dot-product and i8mm extensions.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from .predictor import Predictor

__all__ = ["bundle_report", "machine_report"]

# /proc/cpuinfo flag -> what it means for a bundle
_FEATURES = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI (fast INT8)",
    "avx_vnni": "AVX-VNNI (fast INT8)",
    "avx512_bf16": "AVX-512 BF16",
    "amx_int8": "AMX INT8",
    "asimd": "NEON",
    "asimddp": "Arm dot product (fast INT8)",
    "i8mm": "Arm i8mm (fast INT8)",
    "sve": "SVE",
}


def _cpu() -> tuple[str, list[str]]:
    """CPU model and its features that matter here, from /proc/cpuinfo (Linux); elsewhere, platform's words."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    model, flags = platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and model == platform.machine():
            model = value.strip()
        elif key in ("flags", "Features"):
            flags |= set(value.split())
    return model, [name for flag, name in _FEATURES.items() if flag in flags]


def _memory_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def machine_report() -> dict[str, Any]:
    model, features = _cpu()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": sys.version.split()[0],
        "onnxruntime": ort.__version__,
        "cpu": model,
        "cpu_features": features,
        "cores_usable": cores,
        "memory_mb": _memory_mb(),
        "providers_available": ort.get_available_providers(),
    }


def bundle_report(bundle: Path, providers: Sequence[str] | None = None, threads: int | None = 1) -> dict[str, Any]:
    """Verify and load ``bundle`` as the server would, and time a one-sentence call (median of 20, after warm-up)."""
    start = time.perf_counter()
    predictor = Predictor(bundle, threads=threads, providers=providers)
    load_ms = 1000 * (time.perf_counter() - start)
    call = predictor.embed if predictor.task == "embedding" else predictor.logits
    text = ["The device answers this sentence without a round trip to the cloud."]
    call(text)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        call(text)
        times.append(1000 * (time.perf_counter() - t))
    ex = predictor.execution
    return {
        "bundle": str(bundle),
        "task": predictor.task,
        "precision": predictor.manifest.metrics.get("precision", "unknown"),
        "provider": ex.provider,
        "requested": list(ex.requested),
        "fallbacks": [{"provider": p, "reason": r} for p, r in ex.fallbacks],
        "threads": threads,
        "load_ms": round(load_ms, 1),
        "one_sentence_ms": round(statistics.median(times), 2),
    }
