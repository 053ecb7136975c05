"""Summarise a telemetry file and flag drift: falling confidence, or labels shifting from what the model was built on.

Reference for the label distribution: the build-time distribution in the bundle's manifest
(``metrics.label_distribution``) when there is one, else the oldest part of the log itself. Shift is measured with
the population stability index (PSI, the credit-scoring industry's drift score: below 0.1 stable, above 0.25 a
real shift); confidence drift is the fall in mean top probability from the reference window to the recent one.
Only aggregates leave this module, so its output is what an opt-in export may send.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import Manifest
from ..errors import ConfigError

__all__ = ["DriftConfig", "summarize"]


@dataclass(frozen=True, kw_only=True)
class DriftConfig:
    recent_fraction: float = 0.25  # the newest quarter of predictions is "recent"; the oldest quarter, the reference
    psi_alert: float = 0.2  # PSI above this flags a label shift (0.1-0.25 is the usual "watch" band)
    confidence_drop_alert: float = 0.05  # a fall in mean top probability larger than this flags confidence drift
    min_rows: int = 50  # fewer predictions per window than this: no drift verdict, only counts


def _psi(reference: dict[str, float], recent: dict[str, float]) -> float:
    eps = 1e-4  # keeps a label absent from one side finite (standard PSI smoothing)
    labels = set(reference) | set(recent)
    return sum(
        (recent.get(k, 0) + eps - reference.get(k, 0) - eps)
        * math.log((recent.get(k, 0) + eps) / (reference.get(k, 0) + eps))
        for k in labels
    )


def _distribution(rows: list[tuple[str, float]]) -> dict[str, float]:
    counts: dict[str, int] = {}
    for label, _ in rows:
        counts[label] = counts.get(label, 0) + 1
    return {k: v / len(rows) for k, v in sorted(counts.items())} if rows else {}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarize(db: Path, manifest: Manifest | None = None, config: DriftConfig | None = None) -> dict[str, Any]:
    """Counts, latency, routing, label distribution and drift flags for every model in the telemetry file ``db``."""
    config = config or DriftConfig()
    if not Path(db).is_file():
        raise ConfigError(f"telemetry file `{db}` does not exist; start `edgeslm serve --telemetry {db}` first")
    try:
        conn = sqlite3.connect(f"file:{Path(db).resolve()}?mode=ro", uri=True)
        requests = conn.execute("SELECT ts, model, latency_ms, status FROM requests ORDER BY ts").fetchall()
        predictions = conn.execute("SELECT model, label, confidence, path FROM predictions ORDER BY ts").fetchall()
        conn.close()
    except sqlite3.DatabaseError as e:
        raise ConfigError(
            f"`{db}` is not an edgeslm telemetry file ({e}); pass the --telemetry file of a server"
        ) from e
    ok = [r for r in requests if r[3] < 400]
    latencies = [r[2] for r in ok]
    errors: dict[str, int] = {}
    for r in requests:
        if r[3] >= 400:
            errors[str(r[3])] = errors.get(str(r[3]), 0) + 1
    summary: dict[str, Any] = {
        "from_ts": requests[0][0] if requests else None,
        "to_ts": requests[-1][0] if requests else None,
        "requests": len(requests),
        "errors": errors,
        "latency_ms": {"p50": _percentile(latencies, 0.5), "p95": _percentile(latencies, 0.95)},
        "models": {},
    }
    for model in sorted({p[0] for p in predictions}):
        rows = [(label, conf, path) for m, label, conf, path in predictions if m == model]
        summary["models"][model] = _model_summary(rows, manifest, config)
    summary["drift"] = sorted(f"{m}: {flag}" for m, s in summary["models"].items() for flag in s["flags"])
    return summary


def _model_summary(
    rows: list[tuple[str, float, str]], manifest: Manifest | None, config: DriftConfig
) -> dict[str, Any]:
    paths: dict[str, int] = {}
    for _, _, path in rows:
        paths[path] = paths.get(path, 0) + 1
    k = max(1, int(len(rows) * config.recent_fraction))
    oldest, recent = [(lb, c) for lb, c, _ in rows[:k]], [(lb, c) for lb, c, _ in rows[-k:]]
    built = (manifest.metrics.get("label_distribution") if manifest else None) or None
    reference = built or _distribution(oldest)
    out: dict[str, Any] = {
        "predictions": len(rows),
        "routed": paths,
        "label_distribution": _distribution([(lb, c) for lb, c, _ in rows]),
        "reference": "manifest" if built else "oldest predictions",
        "flags": [],
    }
    if k < config.min_rows:
        out["flags"] = []
        out["note"] = f"fewer than {config.min_rows} predictions per window: no drift verdict yet"
        return out
    psi = _psi(reference, _distribution(recent))
    conf_ref = sum(c for _, c in oldest) / len(oldest)
    conf_recent = sum(c for _, c in recent) / len(recent)
    out.update(psi=round(psi, 4), confidence_reference=round(conf_ref, 4), confidence_recent=round(conf_recent, 4))
    if psi > config.psi_alert:
        out["flags"].append(f"label distribution shifted (PSI {psi:.2f} > {config.psi_alert})")
    if conf_ref - conf_recent > config.confidence_drop_alert:
        out["flags"].append(f"confidence fell from {conf_ref:.3f} to {conf_recent:.3f}")
    return out
