"""``edgeslm compare BUNDLE --cloud URL``: the same dev sentences on the device runtime and through the cloud.

Per network profile (emulated by a ``DelayProxy`` in front of the cloud URL, and measured), it records what the
user waits for (p50/p95/p99, warm = one kept-alive connection, cold = a new connection per call), the bytes each
call moves (counted at the socket by the kernel), the answers (agreement with the device, accuracy of each), then
energy, cost and break-even from sourced figures, and what happens with the cloud down or hung. One run, one JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..errors import CloudError, ConfigError, DataError
from ..recipe import DataConfig
from .client import Call, CloudClient
from .costs import (
    break_even_calls,
    build_cost_usd,
    device_energy,
    monthly_cloud_usd,
    price_entry,
    radio_energy,
    units_per_call,
)
from .linkcheck import measure_link
from .network import load_profile
from .proxy import DelayProxy, blackhole, refused_port

__all__ = ["CompareConfig", "compare"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class CompareConfig:
    rows: int = 200  # dev sentences per warm run, the same ones on the device and the cloud
    cold_rows: int = 30  # new-connection calls per profile (each pays the TCP and TLS handshakes)
    device_cold_rows: int = 5  # fresh bundle loads timed (verify + session + first answer)
    warmup_rows: int = 5  # untimed calls before each warm run (one thread, batch 1, as the build report)
    networks: tuple[str, ...] = ("loopback", "wifi", "4g", "satellite", "flaky")  # the list, 3g is a gap
    timeout_s: float = 10.0  # per call; longer than any emulated profile's worst case without loss
    availability_rows: int = 3  # calls against a down and a hung cloud
    availability_timeout_s: float = 2.0  # how long a call to the hung cloud waits before it gives up
    link_pings: int = 5  # pings per profile when measuring the emulated link before the run
    price: str = "google-nl-sentiment"  # a [P] price list for sentiment calls (prices.toml)
    amortize_months: float = 12.0  # months over which the bundle's build compute is spread
    threads: int = 1  # device intra-op threads
    seed: int = 0  # the emulator's jitter and loss draws


def _stats(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    ms = np.asarray(seconds) * 1000
    p50, p95, p99 = (float(x) for x in np.percentile(ms, [50, 95, 99]))
    return {"n": len(ms), "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "mean_ms": float(ms.mean())}


def _run_calls(calls: list[Call]) -> dict[str, Any]:
    ok = [c for c in calls if c.ok]
    counted = [c for c in calls if c.bytes_sent is not None and c.bytes_received is not None]
    return {
        **_stats([c.seconds for c in ok]),
        "calls": len(calls),
        "answered": len(ok),
        "errors": dict(Counter(c.error_kind for c in calls if not c.ok)),
        "first_error": next((c.error for c in calls if not c.ok), None),
        "bytes_sent_mean": float(np.mean([c.bytes_sent for c in counted])) if counted else None,
        "bytes_received_mean": float(np.mean([c.bytes_received for c in counted])) if counted else None,
        "bytes_sent_total": sum(c.bytes_sent or 0 for c in counted),
        "bytes_received_total": sum(c.bytes_received or 0 for c in counted),
        "latencies_ms": [c.seconds * 1000 for c in ok],
        "server_ms_p50": float(np.median(server)) if (server := [c.server_ms for c in ok if c.server_ms]) else None,
    }


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"127.0.0.1:{port}", parts.path, "", ""))


def _build_seconds(bundle: Path) -> float | None:
    report = bundle.parent / "report.json"
    try:
        steps = json.loads(report.read_text(encoding="utf-8"))["step_seconds"]
        return float(sum(steps.values()))
    except (OSError, KeyError, ValueError, AttributeError):
        return None


def compare(
    bundle: Path,
    cloud_url: str,
    data: DataConfig,
    config: CompareConfig = CompareConfig(),
    *,
    cafile: Path | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Measure the device and the cloud side by side; return the comparison as a JSON-ready dict."""
    from ..data import load_dataset
    from ..devices import known_devices
    from ..runtime import Predictor

    say: Log = log or (lambda _m: None)
    if config.rows < 1 or config.cold_rows < 0:
        raise ConfigError("--rows must be at least 1 and --cold-rows at least 0")
    profiles = [load_profile(n) for n in config.networks]  # unknown names fail here, before any measuring
    price = price_entry(config.price)
    predictor = Predictor(bundle, threads=config.threads)
    labels = tuple(predictor.labels)
    dataset = load_dataset(data)
    if tuple(dataset.label_names) != labels:
        raise DataError(
            f"the bundle's labels ({', '.join(labels)}) are not the dataset's ({', '.join(dataset.label_names)}); "
            "compare on the data the bundle was built for"
        )
    texts = list(dataset.eval.texts[: config.rows])
    gold = [labels[y] for y in dataset.eval.labels[: config.rows]]

    probe = CloudClient(cloud_url, labels=labels, timeout=config.timeout_s, cafile=cafile)
    info = probe.info()
    if info is not None and info.get("task") != predictor.manifest.task:
        raise CloudError(
            f"task mismatch: the bundle does {predictor.manifest.task}, the cloud model {info.get('task')}; "
            "compare a bundle with a cloud model of the same task"
        )
    first = probe.classify(texts[0], fresh=True)
    if not first.ok:
        raise CloudError(
            f"{first.error}; compare needs a working cloud URL (the down/hung cases are measured separately)"
        )

    say(f"device: {len(texts)} warm calls, {config.device_cold_rows} cold loads …")
    device = _measure_device(bundle, predictor, texts, gold, config)

    networks: list[dict[str, Any]] = []
    for profile in profiles:
        if not profile.emulable:
            say(f"[yellow]{profile.name}: skipped, no sourced RTT (a gap in the research)[/yellow]")
            networks.append({"profile": profile.to_dict(), "skipped": "no sourced RTT: a gap, not emulated"})
            continue
        say(f"{profile.name}: measuring the link, {len(texts)} warm + {config.cold_rows} cold calls …")
        link = measure_link(profile, pings=config.link_pings, seed=config.seed)
        link = {k: v for k, v in link.items() if k != "target"}
        parts = urlsplit(cloud_url)
        upstream = (parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80))
        with DelayProxy(profile, upstream, seed=config.seed) as proxy:
            client = CloudClient(
                cloud_url, labels=labels, via=("127.0.0.1", proxy.port), timeout=config.timeout_s, cafile=cafile
            )
            for t in texts[: config.warmup_rows]:
                client.classify(t, fresh=False)
            warm_calls = [client.classify(t, fresh=False) for t in texts]
            cold_calls = [client.classify(t, fresh=True) for t in texts[: config.cold_rows]]
            client.close()
            time.sleep(0.05)  # let the proxy count the last bytes
            proxy_bytes = {"up": proxy.stats.bytes_up, "down": proxy.stats.bytes_down}
        answered = [(c.label, d, g) for c, d, g in zip(warm_calls, device["labels"], gold, strict=True) if c.ok]
        row: dict[str, Any] = {
            "profile": profile.to_dict(),
            "link_measured": link,
            "warm": _run_calls(warm_calls),
            "cold": _run_calls(cold_calls),
            "proxy_bytes": proxy_bytes,
            "cloud_accuracy": sum(c == g for c, _, g in answered) / len(answered) if answered else None,
            "agreement": sum(c == d for c, d, _ in answered) / len(answered) if answered else None,
        }
        networks.append(row)

    say("availability: cloud down, cloud hung …")
    availability = _availability(cloud_url, predictor, texts[: config.availability_rows], labels, config, cafile)
    result: dict[str, Any] = {
        "bundle": str(bundle),
        "cloud_url": cloud_url,
        "cloud_info": info,
        "tls": urlsplit(cloud_url).scheme == "https",
        "dataset": dataset.name,
        "eval_split": dataset.eval_split,
        "rows": len(texts),
        "labels": list(labels),
        "config": dataclasses.asdict(config),
        "device": {k: v for k, v in device.items() if k != "labels"},
        "networks": networks,
        "availability": availability,
    }
    tokens = [len(e.ids) for e in predictor._tokenizer.encode_batch(texts)]
    result["energy"] = _energy(known_devices(), device, networks)
    result["cost"] = _cost(price, texts, tokens, bundle, config)
    return result


