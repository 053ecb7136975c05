"""A delaying TCP proxy on loopback: the network emulator (Linux ``tc netem`` is not available on our machines).

Every chunk read from one side is held back before it is written to the other, by a timing model fed from a
``NetworkProfile``:

- propagation: half a round trip each way (RTT drawn from the profile's measured quantiles when it has them);
- connection set-up: a new connection's first client chunk waits one extra round trip (the TCP handshake the
  loopback connect skipped); a TLS handshake on top then pays its own round trips naturally, as real bytes;
- bandwidth: one shared link per direction; a chunk occupies it for ``bytes * 8 / bandwidth`` seconds;
- loss: a chunk is lost with the profile's probability and resent after a retransmission time-out, which doubles
  on each further loss. The time-out is RTT + 200 ms, after Linux's ``TCP_RTO_MIN`` (``HZ/5``) floor on the
  variance term (``include/net/tcp.h``, ``tcp_set_rto``), so a lost chunk costs what it costs a Linux sender.

Bytes are delivered in order and never dropped for good (TCP would resend them), so applications above see delay,
never corruption. The proxy counts the bytes each way; tests and ``edgeslm cloud check`` measure that the
emulated RTT and bandwidth are what the profile says.

Hand-written on asyncio because no maintained Python library emulates link timing at the socket level.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import ConfigError, ServeError
from .network import NetworkProfile

__all__ = ["DelayProxy", "LinkModel", "blackhole", "refused_port"]

_CHUNK = 65536  # bytes read per socket read: larger than any HTTP request here, small next to a bandwidth-second
RTO_MIN_S = 0.2  # Linux TCP_RTO_MIN (HZ/5)


class LinkModel:
    """When a chunk read now would arrive at the far side. Pure arithmetic on a seeded RNG: testable alone."""

    def __init__(self, profile: NetworkProfile, seed: int = 0) -> None:
        if not profile.emulable:
            raise ConfigError(
                f"network profile `{profile.name}` has no sourced RTT (a gap in the research), so it cannot be "
                "emulated honestly; pick another profile or pass a .toml file with your own measured numbers"
            )
        self.profile = profile
        self._rng = random.Random(seed)
        self._free_at = {"up": 0.0, "down": 0.0}
        q = profile.rtt_quantiles_ms
        self._q = [p for p, _ in q]
        self._ms = [ms for _, ms in q]

    def rtt_s(self) -> float:
        """One RTT sample: inverse-CDF interpolation over the measured quantiles, else the median."""
        if not self._q:
            return self.profile.rtt_ms / 1000
        u = self._rng.random()
        i = min(max(bisect.bisect_right(self._q, u), 1), len(self._q) - 1)
        q0, q1, m0, m1 = self._q[i - 1], self._q[i], self._ms[i - 1], self._ms[i]
        return (m0 + (m1 - m0) * ((u - q0) / (q1 - q0) if q1 > q0 else 0.0)) / 1000

    def _bps(self, direction: str) -> float:
        mbps = self.profile.up_mbps if direction == "up" else self.profile.down_mbps
        return math.inf if math.isnan(mbps) else mbps * 1e6

    def arrival(self, direction: str, nbytes: int, now: float, *, new_connection: bool = False) -> float:
        """Arrival time of ``nbytes`` read at ``now`` going ``direction`` ("up": client to server)."""
        start = max(now, self._free_at[direction])
        tx = nbytes * 8 / self._bps(direction)
        self._free_at[direction] = start + tx
        rtt = self.rtt_s()
        delay = rtt / 2 + (rtt if new_connection else 0.0)
        loss = 0.0 if math.isnan(self.profile.loss) else self.profile.loss
        rto = rtt + RTO_MIN_S
        while loss and self._rng.random() < loss:
            delay += rto
            rto *= 2
        return start + tx + delay


@dataclass
class ProxyStats:
    connections: int = 0
    bytes_up: int = 0  # client -> server, as read from the client's socket
    bytes_down: int = 0  # server -> client


class DelayProxy:
    """Listen on 127.0.0.1, forward each connection to ``upstream`` through the link model. Use as a context."""

    def __init__(self, profile: NetworkProfile, upstream: tuple[str, int], *, port: int = 0, seed: int = 0) -> None:
        self.model = LinkModel(profile, seed)
        self.profile = profile
        self.upstream = upstream
        self.stats = ProxyStats()
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> DelayProxy:
        self._thread = threading.Thread(target=self._run, name=f"delay-proxy-{self.profile.name}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise ServeError(
                f"network emulator could not listen on 127.0.0.1:{self._port} ({self._error}); pick a free port"
            ) from self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # surfaced to start() through _error
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", self._port)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()  # the cloud is down: the client sees the connection close with no answer
            return
        # On stop, end this connection quietly: a re-raised CancelledError would only log a traceback.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(
                self._pipe(client_r, server_w, "up"), self._pipe(server_r, client_w, "down"), return_exceptions=True
            )
        for w in (client_w, server_w):
            with contextlib.suppress(OSError):
                w.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            last, first = 0.0, direction == "up"
            while True:
                try:
                    data = await src.read(_CHUNK)
                except OSError:
                    data = b""
                now = loop.time()
                if not data:
                    queue.put_nowait((max(last, now), b""))
                    return
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                last = max(last, self.model.arrival(direction, len(data), now, new_connection=first))
                first = False
                queue.put_nowait((last, data))

        async def write() -> None:
            while True:
                due, data = await queue.get()
                # epoll rounds its time-out up to the next millisecond, so sleep to 1 ms before the due time and
                # yield to the loop for the rest: keeps the emulated delay within a fraction of a millisecond.
                while (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait - 0.001 if wait > 0.0015 else 0)
                if not data:
                    with contextlib.suppress(OSError):
                        if dst.can_write_eof():
                            dst.write_eof()
                    return
                try:
                    dst.write(data)
                    await dst.drain()
                except OSError:  # the far side went away; the reader still runs to EOF
                    return

        await asyncio.gather(read(), write())


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then closed): a cloud that is down refuses it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog does) and never answers: a hung cloud."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])
