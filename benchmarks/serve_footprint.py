"""Footprint: `edgeslm serve BUNDLE` vs the same model served by torch + transformers, side by side in one run.

For each server, in a fresh process: cold start (spawn to the first 200 answer; the median of ``--repeats`` starts,
the two servers alternating), then 200 real SST-2 dev sentences one at a time (p50 latency), then its RSS. Also the
installed size of the runtime extra vs the build extra, summed over each extra's dependency closure as installed in
this venv.

    .venv/bin/python benchmarks/serve_footprint.py out/demo/bundle out/.edgeslm-cache/distill-<key>
    .venv/bin/python benchmarks/serve_footprint.py out/.edgeslm-cache/bench-bundles/sst2-2L-h6-f384-INT8-trim-cluster \
        out/.edgeslm-cache/distill-<key> --out benchmarks/results/serve_footprint_compressed.json

Writes benchmarks/results/serve_footprint.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from packaging.requirements import Requirement

from serve_load import DEV, ROOT, free_port, rss_mb, start_server, wait_ready


def _measure(proc: subprocess.Popen[bytes], cold_s: float, port: int, texts: list[str]) -> dict[str, Any]:
    times = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        labels = []
        for text in texts:
            t = time.perf_counter()
            r = client.post("/", json={"inputs": text})
            times.append(1000 * (time.perf_counter() - t))
            labels.append(r.json()[0][0]["label"])
    return {
        "cold_start_s": round(cold_s, 3),
        "p50_ms": round(statistics.median(times), 2),
        "rss_mb": round(rss_mb(proc.pid), 1),
        "labels": labels,
    }


def _torch_server(checkpoint: Path, port: int) -> tuple[subprocess.Popen[bytes], float]:
    script = Path(__file__).with_name("serve_torch_baseline.py")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(script), str(checkpoint), str(port)])
    return proc, wait_ready(proc, port, start)


def _closure(roots: list[str]) -> set[str]:
    """Installed distributions a list of requirements pulls in (markers evaluated without extras)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        req = Requirement(todo.pop())
        name = req.name.lower().replace("_", "-")
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        todo += dist.requires or []
    return seen


def _size_mb(names: set[str]) -> float:
    total = 0
    for name in names:
        for f in md.distribution(name).files or []:
            path = Path(str(f.locate()))
            if path.is_file():
                total += path.stat().st_size
    return round(total / 1e6, 1)


def _extras() -> dict[str, Any]:
    reqs = md.distribution("edgeslm").requires or []
    by_extra: dict[str, list[str]] = {}
    for r in reqs:
        req = Requirement(r)
        for extra in ("runtime", "serve", "build"):
            if req.marker and req.marker.evaluate({"extra": extra}) and not req.marker.evaluate({"extra": ""}):
                by_extra.setdefault(extra, []).append(f"{req.name}{req.specifier}")
    runtime = _closure(by_extra["runtime"])
    serve = _closure(by_extra["runtime"] + by_extra["serve"])
    build = _closure(by_extra["runtime"] + [r for r in by_extra["build"] if not r.startswith("edgeslm")])
    return {
        "runtime_mb": _size_mb(runtime),
        "runtime_packages": len(runtime),
        "runtime_plus_serve_mb": _size_mb(serve),
        "runtime_plus_serve_packages": len(serve),
        "build_mb": _size_mb(build),
        "build_packages": len(build),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("checkpoint", type=Path, help="the FP32 checkpoint the bundle was built from")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5, help="cold starts per server; the median is reported")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_footprint.json")
    args = parser.parse_args()
    texts = [line.split("\t")[0].strip() for line in DEV.read_text().splitlines()[1 : args.rows + 1]]
    results: dict[str, dict[str, Any]] = {}
    colds: dict[str, list[float]] = {"edgeslm": [], "torch": []}
    for attempt in range(args.repeats):  # alternate the two, so a busy moment on a shared host hits both
        for name in ("edgeslm", "torch"):
            port = free_port()
            proc, cold = start_server(args.bundle, port) if name == "edgeslm" else _torch_server(args.checkpoint, port)
            colds[name].append(cold)
            try:
                if attempt == args.repeats - 1:
                    results[name] = _measure(proc, statistics.median(colds[name]), port, texts)
            finally:
                proc.terminate()
                proc.wait(10)
    for name, values in colds.items():
        results[name]["cold_start_runs_s"] = [round(v, 3) for v in values]
    same = sum(a == b for a, b in zip(results["edgeslm"].pop("labels"), results["torch"].pop("labels"), strict=True))
    report = {
        "command": " ".join(sys.argv),
        "rows": len(texts),
        "edgeslm_serve": results["edgeslm"],
        "torch_transformers_serve": results["torch"],
        "label_agreement": round(same / len(texts), 4),
        "rss_ratio": round(results["torch"]["rss_mb"] / results["edgeslm"]["rss_mb"], 2),
        "cold_start_ratio": round(results["torch"]["cold_start_s"] / results["edgeslm"]["cold_start_s"], 2),
        "installed": _extras(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
