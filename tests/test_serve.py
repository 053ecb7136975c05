"""`edgeslm serve` over real HTTP on 127.0.0.1: the cloud's shapes, limits, bad input, refusal to start, hot swap."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from conftest import write_tiny_bundle
from edgeslm.cli import app as cli_app
from edgeslm.errors import ServeError
from edgeslm.runtime.app import Limits
from edgeslm.runtime.registry import parse_bundle_arg
from edgeslm.runtime.serve import ServeConfig, Server

NEG, POS = (1.0, -1.0), (-1.0, 1.0)  # write_tiny_bundle weights: every text "neg", or every text "pos"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    return {"neg": write_tiny_bundle(root / "neg" / "bundle", NEG), "pos": write_tiny_bundle(root / "pos", POS)}


@pytest.fixture(scope="module")
def server(bundles: dict[str, Path]) -> Iterator[tuple[Server, httpx.Client]]:
    config = ServeConfig(port=0, limits=Limits(max_body_bytes=200_000, max_texts=8, max_text_chars=1_000), watch_s=0)
    srv = Server([parse_bundle_arg(str(bundles["neg"])), ("pos", bundles["pos"])], config, log=lambda _: None)
    with srv.running() as url, httpx.Client(base_url=url, timeout=10) as client:
        yield srv, client


def test_bundle_names_come_from_the_folder() -> None:
    assert parse_bundle_arg("out/demo/bundle") == ("demo", Path("out/demo/bundle"))
    assert parse_bundle_arg("sst2=/x/y") == ("sst2", Path("/x/y"))
    assert parse_bundle_arg("/a/b/model")[0] == "model"


def test_hugging_face_shapes(server: tuple[Server, httpx.Client]) -> None:
    _, client = server
    one = client.post("/", json={"inputs": "a wonderful film"})
    assert one.status_code == 200
    (answer,) = one.json()  # one list of {label, score} per text, best first
    assert [a["label"] for a in answer] == ["neg", "pos"] and answer[0]["score"] > answer[1]["score"]
    assert one.headers["x-edgeslm-route"] == "device"
    many = client.post("/models/pos", json={"inputs": ["a", "b", "c"], "parameters": {"top_k": 1}})
    assert many.status_code == 200
    assert [[a["label"] for a in ans] for ans in many.json()] == [["pos"]] * 3


def test_health_metrics_and_openapi(server: tuple[Server, httpx.Client]) -> None:
    srv, client = server
    client.post("/models/pos", json={"inputs": ["x", "y"]})
    health = client.get("/health").json()
    assert set(health["models"]) == {"neg", "pos"}
    assert health["models"]["pos"]["provider"] == "CPUExecutionProvider"
    assert health["models"]["pos"]["version"] == srv.registry.get("pos").version  # type: ignore[union-attr]
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'edgeslm_requests_total{route="/models/{name}",status="200"}' in text
    assert 'edgeslm_texts_total{model="pos"}' in text
    assert "edgeslm_request_seconds_bucket" in text and 'edgeslm_model_info{model="pos"' in text
    doc = client.get("/openapi.json").json()
    assert {"/", "/models/{name}", "/v1/embeddings", "/health", "/metrics"} <= set(doc["paths"])
    assert '"maxItems": 8' in json.dumps(doc) and '"maxLength": 1000' in json.dumps(doc)  # limits are documented


@pytest.mark.parametrize(
    ("content", "content_type", "status", "says"),
    [
        (b"{not json", "application/json", 422, "not valid JSON"),
        (b'{"inputs": "x"}', "text/plain", 415, "not JSON"),
        (b"{}", "application/json", 422, "inputs: Field required"),
        (b'{"inputs": 5}', "application/json", 422, "must be a string or a list of strings"),
        (b'{"inputs": ["ok", null]}', "application/json", 422, "must be a string or a list of strings"),
        (b'{"inputs": []}', "application/json", 422, "at least 1 item"),
        (json.dumps({"inputs": "x" * 10_000_000}).encode(), "application/json", 413, "over this server's limit"),
        (
            json.dumps({"inputs": ["a"] * 10_000}).encode(),
            "application/json",
            422,
            "at most 8 items after validation, not 10000",
        ),
        (json.dumps({"inputs": "y" * 1001}).encode(), "application/json", 422, "at most 1000 characters"),
        (b'{"inputs": "x", "parameters": {"top_k": 0}}', "application/json", 422, "top_k"),
    ],
)
def test_bad_input_gets_a_clear_4xx(
    server: tuple[Server, httpx.Client], content: bytes, content_type: str, status: int, says: str
) -> None:
    _, client = server
    response = client.post("/", content=content, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert says in response.json()["error"]
    assert len(response.content) < 2_000  # the offending input is never echoed back


def test_unknown_model_and_wrong_task(server: tuple[Server, httpx.Client]) -> None:
    _, client = server
    missing = client.post("/models/nope", json={"inputs": "x"})
    assert missing.status_code == 404 and "served: neg, pos" in missing.json()["error"]
    wrong = client.post("/v1/embeddings", json={"input": "x", "model": "pos"})
    assert wrong.status_code == 400 and "embedding" in wrong.json()["error"]


def test_a_bundle_that_fails_verification_stops_the_start(bundles: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(bundles["pos"], bad)
    with (bad / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ServeError, match="refused, so the server does not start: .*does not match its hash"):
        Server([("ok", bundles["pos"]), ("bad", bad)], ServeConfig(port=0))
    result = CliRunner().invoke(cli_app, ["serve", str(bad), "--port", "0"])
    assert result.exit_code == 1 and "does not match its hash" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli_app, ["serve", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "is not a folder" in result.output


def test_port_in_use_is_one_line(bundles: dict[str, Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", str(bundles["pos"]), "--port", str(port)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is in use; stop the other server or pick a port with --port"
    ]


def _hammer(url: str, stop: threading.Event, labels: list[str], failures: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            try:
                r = client.post("/models/live", json={"inputs": "same text"})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    labels.append(r.json()[0][0]["label"])
            except httpx.HTTPError as e:
                failures.append(repr(e))


def test_hot_swap_drops_no_request_and_refuses_a_bad_update(tmp_path: Path) -> None:
    # The A/B pattern of an updater: `live` is a symlink to a slot; an update writes the other slot and flips it.
    live = tmp_path / "live"
    live.symlink_to(write_tiny_bundle(tmp_path / "slot_a", NEG))
    srv = Server([("live", live)], ServeConfig(port=0, watch_s=0.1), log=lambda _: None)
    stop, failures = threading.Event(), []  # type: ignore[var-annotated]
    seen: list[list[str]] = [[] for _ in range(4)]  # per client: its requests are sequential, so ordered
    labels = seen[0]
    with srv.running() as url:
        clients = [threading.Thread(target=_hammer, args=(url, stop, seen[i], failures)) for i in range(4)]
        for c in clients:
            c.start()
        time.sleep(0.5)
        (tmp_path / "next").symlink_to(write_tiny_bundle(tmp_path / "slot_b", POS))
        (tmp_path / "next").replace(live)  # atomic flip; the watcher sees a new manifest and swaps
        deadline = time.monotonic() + 10
        while (not labels or labels[-1] != "pos") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        (tmp_path / "slot_b" / "model.onnx").write_bytes(b"tampered")  # a broken bundle: refused, "pos" stays
        assert srv.reload("live") is False
        time.sleep(0.3)
        stop.set()
        for c in clients:
            c.join()
        metrics = httpx.get(f"{url}/metrics").text
    assert failures == []
    for answers in seen:
        assert answers[0] == "neg" and answers[-1] == "pos" and len(answers) > 5
        first_pos = answers.index("pos")
        assert set(answers[first_pos:]) == {"pos"}  # once a client saw the new model, never the old one again
    assert 'edgeslm_reloads_total{model="live",outcome="swapped"} 1.0' in metrics
    assert 'edgeslm_reloads_total{model="live",outcome="refused"} 1.0' in metrics


def test_sighup_reloads_a_real_server_process(tmp_path: Path) -> None:
    """`edgeslm serve` as its own process, watching off: SIGHUP alone makes it verify and swap the updated bundle."""
    import signal
    import subprocess
    import sys

    live = tmp_path / "live"
    live.symlink_to(write_tiny_bundle(tmp_path / "slot_a", NEG))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", "from edgeslm.cli import main; main()", "serve", f"live={live}", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--watch", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"

    def label() -> str | None:
        try:
            return str(httpx.post(url, json={"inputs": "fine"}, timeout=5).json()[0][0]["label"])
        except httpx.HTTPError:
            return None

    def wait_for(want: str) -> None:
        deadline = time.monotonic() + 60
        while label() != want:
            assert proc.poll() is None and time.monotonic() < deadline, f"no `{want}` answer; server exited or hung"
            time.sleep(0.1)

    try:
        wait_for("neg")
        (tmp_path / "next").symlink_to(write_tiny_bundle(tmp_path / "slot_b", POS))
        (tmp_path / "next").replace(live)
        time.sleep(0.5)
        assert label() == "neg"  # --watch 0: nothing changes until the signal
        proc.send_signal(signal.SIGHUP)
        wait_for("pos")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out  # SIGTERM is a clean stop
    assert "now serves version" in out and out.rstrip().endswith("stopped")
