"""One cloud call, timed, with the bytes counted at the socket, and the answer checked before it is believed.

Written on the standard library's ``http.client`` (not httpx) because we need the socket itself: its kernel
counters (Linux ``TCP_INFO``: ``tcpi_bytes_sent`` / ``tcpi_bytes_received``) count every byte the radio would carry
above TCP, TLS records and handshakes included, which no payload-length estimate does. ``fresh=True`` opens a new
connection per call (cold: TCP + TLS handshakes paid each time); ``fresh=False`` keeps one alive (warm).

Every failure becomes a ``Call`` with ``error_kind`` (refused, timeout, disconnected, tls, http_4xx, http_5xx, html,
malformed, labels) and a one-line message; nothing here raises for a bad answer, so ``compare`` can count them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = ["AnswerError", "Call", "CloudClient", "describe_failure", "parse_classification", "socket_bytes"]

# struct tcp_info offsets (linux/tcp.h): u64 tcpi_bytes_received at 128 (Linux 4.1+), u64 tcpi_bytes_sent at 200
# and tcpi_bytes_retrans at 208 (4.19+); tcpi_bytes_acked at 120 is the fallback for older kernels.
_TCP_INFO_LEN = 232


def socket_bytes(sock: socket.socket) -> tuple[int, int] | None:
    """(bytes sent, bytes received) above TCP on this socket so far, from the kernel; None where unsupported."""
    if not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(info) >= 216:
        sent, retrans = struct.unpack_from("<QQ", info, 200)
        return sent - retrans, struct.unpack_from("<Q", info, 128)[0]
    if len(info) >= 136:
        acked, received = struct.unpack_from("<QQ", info, 120)
        return acked, received
    return None


@dataclass(frozen=True)
class Call:
    ok: bool
    seconds: float  # what the user waits: connect (cold) + request + full answer
    bytes_sent: int | None  # counted at the socket; None where the kernel gives no counters
    bytes_received: int | None
    label: str | None = None
    scores: dict[str, float] | None = None
    status: int | None = None
    error_kind: str | None = None
    error: str | None = None
    server_ms: float | None = None  # the server's own time, from a Server-Timing header where it sends one


class AnswerError(Exception):
    """The cloud answered, but not with a usable text-classification answer (``kind`` says how)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _map_labels(got: list[str], labels: tuple[str, ...] | None) -> dict[str, str]:
    """Map the cloud's label names onto ours: exact, then case-insensitive, then ``LABEL_<i>`` (HF's default)."""
    if labels is None:
        return {g: g for g in got}
    lower = {label.lower(): label for label in labels}
    out = {}
    for g in got:
        m = re.fullmatch(r"LABEL_(\d+)", g)
        if g in labels:
            out[g] = g
        elif g.lower() in lower:
            out[g] = lower[g.lower()]
        elif m and int(m.group(1)) < len(labels):
            out[g] = labels[int(m.group(1))]
        else:
            raise AnswerError(
                "labels",
                f"the cloud answered label {g!r}, which the bundle does not have ({', '.join(labels)}); "
                "the two models were trained on different label sets",
            )
    return out


def parse_classification(
    status: int, content_type: str, body: bytes, labels: tuple[str, ...] | None
) -> tuple[str, dict[str, float]]:
    """The top label and every score from a Hugging Face text-classification answer; AnswerError otherwise."""
    head = body[:200].lstrip().lower()
    if "html" in content_type or head.startswith((b"<!doctype", b"<html", b"<")):
        raise AnswerError("html", f"the cloud answered an HTML page (HTTP {status}), not JSON: an error or login page")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise AnswerError("malformed", f"the cloud's answer (HTTP {status}) is not valid JSON ({e.msg})") from e
    except UnicodeDecodeError as e:
        raise AnswerError("malformed", f"the cloud's answer (HTTP {status}) is not UTF-8 JSON") from e
    if status >= 400:
        kind = "http_5xx" if status >= 500 else "http_4xx"
        detail = data.get("error") if isinstance(data, dict) else None
        raise AnswerError(kind, f"the cloud answered HTTP {status}: {detail or 'no error message'}")
    rows = data[0] if isinstance(data, list) and data and isinstance(data[0], list) else data
    if (
        not isinstance(rows, list)
        or not rows
        or not all(isinstance(r, dict) and isinstance(r.get("label"), str) for r in rows)
        or not all(isinstance(r.get("score"), int | float) for r in rows)
    ):
        raise AnswerError(
            "malformed", 'the cloud\'s answer is not text-classification shaped ([{"label": ..., "score": ...}])'
        )
    mapping = _map_labels([r["label"] for r in rows], labels)
    scores = {mapping[r["label"]]: float(r["score"]) for r in rows}
    return max(scores, key=scores.__getitem__), scores


