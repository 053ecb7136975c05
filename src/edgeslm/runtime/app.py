"""The HTTP API: the cloud's request and response shapes, so an app switches by changing its base URL.

    POST /                  Hugging Face inference shape, first bundle: {"inputs": str | [str], "parameters": {...}}
    POST /models/{name}     the same, for the bundle served as `name`
    POST /v1/embeddings     OpenAI shape: {"input": str | [str], "model": name}
    POST /v1/chat/completions  OpenAI shape, for text-generation bundles; "stream": true answers server-sent events
    GET  /health            served bundles, their versions and execution providers
    GET  /metrics           Prometheus text
    GET  /openapi.json      this API, generated from the request models (limits included)

Handlers are plain ``def``: FastAPI runs them in its thread pool, and onnxruntime releases the GIL while it runs,
so concurrent requests use every core. Every error is JSON ``{"error": "..."}`` with one line that says the fix.
"""

# No `from __future__ import annotations`: FastAPI must see the request models built inside create_app.
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..bundle import RUNTIME_VERSION
from ..errors import ConfigError
from .chat import completion, completion_chunks, parse_chat_request
from .generate import Generator
from .metrics import Metrics
from .middleware import BodyLimit, RequestMetrics
from .predictor import Predictor
from .registry import Loaded, ModelRegistry
from .routing import Router
from .telemetry import Telemetry

__all__ = ["Limits", "create_app"]


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one request may ask for; the OpenAPI document states them, and the server answers 413/422 beyond."""

    max_body_bytes: int = 1_000_000  # 1 MB: 64 texts of 2,000 characters with room for JSON escapes
    max_texts: int = 64  # texts per request; one session run (Predictor.CHUNK) answers them all
    max_text_chars: int = 10_000  # characters per text; max_length tokens are far fewer, the rest is cut anyway
    max_generations: int = 2  # chats generating at once per bundle (each holds a KV cache); more get 429

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_texts", "max_text_chars", "max_generations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {getattr(self, name)}")


class LabelScore(BaseModel):
    label: str
    score: float


class ErrorBody(BaseModel):
    error: str


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float]


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: dict[str, int]


def _request_models(limits: Limits) -> tuple[type[BaseModel], type[BaseModel]]:
    """Request bodies with this server's limits inside, so /openapi.json tells a client (and a fuzzer) the rules."""
    text = Annotated[str, Field(max_length=limits.max_text_chars)]
    texts = Annotated[list[text], Field(min_length=1, max_length=limits.max_texts)]

    class Parameters(BaseModel):
        model_config = ConfigDict(extra="allow")  # HF clients send options this server has no use for
        top_k: int | None = Field(default=None, ge=1, description="Return only the k best labels per text.")

    class InferenceRequest(BaseModel):
        inputs: text | texts = Field(description="One text, or a list of texts.")
        parameters: Parameters | None = None
        options: dict[str, Any] | None = None

    class EmbeddingsRequest(BaseModel):
        input: text | texts = Field(description="One text, or a list of texts.")
        model: str | None = Field(default=None, description="A served embedding bundle; the first one if absent.")
        encoding_format: Literal["float"] = "float"

    return InferenceRequest, EmbeddingsRequest


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat request, for the OpenAPI document; ``chat.parse_chat_request`` checks the rest (n, stop...)."""

    model_config = ConfigDict(extra="allow")  # OpenAI clients send options this server has no use for
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = Field(default=None, description="A served text-generation bundle; the first if absent.")
    max_tokens: int | None = Field(default=None, ge=1, description="New tokens at most [default: 128].")
    temperature: float | None = Field(default=None, ge=0, le=2, description="0 = greedy [default: 1].")
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = Field(default=False, description="Answer server-sent events, one chunk per text piece.")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    """One line from pydantic's error list; the offending input is never echoed (it may be 10,000 texts)."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 'the body is not valid JSON; send {"inputs": "some text"} with content type application/json'
    limits = [e for e in errors if e.get("type") in _LIMIT_ERRORS]
    parts: list[str] = []
    for err in limits or errors:
        # drop the union-branch names pydantic puts in `loc` ("constrained-str", "list[constrained-str]")
        loc = [str(p) for p in err.get("loc", ()) if p != "body" and "constrained" not in str(p)]
        part = f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}"
        if part not in parts:
            parts.append(part)
    if not limits and all(e.get("type") in ("string_type", "list_type") for e in errors):
        parts = [f"{'.'.join(str(p) for p in errors[0]['loc'][1:2])} must be a string or a list of strings"]
    return "invalid request: " + "; ".join(parts[:3]) + " (see /openapi.json for the request shape and limits)"


