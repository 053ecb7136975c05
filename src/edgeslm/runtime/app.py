"""The HTTP API: the cloud's request and response shapes, so an app switches by changing its base URL.

    POST /                  Hugging Face inference shape, first bundle: {"inputs": str | [str], "parameters": {...}}
    POST /models/{name}     the same, for the bundle served as `name`
    POST /v1/embeddings     OpenAI shape: {"input": str | [str], "model": name}
    GET  /health            served bundles, their versions and execution providers
    GET  /metrics           Prometheus text
    GET  /openapi.json      this API, generated from the request models (limits included)

Handlers are plain ``def``: FastAPI runs them in its thread pool, and onnxruntime releases the GIL while it runs,
so concurrent requests use every core. Every error is JSON ``{"error": "..."}`` with one line that says the fix.
"""

# No `from __future__ import annotations`: FastAPI must see the request models built inside create_app.
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..bundle import RUNTIME_VERSION
from ..errors import ConfigError
from .metrics import Metrics
from .middleware import BodyLimit, RequestMetrics
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

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_texts", "max_text_chars"):
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
        if body.model is None:
            loaded = next((m for m in registry.all() if m.task == "embedding"), None)
            if loaded is None:
                return _error(400, "no embedding bundle is served; start the server with one (task `embedding`)")
        else:
            found = lookup(body.model)
            if isinstance(found, JSONResponse):
                return found
            loaded = found
        if loaded.task != "embedding":
            return _error(
                400, f"model `{loaded.name}` is a {loaded.task} bundle; /v1/embeddings needs an embedding one"
            )
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        vectors = loaded.predictor.embed(texts)
        tokens = sum(loaded.predictor.token_counts(texts))
        metrics.texts.labels(loaded.name).inc(len(texts))
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors.tolist())]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": loaded.name, "usage": usage})

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
        "labels": list(m.predictor.labels),
        "max_length": m.predictor.manifest.max_length,
        "loaded_at": m.loaded_at,
        "provider": ex.provider,
        "fallbacks": [{"provider": p, "reason": r} for p, r in ex.fallbacks],
    }