def _measure_device(
    bundle: Path, predictor: Any, texts: list[str], gold: list[str], config: CompareConfig
) -> dict[str, Any]:
    from ..runtime import Predictor

    for t in texts[: config.warmup_rows]:
        predictor.predict(t)
    seconds, cpu, labels = [], [], []
    for t in texts:
        w, c = time.perf_counter(), time.process_time()
        labels.append(predictor.predict(t).label)
        cpu.append(time.process_time() - c)
        seconds.append(time.perf_counter() - w)
    cold = []
    for t in texts[: config.device_cold_rows]:
        w = time.perf_counter()
        Predictor(bundle, threads=config.threads).predict(t)
        cold.append(time.perf_counter() - w)
    size = sum(p.stat().st_size for p in Path(bundle).iterdir() if p.is_file())
    return {
        "warm": {**_stats(seconds), "latencies_ms": [s * 1000 for s in seconds]},
        "cold": {**_stats(cold), "what": "load the bundle (verify hashes, build the session) + first answer"},
        "cpu_ms_per_query": float(np.mean(cpu)) * 1000,
        "accuracy": sum(p == g for p, g in zip(labels, gold, strict=True)) / len(gold),
        "bytes_sent": 0,
        "bytes_received": 0,
        "bundle_mb": size / 1e6,
        "threads": config.threads,
        "host_cpus": os.cpu_count(),
        "labels": labels,
    }