class CloudClient:
    """Calls one text-classification URL; ``via`` routes the TCP connection through an emulating proxy."""

    def __init__(
        self,
        url: str,
        *,
        labels: tuple[str, ...] | None = None,
        via: tuple[str, int] | None = None,
        timeout: float = 10.0,
        cafile: Path | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"cloud URL `{url}` is not an http(s) URL; pass e.g. http://127.0.0.1:8800/models/x")
        self.url, self.labels, self.via, self.timeout = url, labels, via, timeout
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._path = parts.path or "/"
        self._context: ssl.SSLContext | None = None
        if self._tls:
            try:
                self._context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"--cacert `{cafile}` is not a readable PEM certificate ({e})") from e
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        self._conn: http.client.HTTPConnection | None = None
        self._mark: tuple[int, int] = (0, 0)
        self._dup: socket.socket | None = None

    @property
    def origin(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self._host}:{self._port}"

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._tls:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=self._context)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        if self.via is not None:
            via = self.via  # connect to the proxy; Host header and TLS SNI still name the real server
            conn._create_connection = lambda _addr, timeout, source=None: socket.create_connection(  # type: ignore[attr-defined]
                via, timeout, source
            )
        conn.connect()
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A second descriptor on the same socket, so its counters stay readable after http.client closes its own.
        self._dup = socket.socket(fileno=os.dup(conn.sock.fileno()))
        self._mark = (0, 0)
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._dup is not None:
            self._dup.close()
            self._dup = None

    def _counted(self) -> tuple[int | None, int | None]:
        now = socket_bytes(self._dup) if self._dup is not None else None
        if now is None:
            return None, None
        sent, received = now[0] - self._mark[0], now[1] - self._mark[1]
        self._mark = now
        return sent, received

    def request(
        self, method: str, path: str, body: bytes | None, *, fresh: bool
    ) -> tuple[int, dict[str, str], bytes, float]:
        """Raw call: (status, headers lower-cased, body, seconds). Raises OSError / http.client errors on failure."""
        t0 = time.perf_counter()
        if fresh or self._conn is None:
            self.close()
            self._conn = self._connect()
        try:
            self._conn.request(method, path, body=body, headers=self._headers)
            resp = self._conn.getresponse()
            data = resp.read()
        except BaseException:
            self.close()
            raise
        seconds = time.perf_counter() - t0
        if resp.will_close:
            self._conn.close()
            self._conn = None
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, seconds

    def classify(self, text: str, *, fresh: bool) -> Call:
        """Classify one text; every failure is returned as a Call with ``ok=False``, never raised."""
        payload = json.dumps({"inputs": text}).encode()
        t0 = time.perf_counter()
        try:
            status, headers, body, seconds = self.request("POST", self._path, payload, fresh=fresh)
        except (OSError, http.client.HTTPException) as e:
            kind, message = describe_failure(e, self.origin, self.timeout)
            sent, received = self._counted()
            self.close()
            return Call(False, time.perf_counter() - t0, sent, received, error_kind=kind, error=message)
        sent, received = self._counted()
        if fresh:
            self.close()
        try:
            label, scores = parse_classification(status, headers.get("content-type", ""), body, self.labels)
        except AnswerError as e:
            return Call(False, seconds, sent, received, status=status, error_kind=e.kind, error=str(e))
        timing = re.search(r"dur=([0-9.]+)", headers.get("server-timing", ""))
        return Call(
            True, seconds, sent, received, label, scores, status, server_ms=float(timing[1]) if timing else None
        )

    def info(self) -> dict[str, Any] | None:
        """The stand-in's ``GET /info`` (task, labels), or None for a provider that has no such endpoint."""
        with contextlib.suppress(OSError, http.client.HTTPException, json.JSONDecodeError, UnicodeDecodeError):
            status, _headers, body, _s = self.request("GET", "/info", None, fresh=True)
            self.close()
            data = json.loads(body)
            if status == 200 and isinstance(data, dict) and "task" in data:
                return data
        self.close()
        return None


def describe_failure(e: BaseException, origin: str, timeout: float) -> tuple[str, str]:
    if isinstance(e, ConnectionRefusedError):
        return "refused", f"{origin} refused the connection: the cloud is down or the URL's port is wrong"
    if isinstance(e, TimeoutError | socket.timeout):
        return "timeout", f"{origin} did not answer within {timeout:g} s"
    if isinstance(e, ssl.SSLError):
        return "tls", f"TLS with {origin} failed ({e.reason or e}); pass its certificate with --cacert"
    if isinstance(e, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError):
        return "disconnected", f"{origin} closed the connection without an answer"
    return "network", f"calling {origin} failed ({type(e).__name__}: {e})"
