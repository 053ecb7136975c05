"""``edgeslm ota serve``: the repository's public/ folder as static HTTP on 127.0.0.1.

TUF needs nothing but static files (every byte is checked against signed metadata on the device), so the
standard library's threaded file server is enough; it is bound to loopback unless a host is named on purpose.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["make_server", "serving"]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_server(public: Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server for ``public`` (the repository's public/ folder); port 0 picks a free port."""
    handler = functools.partial(_QuietHandler, directory=str(public))
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


@contextlib.contextmanager
def serving(public: Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``public`` in a background thread for the duration of the block; yields the base URL."""
    server = make_server(public, host, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
