"""Two ASGI layers in front of the app: count and time every request, and refuse oversize or non-JSON bodies.

Written by hand because Starlette and FastAPI have no request-size limit and uvicorn reads any body it is sent;
a limit must sit before the JSON parser, or a 10 MB text is parsed before it is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .metrics import Metrics, route_label
from .telemetry import Telemetry

__all__ = ["BodyLimit", "RequestMetrics", "json_error"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_DRAIN_LIMIT = 256 * 1024 * 1024  # read (and drop) up to this much of an oversize body so the client sees the 413


async def json_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Outermost layer: every answer, including the 413s and 415s below, is counted and timed.

    Errors also go to ``telemetry`` when it is on (successful answers are recorded by the handler, with labels).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, telemetry: Telemetry | None = None) -> None:
        self.app, self.metrics, self.telemetry = app, metrics, telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, start, status = route_label(scope["path"]), time.perf_counter(), 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - start
            self.metrics.latency.labels(route).observe(seconds)
            self.metrics.requests.labels(route, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(route, str(status)).inc()
                if self.telemetry is not None:
                    self.telemetry.record("", "", route, 1000 * seconds, [], [], status)


class BodyLimit:
    """413 for a body over ``max_bytes`` (declared or streamed), 415 for a POST that is not JSON."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and not kind.endswith("+json"):
            await self._drain(receive)
            await json_error(send, 415, f"content type `{kind or 'none'}` is not JSON; send application/json")
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive)
            await json_error(send, 413, self._too_big(int(declared)))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._drain(receive)
                await json_error(send, 413, self._too_big(size))
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_big(self, size: int) -> str:
        return (
            f"request body is {size} bytes, over this server's limit of {self.max_bytes}; "
            "send fewer or shorter texts per request, or start the server with a larger --max-body-bytes"
        )

    @staticmethod
    async def _drain(receive: Receive) -> None:
        """Read the rest of the body so the client, still sending, gets the error instead of a reset."""
        seen = 0
        while seen < _DRAIN_LIMIT:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return
