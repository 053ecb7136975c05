"""``edgeslm label``: the cloud as a black-box teacher. Unlabelled text in, a labelled JSONL dataset out.

Each text is sent once to a Hugging Face-shaped text-classification endpoint and its answer (top label and every
score) is kept in an on-disk SQLite cache keyed by (URL, text), committed after every answer: a re-run, or a run
resumed after Ctrl-C or a crash, never pays for the same text twice. Around each call:

- a rate limit (a minimum interval between request starts: one ``sleep``, so no library is needed);
- retries with exponential back-off and jitter on time-outs, refused or dropped connections, HTTP 429 (honouring
  ``Retry-After``) and 5xx; an answer of the wrong shape (HTML page, malformed JSON, another label set) stops the
  run at once, since retrying cannot fix it;
- a hard budget on HTTP requests, retries included, checked before every attempt, so it is never exceeded.

The output (``text``, ``label``, ``scores`` per line) is written atomically, in input order, and is what
``edgeslm build --data FILE.jsonl`` reads (``[distill] soft_targets = "scores"`` trains the student on the scores);
``edgeslm build --teacher-url`` runs this labeller itself (``edgeslm.cloud.teacher``). If the budget runs out
first, the labelled part is written and the result says how many texts are left (they cost nothing already paid
for when re-run with a larger budget).
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._fs import write_bytes
from ..errors import CloudError, ConfigError, DataError
from .client import AnswerError, CloudClient, describe_failure, parse_classification

__all__ = ["LabelConfig", "LabelResult", "label_texts", "read_unlabeled"]

Log = Callable[[str], None]
_RETRYABLE_STATUS = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class LabelConfig:
    budget: int  # hard cap on HTTP requests this run, retries included; cached texts cost nothing
    rate_per_s: float = 5.0  # at most this many request starts per second (a typical free-tier API limit order)
    retries: int = 4  # extra attempts after a retryable failure
    backoff_s: float = 0.5  # first back-off; doubles per retry, with up to 50% random jitter
    max_backoff_s: float = 30.0  # no single wait longer than this (also caps a server's Retry-After)
    timeout_s: float = 10.0  # per request
    labels: tuple[str, ...] | None = None  # the label set expected; None = the first answer's set
    text_column: str = "text"  # for .jsonl / .csv input
    seed: int = 0  # jitter draws


@dataclass(frozen=True)
class LabelResult:
    out: Path
    texts: int  # unique texts in the input
    labelled: int  # rows written
    from_cache: int  # answers that cost nothing this run
    requests: int  # HTTP requests made this run (retries included), never above the budget
    retries: int
    left: int  # texts not labelled because the budget ran out


def read_unlabeled(path: Path, text_column: str = "text") -> list[str]:
    """Texts from a .txt (one per line), .jsonl or .csv/.tsv file; blank lines and duplicates dropped."""
    if not path.is_file():
        raise DataError(f"unlabelled file `{path}` does not exist; pass a .txt, .jsonl or .csv file of texts")
    suffix = path.suffix.lower()
    try:
        raw = path.read_text(encoding="utf-8")
        if suffix == ".jsonl":
            texts = [json.loads(line).get(text_column) for line in raw.splitlines() if line.strip()]
        elif suffix in (".csv", ".tsv"):
            rows = list(csv.DictReader(raw.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
            texts = [r.get(text_column) for r in rows]
        else:
            texts = raw.splitlines()
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise DataError(f"`{path}` could not be read as UTF-8 {suffix or 'text'} ({e}); fix the file") from e
    if any(t is not None and not isinstance(t, str) for t in texts):
        raise DataError(f"`{path}` has a non-text `{text_column}` value; every row needs a string")
    clean = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
    if not clean:
        raise DataError(f"`{path}` has no texts (column `{text_column}` for .jsonl/.csv); nothing to label")
    return list(dict.fromkeys(clean))


class _Cache:
    """(URL, text) -> answer, in SQLite; each answer is committed as soon as it is paid for."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, url TEXT, text TEXT, label TEXT, "
                "scores TEXT, created REAL)"
            )
        except sqlite3.DatabaseError as e:
            raise DataError(f"label cache `{path}` is not a usable SQLite file ({e}); move it away") from e

    @staticmethod
    def key(url: str, text: str) -> str:
        return hashlib.sha256(f"{url}\0{text}".encode()).hexdigest()

    def get(self, url: str, text: str) -> tuple[str, dict[str, float]] | None:
        row = self._db.execute("SELECT label, scores FROM answers WHERE key = ?", (self.key(url, text),)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def put(self, url: str, text: str, label: str, scores: dict[str, float]) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                (self.key(url, text), url, text, label, json.dumps(scores), time.time()),
            )

    def close(self) -> None:
        self._db.close()


