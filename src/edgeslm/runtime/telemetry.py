"""On-device telemetry: latency, confidence, labels, errors and routing in a small local SQLite file.

What is stored: per request its time, model version, endpoint, latency and text count; per text its label,
top probability and who answered (device, cloud, device_fallback). Never the text itself. The file is capped:
past ``max_bytes`` the oldest fifth of the rows goes and the freed pages are reused, so it never grows unbounded.

Writes go through a queue to one writer thread: a request never waits on the disk, and if the queue is full the
event is dropped and counted (``dropped``) rather than slowing the answer. SQLite in WAL mode lets `edgeslm
telemetry` read while the server writes.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SCHEMA", "Telemetry", "TelemetryConfig", "connect"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    ts REAL NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, endpoint TEXT NOT NULL,
    latency_ms REAL NOT NULL, texts INTEGER NOT NULL, status INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS predictions (
    ts REAL NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, label TEXT NOT NULL,
    confidence REAL NOT NULL, path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS device (ts REAL NOT NULL, battery_pct REAL, on_power INTEGER);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
"""
_TABLES = ("requests", "predictions", "device")


@dataclass(frozen=True, kw_only=True)
class TelemetryConfig:
    max_bytes: int = 8_000_000  # 8 MB: about 80,000 requests with their predictions before the oldest go
    queue_size: int = 10_000  # events waiting for the writer; beyond it, events are dropped (and counted)
    flush_s: float = 0.5  # the writer commits at least this often while events arrive
    battery_every_s: float = 60.0  # battery level sampling period (Linux power_supply; absent on servers)


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with incremental vacuum, so deleted rows give their pages back for reuse."""
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # effective only before the first table exists
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable to the last checkpoint, no fsync per write
    conn.execute("PRAGMA journal_size_limit = 1000000")  # truncate the -wal file back to 1 MB after checkpoints
    conn.executescript(SCHEMA)
    return conn


def _battery() -> tuple[float | None, int | None]:
    """Battery percent and mains power from Linux's power_supply class; (None, None) where there is none."""
    level: float | None = None
    on_power: int | None = None
    for supply in Path("/sys/class/power_supply").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            kind = (supply / "type").read_text().strip()
            if kind == "Battery" and level is None:
                level = float((supply / "capacity").read_text().strip())
            elif kind == "Mains":
                on_power = int((supply / "online").read_text().strip())
    return level, on_power


Event = tuple[float, str, str, str, float, list[tuple[str, float]], list[str], int]


class Telemetry:
    """``record`` from any thread; ``close`` flushes what is queued and stops the writer."""

    def __init__(self, path: str | Path, config: TelemetryConfig | None = None) -> None:
        self.path = Path(path)
        self.config = config or TelemetryConfig()
        self.dropped = 0
        self._queue: queue.Queue[Event | None] = queue.Queue(self.config.queue_size)
        self._conn = connect(self.path)
        self._writer = threading.Thread(target=self._run, name="edgeslm-telemetry", daemon=True)
        self._writer.start()

    def record(
        self,
        model: str,
        version: str,
        endpoint: str,
        latency_ms: float,
        labels: Sequence[tuple[str, float]],
        paths: Sequence[str],
        status: int = 200,
    ) -> None:
        """Queue one request: its latency and status, and per text its (label, confidence) and who answered."""
        try:
            self._queue.put_nowait(
                (time.time(), model, version, endpoint, latency_ms, list(labels), list(paths), status)
            )
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=10)
        self._conn.close()

    def _run(self) -> None:
        last_battery = 0.0
        since_cap = 0
        while True:
            batch = self._take()
            done = None in batch
            events = [e for e in batch if e is not None]
            if events:
                self._write(events)
                since_cap += len(events)
            now = time.time()
            if now - last_battery >= self.config.battery_every_s:
                level, on_power = _battery()
                if level is not None or on_power is not None:
                    self._conn.execute("INSERT INTO device VALUES (?, ?, ?)", (now, level, on_power))
                    self._conn.commit()
                last_battery = now
            if since_cap >= 500 or done:
                self._cap()
                since_cap = 0
            if done:
                return

    def _take(self) -> list[Event | None]:
        """Block for one event, then take whatever else is waiting (one transaction for the lot)."""
        try:
            first = self._queue.get(timeout=self.config.flush_s)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < 1000:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, events: list[Event]) -> None:
        requests = [(ts, m, v, ep, ms, len(paths), status) for ts, m, v, ep, ms, _, paths, status in events]
        predictions = [
            (ts, m, v, label, conf, path)
            for ts, m, v, _, _, labels, paths, _ in events
            for (label, conf), path in zip(labels, paths, strict=False)
        ]
        with self._conn:
            self._conn.executemany("INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?)", requests)
            self._conn.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?)", predictions)

    def used_bytes(self) -> int:
        """Bytes of live pages (the file may be larger: freed pages wait for reuse)."""
        (pages,) = self._conn.execute("PRAGMA page_count").fetchone()
        (free,) = self._conn.execute("PRAGMA freelist_count").fetchone()
        (size,) = self._conn.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * size)

    def _cap(self) -> None:
        """Drop the oldest fifth of every table until the live data fits ``max_bytes``."""
        for _ in range(10):
            if self.used_bytes() <= self.config.max_bytes:
                break
            with self._conn:
                for table in _TABLES:
                    self._conn.execute(
                        f"DELETE FROM {table} WHERE rowid IN "  # table names are our constants, not input
                        f"(SELECT rowid FROM {table} ORDER BY ts LIMIT (SELECT COUNT(*) / 5 + 1 FROM {table}))"
                    )
        self._conn.executescript("PRAGMA incremental_vacuum;")  # sqlite3_exec steps it to the end (execute: 1 page)
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
