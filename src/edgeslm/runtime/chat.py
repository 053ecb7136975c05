"""OpenAI-shaped chat completions over a ``Generator``: the request checked, the answer or its SSE stream built.

Framework-free on purpose (dicts in, dicts or ``data:`` lines out), so the server mounts it on
``/v1/chat/completions`` with one route and tests drive it without HTTP. Defaults follow OpenAI's API reference
(temperature 1, top_p 1, at most 4 stop strings, n = 1), so an OpenAI client behaves as it would against the cloud.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .generate import Generator, Sampling, Stream

__all__ = ["ChatRequest", "completion", "completion_chunks", "parse_chat_request"]

_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict[str, str], ...]
    sampling: Sampling
    stream: bool


def parse_chat_request(body: Mapping[str, Any]) -> ChatRequest:
    """Check an OpenAI chat request body; raise ConfigError naming the first bad field (the server answers 400)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ConfigError("`messages` must be a non-empty list of {role, content} objects")
    checked = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise ConfigError(f"messages[{i}] needs a role ({', '.join(_ROLES)}) and a string content")
        checked.append({"role": m["role"], "content": m["content"]})
    if not any(m["content"].strip() for m in checked if m["role"] == "user"):
        raise ConfigError("the messages have no non-empty user turn; nothing to answer")
    if body.get("n", 1) != 1:
        raise ConfigError("only n = 1 is supported: one completion per request")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise ConfigError("`stop` must be a string or a list of at most 4 strings")
    number = (int, float)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 128))
    temperature, top_p = body.get("temperature", 1.0), body.get("top_p", 1.0)
    if not isinstance(max_tokens, int) or not isinstance(temperature, number) or not isinstance(top_p, number):
        raise ConfigError("`max_tokens` must be an integer, `temperature` and `top_p` numbers")
    seed = body.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ConfigError("`seed` must be an integer")
    sampling = Sampling(max_tokens, float(temperature), 50, float(top_p), seed, tuple(stop))
    return ChatRequest(tuple(checked), sampling, bool(body.get("stream", False)))


def _start(generator: Generator, request: ChatRequest) -> Stream:
    return generator.stream_text(generator.render_chat(request.messages), request.sampling)


def _usage(stream: Stream) -> dict[str, int]:
    r = stream.result
    prompt, new = (r.prompt_tokens, r.new_tokens) if r else (0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": new, "total_tokens": prompt + new}


def completion(generator: Generator, request: ChatRequest, model: str) -> dict[str, Any]:
    """The whole answer as one ``chat.completion`` object."""
    stream = _start(generator, request)
    text = "".join(stream)
    reason = stream.result.finish_reason if stream.result else "stop"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
        "usage": _usage(stream),
    }


def completion_chunks(generator: Generator, request: ChatRequest, model: str) -> Iterator[str]:
    """Server-sent events: a role chunk, one chunk per text piece, a finish chunk, ``data: [DONE]``.

    The stream is started (and the request validated against the context) before the first line, so a bad request
    still gets a plain 400. Closing this iterator early (a client went away) ends generation and frees the cache.
    """
    stream = _start(generator, request)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time())}

    def event(delta: dict[str, str], reason: str | None = None, **more: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
        return f"data: {json.dumps({**head, 'model': model, 'choices': [choice], **more})}\n\n"

    def lines() -> Iterator[str]:
        try:
            yield event({"role": "assistant", "content": ""})
            for piece in stream:
                yield event({"content": piece})
            reason = stream.result.finish_reason if stream.result else "stop"
            yield event({}, reason, usage=_usage(stream))
            yield "data: [DONE]\n\n"
        finally:
            stream.close()

    return lines()
