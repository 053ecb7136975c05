"""``edgeslm cloud serve``: a stand-in for a hosted inference API, on 127.0.0.1, in real providers' shapes.

- Hugging Face Inference API, text classification: ``POST /models/<id>`` (or ``POST /``) with
  ``{"inputs": "text" | ["text", ...], "parameters": {"top_k": n}}`` -> ``[[{"label": ..., "score": ...}, ...]]``
  (one list per input, best first); errors as ``{"error": "..."}`` with a 4xx status, as that API does.
- OpenAI ``POST /v1/embeddings`` with ``{"input": ..., "model": ...}`` -> ``{"object": "list", "data": [...],
  "usage": {...}}``: the teacher's mean-pooled sentence vector (a checkpoint only: a bundle has no embedding output).
- ``GET /info`` (task, labels, model) and ``GET /health``: stand-in extras that let ``compare`` refuse a task
  mismatch up front; a real provider lacks them and ``compare`` then checks the answers' labels instead.

It serves a teacher checkpoint folder (torch, FP32, via ``edgeslm.models.load_checkpoint``) or any bundle
(onnxruntime). One request runs at a time, like a single-replica endpoint. Behind ``--network`` it sits behind a
``DelayProxy``; with ``--tls`` uvicorn terminates TLS with a locally generated self-signed certificate.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ModelError, ServeError

__all__ = ["CloudModel", "StandIn", "load_model", "make_app"]

MAX_INPUTS = 64  # texts per request; a hosted API caps batches too
MAX_CHARS = 20_000  # characters per text


class CloudModel(Protocol):
    name: str
    task: str
    labels: tuple[str, ...]

    def probs(self, texts: list[str]) -> list[list[float]]: ...
    def embed(self, texts: list[str]) -> list[list[float]] | None: ...
    def count_tokens(self, texts: list[str]) -> int: ...


@dataclass
class _TorchModel:
    """A teacher checkpoint in full precision, run by torch."""

    path: Path
    threads: int
    name: str = ""
    task: str = "text-classification"
    labels: tuple[str, ...] = ()
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        import torch

        from ..models import load_checkpoint
        from ..runtime.predictor import load_tokenizer

        torch.set_num_threads(self.threads)
        self._ckpt = load_checkpoint(self.path)
        self._tok = load_tokenizer((self.path / "tokenizer.json").read_text(encoding="utf-8"), self._ckpt.max_length)
        self.labels = self._ckpt.labels
        self.name = self.name or self.path.name

    def _feed(self, texts: list[str]) -> dict[str, Any]:
        import torch

        from ..runtime.predictor import encode

        return {k: torch.from_numpy(v) for k, v in encode(self._tok, texts).items()}

    def probs(self, texts: list[str]) -> list[list[float]]:
        import torch

        with self._lock, torch.no_grad():
            logits = self._ckpt.model(**self._feed(texts))
            return [[float(x) for x in row] for row in torch.softmax(logits, dim=-1)]

    def embed(self, texts: list[str]) -> list[list[float]] | None:
        import torch

        with self._lock, torch.no_grad():
            pooled, _ = self._ckpt.model.encode(**self._feed(texts))
            return [[float(x) for x in row] for row in pooled]

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(e.ids) for e in self._tok.encode_batch(texts))


@dataclass
class _BundleModel:
    """Any bundle, run by the edgeslm runtime (onnxruntime)."""

    path: Path
    threads: int
    name: str = ""
    task: str = ""
    labels: tuple[str, ...] = ()
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        from ..runtime import Predictor

        self._predictor = Predictor(self.path, threads=self.threads)
        self.labels = tuple(self._predictor.labels)
        self.task = self._predictor.manifest.task
        self.name = self.name or self.path.name

    def probs(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            preds = self._predictor.predict(texts)
        return [[p.scores[label] for label in self.labels] for p in preds]

    def embed(self, texts: list[str]) -> list[list[float]] | None:
        return None  # a classification bundle's graph ends in logits

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(e.ids) for e in self._predictor._tokenizer.encode_batch(texts))


def load_model(path: Path, *, threads: int = 1) -> CloudModel:
    """A bundle folder (manifest.json) or a teacher checkpoint folder (edgeslm.json + model.safetensors)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return _BundleModel(path, threads)
    if (path / "edgeslm.json").is_file() and (path / "model.safetensors").is_file():
        return _TorchModel(path, threads)
    raise ModelError(
        f"`{path}` is neither a bundle nor an edgeslm checkpoint; serve a folder from `edgeslm build` (its bundle/, "
        "or the teacher checkpoint its report.json lists under artifacts)"
    )


