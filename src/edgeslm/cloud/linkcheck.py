"""Check the emulator by measuring it: RTT, connection set-up and bandwidth through a ``DelayProxy``.

An emulator nobody measured proves nothing. This runs a tiny loopback server behind the proxy and times, on real
sockets: the connect-and-first-reply time of a fresh connection (should be about 2 RTT: handshake + request), the
median round trip of 1-byte pings on a warm connection (about 1 RTT), and the time to move ``payload`` bytes each
way (bandwidth = bytes / (time - 1 RTT)). ``edgeslm cloud check`` prints the result next to the profile's numbers.
"""

from __future__ import annotations

import math
import socket
import socketserver
import statistics
import threading
import time
from typing import Any

from .network import NetworkProfile
from .proxy import DelayProxy

__all__ = ["measure_link"]


class _Handler(socketserver.BaseRequestHandler):
    """Line protocol: ``P`` -> one byte back; ``U<n>`` -> read n bytes, answer ``k``; ``D<n>`` -> send n bytes."""

    def handle(self) -> None:
        f = self.request.makefile("rb")
        while line := f.readline():
            cmd, n = line[:1], int(line[1:].strip() or 0)
            if cmd == b"P":
                self.request.sendall(b"p")
            elif cmd == b"U":
                f.read(n)
                self.request.sendall(b"k")
            elif cmd == b"D":
                self.request.sendall(b"x" * n)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _recv_exact(sock: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = sock.recv(min(1 << 20, n - got))
        if not chunk:
            raise ConnectionError("link check server closed the connection early")
        got += len(chunk)


def _payload(mbps: float) -> int:
    """Bytes to move one way: about 0.25 s at the emulated rate (so timer error stays small), 64 KB to 8 MB."""
    if not math.isfinite(mbps) or mbps <= 0:
        return 65_536
    return int(min(max(mbps * 1e6 / 8 * 0.25, 65_536), 8 << 20))


def measure_link(profile: NetworkProfile, *, pings: int = 15, seed: int = 0) -> dict[str, Any]:
    """Measured RTT, set-up time and bandwidth of the emulated link, next to the profile's targets."""
    payload = {"up": _payload(profile.up_mbps), "down": _payload(profile.down_mbps)}
    with _Server(("127.0.0.1", 0), _Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with DelayProxy(profile, ("127.0.0.1", int(server.server_address[1])), seed=seed) as proxy:
                result = _measure(proxy.port, pings, payload)
                result["proxy_bytes"] = {"up": proxy.stats.bytes_up, "down": proxy.stats.bytes_down}
        finally:
            server.shutdown()
    rtt = result["rtt_ms_p50"] / 1000
    for way in ("up", "down"):
        seconds = result[f"{way}_seconds"] - rtt
        result[f"{way}_mbps"] = payload[way] * 8 / seconds / 1e6 if seconds > 0 else math.inf
    result["target"] = profile.to_dict()
    result["payload_bytes"] = payload
    return result


def _measure(port: int, pings: int, payload: dict[str, int]) -> dict[str, Any]:
    t0 = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"P\n")
        _recv_exact(sock, 1)
        setup = time.perf_counter() - t0
        samples = []
        for _ in range(pings):
            t = time.perf_counter()
            sock.sendall(b"P\n")
            _recv_exact(sock, 1)
            samples.append(time.perf_counter() - t)
        t = time.perf_counter()
        sock.sendall(b"U%d\n" % payload["up"] + b"x" * payload["up"])
        _recv_exact(sock, 1)
        up = time.perf_counter() - t
        t = time.perf_counter()
        sock.sendall(b"D%d\n" % payload["down"])
        _recv_exact(sock, payload["down"])
        down = time.perf_counter() - t
    ms = sorted(s * 1000 for s in samples)
    return {
        "setup_ms": setup * 1000,
        "rtt_ms_p50": statistics.median(ms),
        "rtt_ms_min": ms[0],
        "rtt_ms_max": ms[-1],
        "pings": pings,
        "up_seconds": up,
        "down_seconds": down,
    }
