"""`edgeslm serve`: load and verify every bundle, bind the port, then serve until Ctrl-C.

The order matters: a bundle that fails verification, or a port that is taken, stops the start with one line that
says why, before anything listens. The socket is bound here (not by uvicorn) so "port in use" is a ServeError,
not a traceback. While serving, each bundle folder is polled (``watch_s``) and SIGHUP reloads all of them: an
updated bundle is verified, then swapped in without dropping a request (see registry.py).
"""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import uvicorn

from ..bundle import read_manifest
from ..errors import EdgeSLMError, ServeError
from .app import Limits, create_app
from .generate import Generator
from .metrics import Metrics
from .predictor import Predictor
from .registry import Model, ModelRegistry
from .routing import Router, RoutingConfig
from .telemetry import Telemetry

__all__ = ["ServeConfig", "Server", "bind"]

Log = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback: the models answer this device only; 0.0.0.0 exposes them, on purpose only
    port: int = 8000  # 0 picks a free port (tests)
    limits: Limits = field(default_factory=Limits)  # body size, texts per request, characters per text
    threads: int | None = 1  # intra-op threads per call: concurrent requests then fill the cores without contention
    providers: tuple[str, ...] = ("auto",)  # execution providers to try in order; the CPU is always last
    trusted_keys: tuple[bytes, ...] | None = None  # when set, every bundle must carry a valid signature by one
    watch_s: float = 2.0  # seconds between checks of each bundle's manifest.json for an update; 0 turns it off
    telemetry: Path | None = None  # SQLite file for local telemetry; None keeps none
    routing: RoutingConfig | None = None  # hybrid routing to a cloud endpoint; None answers on the device only


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or ServeError with the one line a user needs."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and without it
    # Nagle + delayed ACK add about 40 ms to every answer (measured: 44 ms vs 1.2 ms per request on loopback).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse a port in TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ServeError(
                f"port {port} on {host} is in use; stop the other server or pick a port with --port"
            ) from e
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror}); check --host and --port") from e
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Server:
    """The registry, app and background jobs of one server; ``run`` blocks, ``running`` serves from a thread."""

    def __init__(self, bundles: Sequence[tuple[str, Path]], config: ServeConfig | None = None, log: Log = print):
        self.config = config or ServeConfig()
        self.log = log
        cfg = self.config
        self.registry = ModelRegistry(self._load)
        self.registry.load(bundles)  # ServeError before anything listens
        self.metrics = Metrics()
        self.telemetry = Telemetry(cfg.telemetry) if cfg.telemetry else None
        self.router = Router(cfg.routing) if cfg.routing else None
        self.app = create_app(
            self.registry, cfg.limits, metrics=self.metrics, telemetry=self.telemetry, router=self.router
        )
        self._stop = threading.Event()
        self._refused: dict[str, tuple[int, int]] = {}  # name -> manifest stamp that failed: not retried, not relogged

    def _load(self, path: Path) -> Model:
        """A Generator for a text-generation bundle (served on /v1/chat/completions), else a Predictor."""
        cfg = self.config
        kind = Generator if read_manifest(path, cfg.trusted_keys).task == "text-generation" else Predictor
        return kind(path, threads=cfg.threads, trusted_keys=cfg.trusted_keys, providers=cfg.providers)

    def reload(self, name: str) -> bool:
        """Verify and swap in the bundle on disk now; False (old one keeps serving) if it is refused."""
        try:
            loaded = self.registry.reload(name)
        except EdgeSLMError as e:
            self.metrics.reloads.labels(name, "refused").inc()
            self.log(f"update of `{name}` refused, still serving the previous version: {e}")
            return False
        self.metrics.reloads.labels(name, "swapped").inc()
        self.metrics.set_model(name, loaded.task, loaded.version, loaded.predictor.execution.provider)
        self.log(f"`{name}` now serves version {loaded.version}")
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.config.watch_s):
            for name, stamp in self.registry.changed().items():
                if self._refused.get(name) != stamp and not self.reload(name):
                    self._refused[name] = stamp

    def _on_hup(self, sig: int, frame: FrameType | None) -> None:
        def all_() -> None:
            for name in self.registry.names():
                self.reload(name)

        threading.Thread(target=all_, name="edgeslm-reload", daemon=True).start()  # never block the event loop

    def _uvicorn(self) -> uvicorn.Server:
        # ws="none": no route here speaks WebSocket, and uvicorn would otherwise import a WebSocket library at start
        # (measured: 7 MB of RSS and 0.1 s of cold start with `websockets` installed).
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, timeout_keep_alive=5, ws="none")
        return uvicorn.Server(config)

    def _banner(self, sock: socket.socket) -> str:
        host, port = sock.getsockname()[:2]
        models = ", ".join(
            f"{m.name} ({m.task}, v{m.version}, {m.predictor.execution.provider.removesuffix('ExecutionProvider')})"
            for m in self.registry.all()
        )
        return f"serving {models} at http://{host}:{port} (API and its shapes at /docs); Ctrl-C stops"

    def run(self) -> None:
        """Bind, serve until Ctrl-C or SIGTERM, then stop the background jobs."""
        sock = bind(self.config.host, self.config.port)
        server = self._uvicorn()
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_hup)
        self.log(self._banner(sock))
        with self._background():
            server.run(sockets=[sock])

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        """Serve from a thread on ``config.host``/``port`` (port 0: a free one); yields the base URL."""
        sock = bind(self.config.host, self.config.port)
        server = self._uvicorn()
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        with self._background():
            thread.start()
            try:
                while not server.started:
                    if not thread.is_alive():
                        raise ServeError("the server thread stopped during start-up")
                    thread.join(0.01)
                host, port = sock.getsockname()[:2]
                yield f"http://{host}:{port}"
            finally:
                server.should_exit = True
                thread.join(10)
                sock.close()

    @contextlib.contextmanager
    def _background(self) -> Iterator[None]:
        watcher = None
        if self.config.watch_s > 0:
            watcher = threading.Thread(target=self._watch, name="edgeslm-watch", daemon=True)
            watcher.start()
        try:
            yield
        finally:
            self._stop.set()
            if watcher is not None:
                watcher.join(5)
            if self.telemetry is not None:
                self.telemetry.close()
            if self.router is not None:
                self.router.close()
