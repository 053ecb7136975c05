"""Hybrid routing: the device answers what it is sure of; the cloud gets the rest, when it can be reached.

A text goes to the cloud (``--fallback URL``, Hugging Face inference shape) when the device's top score is below
``threshold`` or the text is longer than the model's ``max_length`` tokens. When the cloud is unreachable, slow or
answers in a shape we cannot read, the device's answer stands ("device_fallback"), and the cloud is left alone for
``cooldown_s`` so a dead network does not add a timeout to every request. Each text's path is returned for counting.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .predictor import Prediction, Predictor

if TYPE_CHECKING:
    pass

__all__ = ["Router", "RoutingConfig"]

Answer = list[dict[str, Any]]  # [{"label": ..., "score": ...}, ...], best first


@dataclass(frozen=True, kw_only=True)
class RoutingConfig:
    url: str  # the cloud endpoint, e.g. https://api-inference.huggingface.co/models/<id>
    threshold: float = 0.7  # ask the cloud when the device's top probability is below this
    route_long: bool = True  # ask the cloud when a text is longer than the model's max_length tokens
    timeout_s: float = 2.0  # per cloud call; the device answer stands after it
    cooldown_s: float = 5.0  # after a failed call, skip the cloud this long (device answers at once)
    token_env: str = "EDGESLM_FALLBACK_TOKEN"  # environment variable holding a bearer token, if the cloud needs one

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--fallback must be an http(s) URL, got `{self.url}`")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"--threshold must be within [0, 1], got {self.threshold}")
        if self.timeout_s <= 0 or self.cooldown_s < 0:
            raise ConfigError("--fallback-timeout must be > 0 and the cooldown >= 0")


class Router:
    """Decide per text, ask the cloud once per request for all the texts it should see, merge the answers."""

    def __init__(self, config: RoutingConfig) -> None:
        import httpx  # here, not at the top: a server without --fallback never loads it (about 10 MB of RSS)

        self._http_error = httpx.HTTPError
        self.config = config
        token = os.environ.get(config.token_env)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(timeout=config.timeout_s, headers=headers)
        self._down_until = 0.0
        self._lock = threading.Lock()

    @staticmethod
    def device_answer(p: Prediction) -> Answer:
        return [{"label": k, "score": v} for k, v in sorted(p.scores.items(), key=lambda kv: -kv[1])]

    def route(
        self, predictor: Predictor, texts: Sequence[str], preds: Sequence[Prediction]
    ) -> tuple[list[Answer], list[str]]:
        """Answers in the Hugging Face shape and, per text, `device`, `cloud` or `device_fallback`."""
        answers = [self.device_answer(p) for p in preds]
        paths = ["device"] * len(texts)
        long = predictor.truncated(texts) if self.config.route_long else [False] * len(texts)
        ask = [i for i, p in enumerate(preds) if p.score < self.config.threshold or long[i]]
        if not ask:
            return answers, paths
        cloud = self._ask([texts[i] for i in ask])
        for j, i in enumerate(ask):
            if cloud is None:
                paths[i] = "device_fallback"
            else:
                answers[i], paths[i] = cloud[j], "cloud"
        return answers, paths

    def _ask(self, texts: list[str]) -> list[Answer] | None:
        """The cloud's answers, or None when it cannot give them now (then the device's stand)."""
        with self._lock:
            if time.monotonic() < self._down_until:
                return None
        try:
            response = self._client.post(self.config.url, json={"inputs": texts})
            response.raise_for_status()
            answers = _parse(response.json(), len(texts))
        except (self._http_error, ValueError):
            with self._lock:
                self._down_until = time.monotonic() + self.config.cooldown_s
            return None
        return answers

    def close(self) -> None:
        self._client.close()


def _parse(body: Any, n: int) -> list[Answer]:
    """Accept [[{label, score}, ...], ...] (one list per text) or, for one text, [{label, score}, ...]."""
    if n == 1 and isinstance(body, list) and body and isinstance(body[0], dict):
        body = [body]
    ok = (
        isinstance(body, list)
        and len(body) == n
        and all(
            isinstance(a, list)
            and a
            and all(isinstance(x, dict) and isinstance(x.get("label"), str) and _is_number(x.get("score")) for x in a)
            for a in body
        )
    )
    if not ok:
        raise ValueError("the cloud's answer is not in the Hugging Face text-classification shape")
    return [
        sorted(({"label": x["label"], "score": float(x["score"])} for x in a), key=lambda x: -x["score"]) for a in body
    ]


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)
