"""A strategy wrapper that drops broken client updates before any Flower strategy sees them, and counts them.

Flower's strategies average whatever arrives: one NaN poisons the global model, and one misshapen array raises in
the middle of the round. ``Guarded`` checks every reply against the arrays the server sent (same names, shapes,
dtypes, all finite), passes the good ones on, and records what it dropped and how many bytes each client sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

__all__ = ["Guarded", "RoundLog"]


@dataclass
class RoundLog:
    """What arrived in one round."""

    replies: int = 0
    accepted: int = 0
    rejected_nan: int = 0
    rejected_shape: int = 0
    failed: int = 0  # the client raised or did not answer in time
    upload_bytes: list[int] = field(default_factory=list)  # array payload of every reply that had content


class Guarded(Strategy):
    """Wrap ``strategy``: reject and count NaN/Inf or misshapen updates; the round goes on with the rest.

    It also adds ``round`` to the config every client receives.
    """

    def __init__(self, strategy: Strategy, arrayrecord_key: str = "arrays") -> None:
        self.strategy = strategy
        self.key = arrayrecord_key
        self.rounds: dict[int, RoundLog] = {}
        self._expected: dict[str, tuple[tuple[int, ...], str]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._expected = {k: (tuple(a.shape), a.dtype) for k, a in arrays.items()}
        config = ConfigRecord({**dict(config), "round": server_round})  # clients seed and log by round
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def _problem(self, msg: Message) -> str | None:
        record = msg.content.array_records.get(self.key)
        if record is None:
            return "shape"
        got = {k: (tuple(a.shape), a.dtype) for k, a in record.items()}
        if got != self._expected:
            return "shape"
        for array in record.values():
            if not np.isfinite(array.numpy()).all():
                return "nan"
        return None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        log = self.rounds.setdefault(server_round, RoundLog())
        good: list[Message] = []
        for msg in replies:
            log.replies += 1
            if msg.has_error():
                log.failed += 1
                continue
            record = msg.content.array_records.get(self.key)
            if record is not None:
                log.upload_bytes.append(sum(len(a.data) for a in record.values()))
            problem = self._problem(msg)
            if problem == "nan":
                log.rejected_nan += 1
            elif problem == "shape":
                log.rejected_shape += 1
            else:
                good.append(msg)
        log.accepted = len(good)
        if not good:
            return None, None  # nothing usable: the global model stays as it was
        return self.strategy.aggregate_train(server_round, good)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()
