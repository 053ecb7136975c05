"""`edgeslm label`: the cloud as a teacher, over real HTTP on 127.0.0.1, with scripted faults for the bad cases."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeslm.cli import app
from edgeslm.cloud.label import LabelConfig, label_texts, read_unlabeled
from edgeslm.cloud.proxy import blackhole, refused_port
from edgeslm.cloud.server import StandIn, load_model
from edgeslm.errors import CloudError, ConfigError, DataError

OK = (200, "application/json", b'[[{"label": "pos", "score": 0.8}, {"label": "neg", "score": 0.2}]]')
FAST = {"rate_per_s": 1000.0, "backoff_s": 0.01, "timeout_s": 2.0}  # keep the tests quick


class Scripted:
    """An HTTP server that answers POSTs from a script (the last entry repeats) and counts them."""

    def __init__(self, script: list[tuple[int, str, bytes]], info: dict | None = None) -> None:
        self.script, self.requests, self.info = list(script), 0, info
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, ctype: str, body: bytes, extra: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if outer.info is None:
                    self._send(404, "text/plain", b"not found")
                else:
                    self._send(200, "application/json", json.dumps(outer.info).encode())

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests += 1
                status, ctype, body = outer.script[min(outer.requests, len(outer.script)) - 1]
                self._send(status, ctype, body, {"Retry-After": "0"} if status == 429 else None)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/models/teacher"

    def __enter__(self) -> Scripted:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def texts() -> list[str]:
    return ["a gorgeous film", "a dull mess", "fine", "not bad at all", "the worst"]


@pytest.fixture(scope="module")
def teacher_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from conftest import write_tiny_bundle

    bundle = write_tiny_bundle(tmp_path_factory.mktemp("teacher") / "b", (-1.0, 1.0))
    with StandIn(load_model(bundle)) as server:
        yield server.url + "/models/teacher"


def test_labels_through_the_stand_in_and_never_pays_twice(teacher_url: str, texts: list[str], tmp_path: Path) -> None:
    out, cache = tmp_path / "labelled.jsonl", tmp_path / "cache.sqlite"
    r = label_texts(teacher_url, texts, out, cache, LabelConfig(budget=100, **FAST))
    assert (r.labelled, r.requests, r.from_cache, r.left) == (5, 5, 0, 0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["text"] for row in rows] == texts
    assert all(row["label"] == "pos" and set(row["scores"]) == {"neg", "pos"} for row in rows)
    again = label_texts(teacher_url, [*texts, "one new text"], tmp_path / "b.jsonl", cache, LabelConfig(budget=1))
    assert (again.labelled, again.requests, again.from_cache) == (6, 1, 5)  # only the new text costs a call
    # What `edgeslm build --data FILE.jsonl` reads: text and label columns (scores ride along).
    from edgeslm.data import read_rows
    from edgeslm.recipe import DataConfig

    assert read_rows(out, DataConfig(name=str(out)))[0] == ("a gorgeous film", "pos")


def test_budget_is_a_hard_cap_and_resumes_for_free(teacher_url: str, texts: list[str], tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite"
    r = label_texts(teacher_url, texts, tmp_path / "a.jsonl", cache, LabelConfig(budget=2, **FAST))
    assert (r.requests, r.labelled, r.left) == (2, 2, 3)
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 2
    r = label_texts(teacher_url, texts, tmp_path / "b.jsonl", cache, LabelConfig(budget=10, **FAST))
    assert (r.requests, r.from_cache, r.labelled) == (3, 2, 5)
    with pytest.raises(ConfigError, match="--budget 0 allows no cloud calls and 1 of 6"):
        label_texts(teacher_url, [*texts, "new"], tmp_path / "c.jsonl", cache, LabelConfig(budget=0))
    assert not (tmp_path / "c.jsonl").exists()
    done = label_texts(teacher_url, texts, tmp_path / "d.jsonl", cache, LabelConfig(budget=0))
    assert (done.requests, done.labelled) == (0, 5)  # everything cached: budget 0 is enough


def test_retries_with_backoff_count_against_the_budget(texts: list[str], tmp_path: Path) -> None:
    script = [(500, "application/json", b'{"error": "busy"}'), (429, "application/json", b"{}"), OK]
    with Scripted(script) as cloud:
        r = label_texts(cloud.url, texts[:2], tmp_path / "o.jsonl", tmp_path / "c", LabelConfig(budget=4, **FAST))
    assert (r.labelled, r.requests, r.retries) == (2, 4, 2) and cloud.requests == 4
    with Scripted([(503, "application/json", b"{}")]) as cloud:
        cfg = LabelConfig(budget=50, retries=2, **FAST)
        with pytest.raises(CloudError, match="HTTP 503 \\(after 3 attempts\\)"):
            label_texts(cloud.url, texts, tmp_path / "p.jsonl", tmp_path / "c2", cfg)
        assert cloud.requests == 3 and not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        ((200, "text/html", b"<!DOCTYPE html><html>Sign in</html>"), CloudError, "HTML page"),
        ((200, "application/json", b'[{"label": "pos", "sc'), CloudError, "not valid JSON"),
        ((200, "application/json", b'{"embedding": [0.1]}'), CloudError, "not text-classification shaped"),
        ((401, "application/json", b'{"error": "invalid token"}'), CloudError, "HTTP 401: invalid token"),
    ],
)
def test_bad_answers_stop_at_once(
    answer: tuple[int, str, bytes], error: type[Exception], message: str, texts: list[str], tmp_path: Path
) -> None:
    with Scripted([answer]) as cloud:
        with pytest.raises(error, match=message):
            label_texts(cloud.url, texts, tmp_path / "o.jsonl", tmp_path / "c", LabelConfig(budget=50, **FAST))
        assert cloud.requests == 1  # retrying cannot fix these: no budget wasted
    assert not (tmp_path / "o.jsonl").exists()


def test_label_set_checks(teacher_url: str, texts: list[str], tmp_path: Path) -> None:
    with pytest.raises(CloudError, match="different label sets"):
        label_texts(
            teacher_url, texts, tmp_path / "o.jsonl", tmp_path / "c",
            LabelConfig(budget=9, labels=("negative", "positive"), **FAST),
        )  # fmt: skip
    other = (200, "application/json", b'[[{"label": "joy", "score": 0.9}, {"label": "anger", "score": 0.1}]]')
    with Scripted([OK, other]) as cloud, pytest.raises(CloudError, match="answered with label set"):
        label_texts(cloud.url, texts, tmp_path / "p.jsonl", tmp_path / "c2", LabelConfig(budget=9, **FAST))
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "p.jsonl").exists()


def test_task_mismatch_refused_and_timeout(texts: list[str], tmp_path: Path) -> None:
    with Scripted([OK], info={"task": "feature-extraction", "labels": []}) as cloud:
        with pytest.raises(CloudError, match="task mismatch"):
            label_texts(cloud.url, texts, tmp_path / "o.jsonl", tmp_path / "c", LabelConfig(budget=9, **FAST))
        assert cloud.requests == 0
    down = f"http://127.0.0.1:{refused_port()}/m"
    with pytest.raises(CloudError, match="refused the connection.*after 2 attempts"):
        label_texts(down, texts, tmp_path / "o.jsonl", tmp_path / "c", LabelConfig(budget=9, retries=1, **FAST))
    with blackhole() as port:
        cfg = LabelConfig(budget=9, retries=1, **{**FAST, "timeout_s": 0.3})
        with pytest.raises(CloudError, match="did not answer within 0.3 s"):
            label_texts(f"http://127.0.0.1:{port}/m", texts, tmp_path / "o.jsonl", tmp_path / "c", cfg)
    assert not (tmp_path / "o.jsonl").exists()


def test_rate_limit_spaces_requests(teacher_url: str, texts: list[str], tmp_path: Path) -> None:
    import time

    t = time.monotonic()
    label_texts(teacher_url, texts, tmp_path / "o.jsonl", tmp_path / "c", LabelConfig(budget=9, rate_per_s=20))
    assert time.monotonic() - t >= 4 / 20  # five request starts at 20/s span at least 0.2 s


def test_read_unlabeled_formats(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n\ntwo\none\n")
    assert read_unlabeled(tmp_path / "a.txt") == ["one", "two"]
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n')
    assert read_unlabeled(tmp_path / "b.jsonl") == ["x", "y"]
    (tmp_path / "c.csv").write_text("sentence\nhello\n")
    assert read_unlabeled(tmp_path / "c.csv", "sentence") == ["hello"]
    with pytest.raises(DataError, match="no texts"):
        read_unlabeled(tmp_path / "c.csv")
    with pytest.raises(DataError, match="does not exist"):
        read_unlabeled(tmp_path / "missing.txt")


def test_cli_label(teacher_url: str, tmp_path: Path) -> None:
    (tmp_path / "u.txt").write_text("good\nbad\n")
    runner = CliRunner()
    args = ["label", "--cloud", teacher_url, "--unlabeled", str(tmp_path / "u.txt"), "--out", str(tmp_path / "o.jsonl")]
    r = runner.invoke(app, [*args, "--budget", "5"])
    assert r.exit_code == 0, r.output
    assert "2/2 texts labelled, 0 from the cache, 2 requests" in r.output
    r = runner.invoke(app, [*args, "--budget", "0", "--force"])
    assert r.exit_code == 0 and "2 from the cache, 0 requests" in r.output
    r = runner.invoke(app, [*args, "--budget", "-1", "--force"])
    assert r.exit_code == 1 and "error:" in r.output and "Traceback" not in r.output
