"""A short, bounded load test on loopback: concurrent clients for a few seconds, zero errors.

The full run (32 clients for 60 s, with RSS over time) is benchmarks/serve_load.py.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx

from conftest import SAMPLE, write_tiny_bundle
from edgeslm.runtime.serve import ServeConfig, Server

CLIENTS, SECONDS = 8, 3.0


async def _load(url: str, texts: list[str]) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + SECONDS

    async def client(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            n = i
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    r = await c.post("/", json={"inputs": texts[n % len(texts)]})
                    if r.status_code != 200:
                        errors.append(str(r.status_code))
                except httpx.HTTPError as e:
                    errors.append(repr(e))
                latencies.append(time.perf_counter() - start)
                n += CLIENTS

    await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(CLIENTS))), timeout=SECONDS + 20)
    return latencies, errors


def test_short_load_has_no_errors(tmp_path: Path) -> None:
    texts = [line.split("\t")[0] for line in (SAMPLE / "dev.tsv").read_text().splitlines()[1:201]]
    server = Server([("m", write_tiny_bundle(tmp_path / "b"))], ServeConfig(port=0, watch_s=0), log=lambda _: None)
    with server.running() as url:
        latencies, errors = asyncio.run(_load(url, texts))
    assert errors == []
    assert len(latencies) > 50  # it really ran under load
    p99 = statistics.quantiles(latencies, n=100)[98]
    assert p99 < 2.0, f"p99 {p99:.3f} s under {CLIENTS} clients"