class _Caller:
    """One text -> (label, scores), with the rate limit, the retries and the budget."""

    def __init__(self, client: CloudClient, config: LabelConfig, log: Log) -> None:
        self.client, self.config, self.log = client, config, log
        self.requests = self.retries = 0
        self._next_start = 0.0
        self._rng = random.Random(config.seed)

    def _wait_turn(self) -> None:
        now = time.monotonic()
        if now < self._next_start:
            time.sleep(self._next_start - now)
        self._next_start = max(now, self._next_start) + 1 / self.config.rate_per_s

    def __call__(self, text: str) -> tuple[str, dict[str, float]] | None:
        """The answer, or None when the budget is spent. Raises CloudError when it cannot succeed."""
        cfg, delay, last = self.config, self.config.backoff_s, ""
        for attempt in range(cfg.retries + 1):
            if self.requests >= cfg.budget:
                return None
            self._wait_turn()
            self.requests += 1
            self.retries += attempt > 0
            retry_after = None
            try:
                status, headers, body, _s = self.client.request(
                    "POST", self.client._path, json.dumps({"inputs": text}).encode(), fresh=False
                )
                if status in _RETRYABLE_STATUS:
                    retry_after = headers.get("retry-after")
                    raise AnswerError("http_5xx" if status >= 500 else "http_429", f"the cloud answered HTTP {status}")
                return parse_classification(status, headers.get("content-type", ""), body, cfg.labels)
            except AnswerError as e:
                if e.kind in ("html", "malformed", "labels"):
                    raise CloudError(f"{e}; labelling stopped (retrying cannot fix this answer)") from e
                if e.kind == "http_4xx":
                    raise CloudError(f"{e}; check the cloud URL and credentials") from e
                last = str(e)
            except (OSError, http.client.HTTPException) as e:
                last = describe_failure(e, self.client.origin, cfg.timeout_s)[1]
            if attempt < cfg.retries:
                wait = delay * (1 + 0.5 * self._rng.random())
                if retry_after and retry_after.isdigit():
                    wait = max(wait, float(retry_after))
                wait = min(wait, cfg.max_backoff_s)
                self.log(f"[yellow]retry {attempt + 1}/{cfg.retries} in {wait:.1f} s: {last}[/yellow]")
                time.sleep(wait)
                delay *= 2
        raise CloudError(
            f"{last} (after {cfg.retries + 1} attempts); check the cloud URL, then re-run (answers so far are cached)"
        )


def label_texts(
    cloud_url: str,
    texts: list[str],
    out: Path,
    cache_path: Path,
    config: LabelConfig,
    *,
    cafile: Path | None = None,
    force: bool = False,
    log: Log | None = None,
) -> LabelResult:
    """Label ``texts`` through the cloud (cache first), write ``out`` as JSONL atomically, and say what it cost."""
    say: Log = log or (lambda _m: None)
    if config.budget < 0 or config.rate_per_s <= 0 or config.retries < 0:
        raise ConfigError("--budget and --retries must be >= 0 and --rate > 0")
    if out.exists() and not force:
        raise ConfigError(f"output `{out}` already exists; choose another path or pass --force to replace it")
    client = CloudClient(cloud_url, labels=config.labels, timeout=config.timeout_s, cafile=cafile)
    cache = _Cache(cache_path)
    try:
        answers = {t: a for t in texts if (a := cache.get(cloud_url, t)) is not None}
        from_cache = len(answers)
        todo = [t for t in texts if t not in answers]
        if todo and config.budget == 0:
            raise ConfigError(
                f"--budget 0 allows no cloud calls and {len(todo)} of {len(texts)} texts are not cached; raise --budget"
            )
        if todo:
            info = client.info()
            if info is not None and info.get("task") != "text-classification":
                raise CloudError(
                    f"task mismatch: the cloud model does {info.get('task')}, labelling needs text-classification"
                )
        call = _Caller(client, config, say)
        seen_sets: set[frozenset[str]] = {frozenset(a[1]) for a in answers.values()}
        for i, text in enumerate(todo, 1):
            answer = call(text)
            if answer is None:
                say(f"[yellow]budget of {config.budget} requests reached after {i - 1} new texts[/yellow]")
                break
            if config.labels is None:
                seen_sets.add(frozenset(answer[1]))
                if len(seen_sets) > 1:
                    raise CloudError(
                        f"the cloud answered with label set {sorted(answer[1])} after answering with another; "
                        "pass --labels to say which set is expected"
                    )
            cache.put(cloud_url, text, *answer)
            answers[text] = answer
            if i % 100 == 0:
                say(f"labelled {i}/{len(todo)} new texts ({call.requests} requests)")
    finally:
        client.close()
        cache.close()
    rows = [{"text": t, "label": answers[t][0], "scores": answers[t][1]} for t in texts if t in answers]
    if not rows:
        raise ConfigError("no text was labelled (the budget ran out first); raise --budget")
    write_bytes(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    return LabelResult(
        out,
        len(texts),
        len(rows),
        from_cache,
        call.requests if todo else 0,
        call.retries if todo else 0,
        len(texts) - len(rows),
    )
