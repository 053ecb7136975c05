"""The server's Prometheus metrics, on a registry of its own (two servers in one process never share counters).

Route labels are route templates (``/models/{name}``), never raw paths, so a fuzzer cannot grow the label set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "route_label"]

_ROUTES = ("/", "/health", "/metrics", "/v1/embeddings", "/v1/chat/completions", "/openapi.json", "/docs", "/redoc")
# Buckets from 0.5 ms to 5 s: a batch-1 INT8 call here takes 1-20 ms, a cloud fallback 50 ms to seconds.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def route_label(path: str) -> str:
    if path in _ROUTES:
        return path
    return "/models/{name}" if path.startswith("/models/") else "other"


class Metrics:
    """Requests, latency, texts, errors, routing decisions, reloads and the version of each served model."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgeslm_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.latency = Histogram(
            "edgeslm_request_seconds", "Time to answer a request", ["route"], buckets=_BUCKETS, registry=r
        )
        self.texts = Counter("edgeslm_texts", "Texts run through a model", ["model"], registry=r)
        self.errors = Counter("edgeslm_errors", "Requests answered with an error", ["route", "kind"], registry=r)
        self.routed = Counter(
            "edgeslm_routed_texts",
            "Texts by who answered: device, cloud, or device_fallback (the cloud was asked but unreachable)",
            ["model", "path"],
            registry=r,
        )
        self.reloads = Counter("edgeslm_reloads", "Bundle hot swaps", ["model", "outcome"], registry=r)
        self.model_info = Gauge(
            "edgeslm_model_info", "Served bundle (value 1)", ["model", "task", "version", "provider"], registry=r
        )

    def set_model(self, name: str, task: str, version: str, provider: str) -> None:
        """Show exactly one version per model name (the old series is removed on a swap)."""
        for labels in list(self._series(name)):
            self.model_info.remove(*labels)
        self.model_info.labels(name, task, version, provider).set(1)

    def _series(self, name: str) -> list[tuple[str, ...]]:
        out = []
        for metric in self.model_info.collect():
            for sample in metric.samples:
                if sample.labels.get("model") == name:
                    out.append(tuple(sample.labels[k] for k in ("model", "task", "version", "provider")))
        return out

    def render(self) -> bytes:
        return generate_latest(self.registry)