_LIMIT_ERRORS = ("too_long", "too_short", "string_too_long")


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why}
    for code, why in (
        (400, "The bundle cannot answer this kind of request"),
        (404, "No bundle by that name"),
        (413, "Body over the size limit"),
        (415, "Body is not JSON"),
        (422, "Body does not match the request shape or limits"),
    )
}


async def _events(lines: Iterator[str], done: Callable[[bool], None]) -> AsyncIterator[str]:
    """Each SSE line computed in the thread pool (decoding must not block the event loop). When the client goes
    away, the response task is cancelled here, and ``finally`` closes the generator: decoding stops and its KV cache
    and generation slot are freed at once, not when the garbage collector gets to them. ``done(finished)`` says
    whether the stream ran to its end."""
    finished = False
    try:
        while (line := await run_in_threadpool(next, lines, None)) is not None:
            yield line
        finished = True
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()
        done(finished)


def create_app(
    registry: ModelRegistry,
    limits: Limits | None = None,
    *,
    metrics: Metrics | None = None,
    telemetry: Telemetry | None = None,
    router: Router | None = None,
) -> FastAPI:
    """The ASGI app over ``registry``. Telemetry and cloud routing are optional and off unless passed."""
    limits = limits or Limits()
    metrics = metrics or Metrics()
    for m in registry.all():
        metrics.set_model(m.name, m.task, m.version, m.predictor.execution.provider)
    InferenceRequest, EmbeddingsRequest = _request_models(limits)
    app = FastAPI(
        title="edgeslm local inference",
        version=RUNTIME_VERSION,
        description="On-device models behind the cloud's API shapes (Hugging Face inference, OpenAI embeddings).",
    )
    app.state.registry, app.state.metrics = registry, metrics

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    def answer(loaded: Loaded, body: Any, endpoint: str) -> Response:
        if isinstance(loaded.predictor, Generator):
            return _error(400, f"model `{loaded.name}` is a text-generation bundle; use POST /v1/chat/completions")
        start = time.perf_counter()
        single = isinstance(body.inputs, str)
        texts: list[str] = [body.inputs] if single else list(body.inputs)
        headers: dict[str, str] = {"X-Edgeslm-Model-Version": loaded.version}
        if loaded.task == "embedding":
            vectors = loaded.predictor.embed(texts).tolist()
            out: Any = vectors[0] if single else vectors  # HF feature-extraction shape
            paths = ["device"] * len(texts)
            labels: list[tuple[str, float]] = []
        else:
            preds = loaded.predictor.predict(texts)
            if router is not None:
                out, paths = router.route(loaded.predictor, texts, preds)
            else:
                out = [Router.device_answer(p) for p in preds]
                paths = ["device"] * len(texts)
            top_k = body.parameters.top_k if body.parameters else None
            out = [answer[:top_k] for answer in out]
            labels = [(a[0]["label"], a[0]["score"]) for a in out]
            headers["X-Edgeslm-Route"] = paths[0] if len(set(paths)) == 1 else "mixed"
        metrics.texts.labels(loaded.name).inc(len(texts))
        for path in set(paths):
            metrics.routed.labels(loaded.name, path).inc(paths.count(path))
        if telemetry is not None:
            ms = 1000 * (time.perf_counter() - start)
            telemetry.record(loaded.name, loaded.version, endpoint, ms, labels, paths)
        return JSONResponse(out, headers=headers)

    def lookup(name: str) -> Loaded | JSONResponse:
        loaded = registry.get(name)
        if loaded is None:
            return _error(404, f"no model named `{name[:100]}` is served here; served: {', '.join(registry.names())}")
        return loaded

    def pick(name: str | None, task: str, endpoint: str) -> Loaded | JSONResponse:
        """The bundle named ``name``, or the first one of ``task``; an error answer when there is none."""
        if name is None:
            first = next((m for m in registry.all() if m.task == task), None)
            return first or _error(400, f"no {task} bundle is served; start the server with one for {endpoint}")
        loaded = lookup(name)
        if isinstance(loaded, Loaded) and loaded.task != task:
            return _error(400, f"model `{loaded.name}` is a {loaded.task} bundle; {endpoint} needs a {task} one")
        return loaded

    @app.post("/", responses=_ERRORS, summary="Run the first served bundle (Hugging Face inference shape)")
    def infer_default(body: InferenceRequest) -> Response:  # type: ignore[valid-type]
        return answer(registry.default, body, "/")

    @app.post("/models/{name}", responses=_ERRORS, summary="Run a bundle by name (Hugging Face inference shape)")
    def infer(name: str, body: InferenceRequest) -> Response:  # type: ignore[valid-type]
        loaded = lookup(name)
        return loaded if isinstance(loaded, JSONResponse) else answer(loaded, body, "/models/{name}")

    @app.post("/v1/embeddings", responses=_ERRORS, response_model=EmbeddingsResponse, summary="OpenAI embeddings")
    def embeddings(request: EmbeddingsRequest) -> Response:  # type: ignore[valid-type]
        body: Any = request
        loaded = pick(body.model, "embedding", "/v1/embeddings")
        if isinstance(loaded, JSONResponse):
            return loaded
        predictor = loaded.predictor
        assert isinstance(predictor, Predictor)  # pick checked the task
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        vectors = predictor.embed(texts)
        tokens = sum(predictor.token_counts(texts))
        metrics.texts.labels(loaded.name).inc(len(texts))
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors.tolist())]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": loaded.name, "usage": usage})

    slots: dict[str, threading.BoundedSemaphore] = {}  # per bundle name: a swap keeps the count

    @app.post("/v1/chat/completions", responses=_ERRORS | {429: _ERRORS[400] | {"description": "Too many chats"}})
    def chat(chat_request: ChatCompletionRequest) -> Response:
        """OpenAI chat completions from a text-generation bundle; ``"stream": true`` answers server-sent events."""
        body = chat_request.model_dump(exclude_none=True)
        loaded = pick(chat_request.model, "text-generation", "/v1/chat/completions")
        if isinstance(loaded, JSONResponse):
            return loaded
        generator = loaded.predictor
        assert isinstance(generator, Generator)  # pick checked the task
        try:
            request = parse_chat_request(body)
        except ConfigError as e:
            return _error(400, str(e))
        slot = slots.setdefault(loaded.name, threading.BoundedSemaphore(limits.max_generations))
        if not slot.acquire(blocking=False):
            message = f"{limits.max_generations} chats are generating on `{loaded.name}`; retry in a moment"
            return JSONResponse({"error": message}, status_code=429, headers={"Retry-After": "1"})
        metrics.texts.labels(loaded.name).inc()
        headers = {"X-Edgeslm-Model-Version": loaded.version}
        start = time.perf_counter()

        def record(status: int) -> None:  # one request row, no text and no labels: a chat has neither to keep
            if telemetry is not None:
                ms = 1000 * (time.perf_counter() - start)
                telemetry.record(loaded.name, loaded.version, "/v1/chat/completions", ms, [], ["device"], status)

        if not request.stream:
            try:
                answer = JSONResponse(completion(generator, request, loaded.name), headers=headers)
            except ConfigError as e:  # e.g. the prompt and max_tokens do not fit the context
                return _error(400, str(e))
            finally:
                slot.release()
            record(200)
            return answer
        try:
            lines = completion_chunks(generator, request, loaded.name)  # checks the context before the first line
        except BaseException as e:
            slot.release()
            if isinstance(e, ConfigError):
                return _error(400, str(e))
            raise

        def done(finished: bool) -> None:
            slot.release()
            record(200 if finished else 499)  # 499: the client closed the stream first (nginx's code for it)

        return StreamingResponse(_events(lines, done), media_type="text/event-stream", headers=headers)

    @app.get("/health", summary="Served bundles, versions and execution providers")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "runtime_version": RUNTIME_VERSION,
            "models": {m.name: _describe(m) for m in registry.all()},
        }

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(
        RequestMetrics, metrics=metrics, telemetry=telemetry
    )  # added last = outermost: counts the 413s and 415s too
    return app


def _describe(m: Loaded) -> dict[str, Any]:
    ex = m.predictor.execution
    return {
        "task": m.task,
        "version": m.version,
        "path": str(m.path),
        "labels": [] if isinstance(m.predictor, Generator) else list(m.predictor.labels),
        "max_length": m.predictor.manifest.max_length,
        "loaded_at": m.loaded_at,
        "provider": ex.provider,
        "fallbacks": [{"provider": p, "reason": r} for p, r in ex.fallbacks],
    }
