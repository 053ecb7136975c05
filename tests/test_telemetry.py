"""Local telemetry: SQLite in WAL mode, capped in size, no raw text; the summary flags drift."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
from typer.testing import CliRunner

from conftest import write_tiny_bundle
from edgeslm.cli import app as cli_app
from edgeslm.runtime.drift import summarize
from edgeslm.runtime.serve import ServeConfig, Server
from edgeslm.runtime.telemetry import Telemetry, TelemetryConfig

SECRET = "my card number is 4111 1111 1111 1111"


def test_served_requests_are_logged_without_their_text(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    bundle = write_tiny_bundle(tmp_path / "b", (1.0, -1.0))
    with Server([("m", bundle)], ServeConfig(port=0, watch_s=0, telemetry=db), log=lambda _: None).running() as url:
        for _ in range(5):
            assert httpx.post(url, json={"inputs": [SECRET, "fine"]}).status_code == 200
        assert httpx.post(url, json={"inputs": 7}).status_code == 422
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT COUNT(*), SUM(texts) FROM requests WHERE status = 200").fetchone() == (5, 10)
    assert conn.execute("SELECT COUNT(*) FROM requests WHERE status = 422").fetchone() == (1,)
    assert conn.execute("SELECT DISTINCT label, path FROM predictions").fetchall() == [("neg", "device")]
    conn.close()
    for f in tmp_path.glob("t.db*"):  # the database, its WAL and shared-memory files
        assert b"4111" not in f.read_bytes()


def test_the_file_stays_under_its_cap(tmp_path: Path) -> None:
    db = tmp_path / "capped.db"
    t = Telemetry(db, TelemetryConfig(max_bytes=150_000, flush_s=0.05))
    for i in range(20_000):
        t.record("m", "v1", "/", 1.0 + i % 7, [("pos", 0.9), ("neg", 0.8)], ["device", "cloud"])
    t.close()
    assert t.dropped < 20_000
    conn = sqlite3.connect(db)
    (rows,) = conn.execute("SELECT COUNT(*) FROM requests").fetchone()
    (page,) = conn.execute("PRAGMA page_size").fetchone()
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.close()
    assert 0 < rows < 20_000 - t.dropped  # the oldest went
    assert page * pages <= 150_000 * 1.5 and db.stat().st_size <= 150_000 * 1.5


def _log(db: Path, rows: list[tuple[str, float]]) -> None:
    t = Telemetry(db, TelemetryConfig(flush_s=0.05))
    for label, conf in rows:
        t.record("m", "v1", "/", 2.0, [(label, conf)], ["device"])
    t.close()


def test_drift_is_flagged_when_labels_shift_and_confidence_falls(tmp_path: Path) -> None:
    db = tmp_path / "drift.db"
    _log(db, [("neg", 0.95), ("pos", 0.95)] * 100 + [("pos", 0.6)] * 200)
    summary = summarize(db)
    m = summary["models"]["m"]
    assert m["predictions"] == 400 and m["reference"] == "oldest predictions"
    assert m["psi"] > 0.2 and m["confidence_reference"] > m["confidence_recent"]
    assert len(summary["drift"]) == 2
    out = tmp_path / "aggregates.json"
    result = CliRunner().invoke(cli_app, ["telemetry", str(db), "--export", str(out)])
    assert result.exit_code == 0, result.output
    assert "drift: m: label distribution shifted" in result.output and "confidence fell" in result.output
    exported = json.loads(out.read_text())
    assert exported["models"]["m"]["label_distribution"] == {"neg": 0.25, "pos": 0.75}


def test_stable_traffic_is_not_flagged(tmp_path: Path) -> None:
    db = tmp_path / "stable.db"
    _log(db, [("neg", 0.9), ("pos", 0.9)] * 200)
    assert summarize(db)["drift"] == []
    missing = CliRunner().invoke(cli_app, ["telemetry", str(tmp_path / "none.db")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