def make_app(model: CloudModel) -> Any:
    """The FastAPI app over ``model``."""
    from fastapi import Body, FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = FastAPI(title="edgeslm cloud stand-in", docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    def bad_json(_request: Any, exc: RequestValidationError) -> JSONResponse:
        return error(400, f"request body is not valid JSON ({exc.errors()[0].get('msg', 'unparseable')})")

    def texts_of(value: Any, key: str) -> list[str] | JSONResponse:
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return error(400, f"`{key}` must be a non-empty string or list of strings")
        if len(texts) > MAX_INPUTS or any(len(t) > MAX_CHARS for t in texts):
            return error(413, f"at most {MAX_INPUTS} texts of {MAX_CHARS} characters per request")
        return texts

    @app.middleware("http")
    async def server_timing(request: Any, call_next: Any) -> Any:
        # The standard Server-Timing header: lets `compare` split a call into model time and network time.
        t = time.perf_counter()
        response = await call_next(request)
        response.headers["Server-Timing"] = f"model;dur={(time.perf_counter() - t) * 1000:.2f}"
        return response

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict[str, Any]:
        return {"model": model.name, "task": model.task, "labels": list(model.labels)}

    def classify(body: Any) -> Any:
        if not isinstance(body, dict) or "inputs" not in body:
            return error(400, 'body must be a JSON object with "inputs"')
        texts = texts_of(body["inputs"], "inputs")
        if isinstance(texts, JSONResponse):
            return texts
        if model.task != "text-classification":
            return error(400, f"this model's task is {model.task}, not text-classification")
        top_k = (body.get("parameters") or {}).get("top_k")
        out = []
        for row in model.probs(texts):
            ranked = sorted(zip(model.labels, row, strict=True), key=lambda x: -x[1])
            out.append([{"label": label, "score": score} for label, score in ranked[: top_k or None]])
        return out

    @app.post("/")
    def classify_root(body: Any = Body(None)) -> Any:  # noqa: B008 (FastAPI's declared-body idiom)
        return classify(body)

    @app.post("/models/{model_id:path}")
    def classify_model(model_id: str, body: Any = Body(None)) -> Any:  # noqa: B008
        return classify(body)

    @app.post("/v1/embeddings")
    def embeddings(body: Any = Body(None)) -> Any:  # noqa: B008
        if not isinstance(body, dict) or "input" not in body:
            return error(400, 'body must be a JSON object with "input"')
        texts = texts_of(body["input"], "input")
        if isinstance(texts, JSONResponse):
            return texts
        vectors = model.embed(texts)
        if vectors is None:
            return error(501, f"model `{model.name}` has no embedding output (a classification bundle)")
        tokens = model.count_tokens(texts)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": body.get("model") or model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


class StandIn:
    """Run the stand-in in a background thread on 127.0.0.1 (port 0 picks a free one). Use as a context."""

    def __init__(self, model: CloudModel, *, port: int = 0, certfile: Path | None = None, keyfile: Path | None = None):
        self.model = model
        self._certfile, self._keyfile = certfile, keyfile
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind(("127.0.0.1", port))
        except OSError as e:
            self._sock.close()
            raise ServeError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}); pick a free port with --port") from e
        self.port: int = self._sock.getsockname()[1]
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self._certfile else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> StandIn:
        import time

        import uvicorn

        config = uvicorn.Config(
            make_app(self.model),
            log_level="warning",
            lifespan="off",
            timeout_keep_alive=60,  # keep warm connections open across a slow (satellite) run
            ssl_certfile=str(self._certfile) if self._certfile else None,
            ssl_keyfile=str(self._keyfile) if self._keyfile else None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="cloud-stand-in", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServeError("the cloud stand-in did not start; run `edgeslm cloud serve` to see its log")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(OSError):
            self._sock.close()