def _availability(
    url: str, predictor: Any, texts: list[str], labels: tuple[str, ...], config: CompareConfig, cafile: Path | None
) -> dict[str, Any]:
    """The device keeps answering; the cloud path must fail cleanly (an error kind, in bounded time)."""
    out = {}
    device_answers = sum(1 for t in texts if predictor.predict(t).label in labels)
    with blackhole() as hung:
        for name, port, timeout in (
            ("cloud_down", refused_port(), config.timeout_s),
            ("cloud_hung", hung, config.availability_timeout_s),
        ):
            client = CloudClient(_with_port(url, port), labels=labels, timeout=timeout, cafile=cafile)
            calls = [client.classify(t, fresh=True) for t in texts]
            out[name] = {
                "device_answered": device_answers,
                "cloud_answered": sum(c.ok for c in calls),
                "calls": len(calls),
                "errors": dict(Counter(c.error_kind for c in calls if not c.ok)),
                "message": next((c.error for c in calls if not c.ok), None),
                "seconds_to_fail_max": max(c.seconds for c in calls) if calls else None,
                "timeout_s": timeout,
            }
    return out


def _energy(devices: dict[str, dict[str, Any]], device: dict[str, Any], networks: list[dict[str, Any]]) -> dict:
    cpu_s = device["cpu_ms_per_query"] / 1000
    rows = []
    for d in devices.values():
        row: dict[str, Any] = {"compute": device_energy(d, cpu_s), "radio": {}}
        for n in networks:
            if "skipped" in n:
                continue
            p = n["profile"]
            up = float(p["up_mbps"]) if isinstance(p["up_mbps"], int | float | str) else float("nan")
            warm = n["warm"]
            if warm["mean_ms"] is None or warm["bytes_sent_mean"] is None:
                row["radio"][p["name"]] = {"joules": None, "gap": "no answered calls"}
                continue
            row["radio"][p["name"]] = radio_energy(d, p["name"], up, warm["bytes_sent_mean"], warm["mean_ms"] / 1000)
        rows.append(row)
    return {"cpu_ms_per_query_here": device["cpu_ms_per_query"], "devices": rows}


def _cost(
    price: dict[str, Any], texts: list[str], tokens: list[int], bundle: Path, config: CompareConfig
) -> dict[str, Any]:
    units = units_per_call(price, texts, tokens)
    build = build_cost_usd(_build_seconds(bundle), os.cpu_count() or 1)
    monthly_device = build["usd"] / config.amortize_months if build["usd"] is not None else 0.0
    volumes = [10**k for k in range(2, 10)]
    return {
        "price": price,
        "units_per_call": units,
        "mean_chars": float(np.mean([len(t) for t in texts])),
        "mean_tokens": float(np.mean(tokens)),
        "cloud_usd_per_1000_calls_first_paid_tier": 1000
        * units
        * next((p for _lo, _hi, p in price.get("tiers", []) if p > 0), 0.0),
        "device_build": build,
        "device_monthly_usd": monthly_device,
        "amortize_months": config.amortize_months,
        "device_marginal_usd_per_call": None,
        "device_marginal_gap": "electricity per call not priced: no sourced electricity price",
        "break_even_calls_per_month": break_even_calls(price, units, monthly_device),
        "curve": [
            {"calls_per_month": v, "cloud_usd": monthly_cloud_usd(price, v, units), "device_usd": monthly_device}
            for v in volumes
        ],
    }
