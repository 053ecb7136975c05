"""The cloud stand-in on real HTTP(S) over 127.0.0.1: provider shapes, bad requests, TLS, bytes at the socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeslm.cloud.client import CloudClient, parse_classification
from edgeslm.cloud.network import load_profile
from edgeslm.cloud.proxy import DelayProxy
from edgeslm.cloud.server import StandIn, load_model
from edgeslm.cloud.tls import self_signed
from edgeslm.errors import ModelError

LABELS = ("negative", "positive")


@pytest.fixture(scope="module")
def teacher(cloud_build: Path) -> Path:
    return Path(json.loads((cloud_build / "report.json").read_text())["artifacts"]["teacher"])


@pytest.fixture(scope="module")
def tls_server(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StandIn, Path]]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    with StandIn(load_model(teacher), certfile=cert, keyfile=key) as server:
        yield server, cert


def _post(client: CloudClient, path: str, body: object | bytes) -> tuple[int, object]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _h, data, _s = client.request("POST", path, raw, fresh=True)
    client.close()
    return status, json.loads(data)


def test_hf_text_classification_shape(tls_server: tuple[StandIn, Path]) -> None:
    server, cert = tls_server
    c = CloudClient(server.url + "/models/teacher", cafile=cert)
    status, one = _post(c, "/models/teacher", {"inputs": "a gorgeous , witty , seductive movie ."})
    assert status == 200 and isinstance(one, list) and len(one) == 1
    assert {r["label"] for r in one[0]} == set(LABELS)
    assert one[0][0]["score"] >= one[0][1]["score"] and sum(r["score"] for r in one[0]) == pytest.approx(1, abs=1e-5)
    status, many = _post(c, "/", {"inputs": ["good", "bad", "fine"], "parameters": {"top_k": 1}})
    assert status == 200 and [len(r) for r in many] == [1, 1, 1]  # type: ignore[arg-type]
    assert c.info() == {"model": server.model.name, "task": "text-classification", "labels": list(LABELS)}


def test_openai_embeddings_shape(tls_server: tuple[StandIn, Path]) -> None:
    server, cert = tls_server
    c = CloudClient(server.url + "/v1/embeddings", cafile=cert)
    status, body = _post(c, "/v1/embeddings", {"input": ["hello world", "hi"], "model": "teacher"})
    assert status == 200 and isinstance(body, dict)
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == 32  # the tiny teacher's hidden size
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 4


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/models/x", b"{not json", 400, "not valid JSON"),
        ("/models/x", {"text": "no inputs key"}, 400, '"inputs"'),
        ("/models/x", {"inputs": 5}, 400, "non-empty string"),
        ("/models/x", {"inputs": []}, 400, "non-empty string"),
        ("/models/x", {"inputs": ["x"] * 65}, 413, "at most 64"),
        ("/v1/embeddings", {"inputs": "wrong key"}, 400, '"input"'),
    ],
)
def test_bad_requests_get_hf_style_errors(
    tls_server: tuple[StandIn, Path], path: str, body: object, status: int, message: str
) -> None:
    server, cert = tls_server
    got, data = _post(CloudClient(server.url, cafile=cert), path, body)  # type: ignore[arg-type]
    assert got == status and message in data["error"]  # type: ignore[index]


def test_bundle_backend_and_no_embeddings(tmp_path: Path) -> None:
    from conftest import write_tiny_bundle

    bundle = write_tiny_bundle(tmp_path / "b", (-1.0, 1.0))
    with StandIn(load_model(bundle)) as server:
        c = CloudClient(server.url + "/models/b", labels=("neg", "pos"))
        call = c.classify("anything at all", fresh=True)
        assert call.ok and call.label == "pos" and call.server_ms is not None
        status, body = _post(c, "/v1/embeddings", {"input": "x"})
        assert status == 501 and "no embedding output" in body["error"]  # type: ignore[index]
    with pytest.raises(ModelError, match="neither a bundle nor an edgeslm checkpoint"):
        load_model(tmp_path)


def test_tls_is_verified_against_the_generated_cert(tls_server: tuple[StandIn, Path]) -> None:
    server, _cert = tls_server
    call = CloudClient(server.url + "/models/t", labels=LABELS, timeout=5).classify("x", fresh=True)
    assert not call.ok and call.error_kind == "tls" and "--cacert" in (call.error or "")


def test_bytes_counted_at_the_socket_match_the_wire(tls_server: tuple[StandIn, Path]) -> None:
    """The client's kernel counters and the proxy's byte count agree; a new TLS connection costs a handshake."""
    server, cert = tls_server
    with DelayProxy(load_profile("wifi"), ("127.0.0.1", server.port)) as proxy:
        c = CloudClient(server.url + "/models/t", labels=LABELS, via=("127.0.0.1", proxy.port), cafile=cert)
        cold = [c.classify("a fine film", fresh=True) for _ in range(2)]
        warm = [c.classify("a fine film", fresh=False) for _ in range(4)][1:]  # the first opens the connection
        c.close()
        import time

        time.sleep(0.1)
        calls = cold + warm
        assert all(x.ok for x in calls)
        sent = sum(x.bytes_sent or 0 for x in calls) + 0
        assert cold[0].bytes_sent and warm[0].bytes_sent
        # TLS 1.3 handshake: certificate, key shares and finished messages ride on the first call only.
        assert cold[0].bytes_received > 3 * warm[0].bytes_received  # type: ignore[operator]
        assert cold[0].bytes_sent > 2 * warm[0].bytes_sent
        # A new connection pays the TCP and TLS handshakes: at least 3 RTTs of 13 ms vs 1 warm.
        assert min(x.seconds for x in cold) > 0.039 and min(x.seconds for x in warm) > 0.013
    # Everything the client counted went through the proxy (it also saw the warm connection's opening call).
    assert proxy.stats.bytes_up >= sent and proxy.stats.bytes_up - sent < 2 * cold[0].bytes_sent  # type: ignore[operator]


@pytest.mark.parametrize(
    ("status", "ctype", "body", "kind"),
    [
        (200, "text/html", b"<!DOCTYPE html><html><body>Bad gateway</body></html>", "html"),
        (502, "text/plain", b"<html>oops</html>", "html"),
        (200, "application/json", b'[{"label": "x"', "malformed"),
        (200, "application/json", b'{"generated_text": "hi"}', "malformed"),
        (200, "application/json", b'[[{"label": "joy", "score": 0.9}]]', "labels"),
        (500, "application/json", b'{"error": "overloaded"}', "http_5xx"),
        (401, "application/json", b'{"error": "bad token"}', "http_4xx"),
    ],
)
def test_bad_answers_are_named(status: int, ctype: str, body: bytes, kind: str) -> None:
    from edgeslm.cloud.client import AnswerError

    with pytest.raises(AnswerError) as e:
        parse_classification(status, ctype, body, LABELS)
    assert e.value.kind == kind


def test_label_mapping() -> None:
    assert (
        parse_classification(
            200, "application/json", b'[{"label": "LABEL_1", "score": 0.7}, {"label": "LABEL_0", "score": 0.3}]', LABELS
        )[0]
        == "positive"
    )
    assert parse_classification(200, "", b'[[{"label": "NEGATIVE", "score": 0.6}]]', LABELS)[0] == "negative"
