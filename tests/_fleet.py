"""A Flower fleet on this machine for tests and benchmarks: one SuperLink and N SuperNodes as real processes bound to
127.0.0.1, each with its own FLWR_HOME and log file; leaving the ``with`` block stops every one of them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

__all__ = ["LocalFleet"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalFleet:
    """``node_configs[i]`` is SuperNode i's ``--node-config`` (e.g. ``data='rows.csv' student='build/'``);
    ``tls`` (cert, key): the SuperLink serves TLS with that self-signed certificate, which the nodes trust."""

    def __init__(self, work: Path, node_configs: list[str], tls: tuple[Path, Path] | None = None) -> None:
        self.work = Path(work)
        self.node_configs = node_configs
        self.tls = tls
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.t0 = time.monotonic()
        self.events: list[tuple[float, str]] = []

    def note(self, what: str) -> None:
        self.events.append((round(time.monotonic() - self.t0, 1), what))

    def log(self, name: str) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def _start(self, name: str, args: list[str]) -> None:
        home = self.work / f"flwr-home-{name}"
        home.mkdir(parents=True, exist_ok=True)
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        with (self.work / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(
                [str(bin_dir / args[0]), *args[1:]], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.note(f"{name} started (pid {self.procs[name].pid})")

    def __enter__(self) -> LocalFleet:
        self.work.mkdir(parents=True, exist_ok=True)
        secure = ["--insecure"]
        if self.tls:
            cert, key = self.tls
            secure = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--ssl-ca-certfile", str(cert)]
        link = ["flower-superlink", *secure, "--port", str(self.port), "--database", ":flwr-in-memory:"]
        self._start("superlink", link)
        deadline = time.monotonic() + 60
        while True:  # the SuperLink is up when its port accepts a connection
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.procs["superlink"].poll() is not None:
                    self.__exit__(None, None, None)
                    raise RuntimeError(f"the SuperLink did not start:\n{self.log('superlink')[-2000:]}") from None
                time.sleep(0.2)
        for i, node_config in enumerate(self.node_configs):
            self._start(
                f"node{i}",
                [
                    "flower-supernode",
                    *(["--root-certificates", str(self.tls[0])] if self.tls else ["--insecure"]),
                    "--superlink",
                    self.address,
                    "--port",
                    str(_free_port()),
                    "--node-config",
                    node_config,
                ],
            )
        return self

    def kill(self, name: str) -> None:
        """SIGKILL: the device vanishes without a word, as a phone that loses power does."""
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()
        self.note(f"{name} SIGKILLed")

    def alive(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is None]

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.note("all stopped")
