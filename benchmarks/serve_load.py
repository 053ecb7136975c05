"""Load: `edgeslm serve` in its own process, N concurrent clients on loopback for S seconds, one real SST-2 dev
sentence per request. Reports errors, throughput, p50/p99 latency and the server's RSS over time.

    .venv/bin/python benchmarks/serve_load.py out/demo/bundle --clients 32 --seconds 60

RSS growth is measured from the end of the first quarter of the run (warm: every code path and buffer touched)
to the end. Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "src" / "edgeslm" / "samples" / "sst2" / "dev.tsv"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(bundle: Path, port: int, *extra: str) -> tuple[subprocess.Popen[bytes], float]:
    """Start `edgeslm serve`; return the process and seconds from spawn to its first 200 answer."""
    cmd = [sys.executable, "-c", "from edgeslm.cli import main; main()", "serve", str(bundle), "--port", str(port)]
    start = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--watch", "0", *extra], stdout=subprocess.DEVNULL)
    return proc, wait_ready(proc, port, start)


def wait_ready(proc: subprocess.Popen[bytes], port: int, start: float) -> float:
    """Poll until the server on ``port`` answers 200; return seconds since ``start`` (perf_counter)."""
    while True:
        try:
            if httpx.post(f"http://127.0.0.1:{port}/", json={"inputs": "warm up"}, timeout=5).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("server exited during start-up")
        time.sleep(0.01)


async def load(url: str, texts: list[str], clients: int, seconds: float, pid: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    rss: list[tuple[float, float]] = []
    t0 = time.monotonic()
    deadline = t0 + seconds

    async def client(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            n = i
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    r = await c.post("/", json={"inputs": texts[n % len(texts)]})
                    if r.status_code != 200:
                        errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                except httpx.HTTPError as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                latencies.append(1000 * (time.perf_counter() - start))
                n += clients

    async def sampler() -> None:
        while time.monotonic() < deadline:
            rss.append((time.monotonic() - t0, rss_mb(pid)))
            await asyncio.sleep(1.0)

    await asyncio.gather(sampler(), *(client(i) for i in range(clients)))
    rss.append((time.monotonic() - t0, rss_mb(pid)))
    warm = next(mb for t, mb in rss if t >= seconds / 4)
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(q[98], 2),
        "rss_mb_warm": round(warm, 1),
        "rss_mb_end": round(rss[-1][1], 1),
        "rss_growth_pct": round(100 * (rss[-1][1] - warm) / warm, 2),
        "rss_mb_samples": [(round(t, 1), round(mb, 1)) for t, mb in rss],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, nargs="?", default=ROOT / "out" / "demo" / "bundle")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args()
    texts = [line.split("\t")[0].strip() for line in DEV.read_text().splitlines()[1:]]
    port = free_port()
    proc, cold_s = start_server(args.bundle, port, "--threads", str(args.threads))
    try:
        result = asyncio.run(load(f"http://127.0.0.1:{port}", texts, args.clients, args.seconds, proc.pid))
    finally:
        proc.terminate()
        proc.wait(10)
    report = {
        "command": " ".join(sys.argv),
        "bundle": str(args.bundle),
        "clients": args.clients,
        "seconds": args.seconds,
        "server_threads_per_call": args.threads,
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores (shared with other jobs)",
        "cold_start_s": round(cold_s, 3),
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rss_mb_samples"}, indent=2))


if __name__ == "__main__":
    main()
