"""python-tuf's network seam with the two bounds it lacks: a wall-clock deadline and a minimum average rate.

python-tuf's own fetchers stop only a *silent* server (a gap time-out between bytes); a server that drips one byte
every few seconds keeps them busy forever (slow retrieval; the TUF spec dropped it from its goals, Uptane requires
it). Written on the standard library's ``http.client`` rather than urllib3 because ``read1`` returns as soon as any
bytes arrive and the socket time-out can be shrunk to the time left before each read: the deadline then holds to
within one read, where urllib3's ``read(n)`` blocks until ``n`` bytes or one full gap time-out.
"""

from __future__ import annotations

import http.client
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

from .config import UpdaterConfig

__all__ = ["DeadlineFetcher"]

_CHUNK = 1 << 16  # bytes per read; read1 may return fewer


class DeadlineFetcher(FetcherInterface):
    """HTTP(S) GET with a deadline, a minimum rate and a gap time-out; downloads are staged in ``tmp_dir``.

    Staging in the device folder (not the system temp dir, often a small RAM disk) keeps the free-space check
    honest and leaves nothing behind on another file system.
    """

    def __init__(self, config: UpdaterConfig, tmp_dir: Path | None = None) -> None:
        self.config = config
        self.tmp_dir = tmp_dir
        self.received = 0  # bytes fetched by this instance, for reports

    def _fetch(self, url: str) -> Iterator[bytes]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise exceptions.DownloadError(f"unsupported URL {url!r}; use http:// or https://")
        start = time.monotonic()
        timeout = min(self.config.gap_timeout_s, self.config.deadline_s)
        conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_class(parts.hostname, parts.port, timeout=timeout)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", path or "/", headers={"User-Agent": "edgeslm-ota"})
            response = conn.getresponse()
        except TimeoutError as e:
            conn.close()
            raise exceptions.SlowRetrievalError(f"no answer from {url} within {timeout:.0f} s") from e
        except OSError:
            conn.close()
            raise
        if response.status >= 400:
            conn.close()
            raise exceptions.DownloadHTTPError(f"HTTP {response.status} for {url}", response.status)
        return self._chunks(conn, response, start, url)

    def _chunks(
        self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, start: float, url: str
    ) -> Iterator[bytes]:
        cfg = self.config
        received = 0
        try:
            while True:
                left = cfg.deadline_s - (time.monotonic() - start)
                if left <= 0:
                    raise exceptions.SlowRetrievalError(
                        f"{url} took longer than the {cfg.deadline_s:.0f} s deadline ({received} bytes received)"
                    )
                if conn.sock is not None:
                    conn.sock.settimeout(min(cfg.gap_timeout_s, left))
                try:
                    chunk = response.read1(_CHUNK)
                except TimeoutError as e:
                    raise exceptions.SlowRetrievalError(
                        f"{url} stalled (deadline or {cfg.gap_timeout_s:.0f} s without a byte)"
                    ) from e
                if not chunk:
                    return
                received += len(chunk)
                self.received += len(chunk)
                elapsed = time.monotonic() - start
                if elapsed > cfg.rate_grace_s and received / elapsed < cfg.min_rate_bps:
                    raise exceptions.SlowRetrievalError(
                        f"{url} arrives at {received / elapsed:.0f} B/s, below the {cfg.min_rate_bps:.0f} B/s minimum"
                    )
                yield chunk
        finally:
            conn.close()

    @contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """As python-tuf's, but the temporary file lives in ``tmp_dir``."""
        if self.tmp_dir is not None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        received = 0
        with tempfile.TemporaryFile(dir=self.tmp_dir) as temp_file:
            for chunk in self.fetch(url):
                received += len(chunk)
                if received > max_length:
                    raise exceptions.DownloadLengthMismatchError(
                        f"{url} sent more than the {max_length} bytes its metadata allows (endless data)"
                    )
                temp_file.write(chunk)
            temp_file.seek(0)
            yield temp_file
