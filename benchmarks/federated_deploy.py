"""Flower's deployment engine, checked: a SuperLink and three SuperNodes as real processes on 127.0.0.1, one of
them SIGKILLed mid-round, two rounds to the end, every process stopped.

    .venv/bin/python benchmarks/federated_deploy.py     # -> benchmarks/results/federated_deploy.json

Not a pytest test: it takes 4-6 minutes here (the SuperLink notices a dead SuperNode only after two missed
heartbeats, about 60 s, and each ClientApp cold start installs its FAB).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from federated import RESULTS, write_result

_DEPLOY_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "edgeslm-deploy-check"
version = "1.0.0"
description = "two FedAvg rounds over three SuperNodes, one killed mid-round"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "edgeslm"

[tool.flwr.app.components]
serverapp = "deploycheck.server:app"
clientapp = "deploycheck.client:app"
"""

_DEPLOY_CLIENT = """import time
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    time.sleep(3.0)  # local training; long enough to be killed mid-round
    new = [a + 1.0 for a in arrays]
    return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)
"""

_DEPLOY_SERVER = """import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    while len(list(grid.get_node_ids())) < 3:  # all three devices take part in round 1
        time.sleep(1)
    # min_available_nodes 2: with 3 the round after a loss waits forever for the third node (Flower polls, unbounded)
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2,
                      min_evaluate_nodes=0)
    start = ArrayRecord([np.zeros(4, dtype=np.float32)])
    result = strategy.start(grid=grid, initial_arrays=start, num_rounds=2, timeout=150)
    print("RESULT " + json.dumps(result.arrays.to_numpy_ndarrays()[0].tolist()), flush=True)
"""


def deploy_check() -> dict[str, Any]:
    """A SuperLink and three SuperNodes as real processes on 127.0.0.1 (Flower's deployment engine), an app
    submitted with `flwr run`, one SuperNode SIGKILLed while it trains in round 1, two rounds to the end, all
    processes stopped. The app is a 4-float FedAvg (each client adds 1): the check is the engine, not the model."""
    import os
    import shutil
    import signal
    import socket

    bin_dir = Path(sys.executable).parent

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    work = Path(tempfile.mkdtemp(prefix="edgeslm-deploy-"))
    app = work / "app"
    (app / "deploycheck").mkdir(parents=True)
    (app / "pyproject.toml").write_text(_DEPLOY_PYPROJECT)
    (app / "deploycheck" / "__init__.py").write_text("")
    (app / "deploycheck" / "client.py").write_text(_DEPLOY_CLIENT)
    (app / "deploycheck" / "server.py").write_text(_DEPLOY_SERVER)
    home = work / "flwr-home"
    home.mkdir()
    link = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local-deploy"\n\n[superlink.local-deploy]\naddress = "127.0.0.1:{link}"\n'
        "insecure = true\n"
    )
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: work / f"{name}.log" for name in ("superlink", "node0", "node1", "node2", "run")}
    t0 = time.monotonic()
    events: list[tuple[float, str]] = []

    def note(what: str) -> None:
        events.append((round(time.monotonic() - t0, 1), what))
        print(f"{events[-1][0]:6.1f}s {what}", flush=True)

    def start(name: str, args: list[str]) -> None:
        procs[name] = subprocess.Popen(args, env=env, stdout=logs[name].open("wb"), stderr=subprocess.STDOUT)

    try:
        start(
            "superlink",
            [str(bin_dir / "flower-superlink"), "--insecure", "--port", str(link), "--database", ":flwr-in-memory:"],
        )
        note(f"superlink started on 127.0.0.1:{link} (pid {procs['superlink'].pid})")
        time.sleep(5)
        for i in range(3):
            start(
                f"node{i}",
                [
                    str(bin_dir / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f"partition-id={i}",
                ],
            )
            note(f"supernode {i} started (pid {procs[f'node{i}'].pid})")
        wait_until = time.monotonic() + 180
        while not all("SuperNode ID" in logs[f"node{i}"].read_text(errors="replace") for i in range(3)):
            if time.monotonic() > wait_until:
                raise RuntimeError("the supernodes did not register with the superlink within 180 s")
            time.sleep(0.5)
        note("all three supernodes registered")
        for attempt in range(3):  # a loaded superlink can miss the CLI's first connection probe
            start("run", [str(bin_dir / "flwr"), "run", str(app), "local-deploy", "--stream"])
            note(f"`flwr run` submitted the app (attempt {attempt + 1})")
            time.sleep(10)
            if procs["run"].poll() is None or "unavailable" not in logs["run"].read_text(errors="replace"):
                break
        deadline = time.monotonic() + 240
        while "Start `flwr-clientapp` process" not in logs["node2"].read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError("supernode 2 never started its ClientApp")
            time.sleep(0.2)
        time.sleep(0.5)
        procs["node2"].send_signal(signal.SIGKILL)
        note("supernode 2 SIGKILLed while training in round 1")
        procs["run"].wait(timeout=400)
        note(f"`flwr run` exited with {procs['run'].returncode}")
        out = logs["run"].read_text(errors="replace")
        result = next((json.loads(line.split("RESULT ", 1)[1]) for line in out.splitlines() if "RESULT " in line), None)
        keep = ("ROUND", "aggregate_train", "configure_train", "RESULT", "finished", "ERROR", "failures")
        rounds = [line.strip() for line in out.splitlines() if any(k in line for k in keep)]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        note("all processes stopped")
    alive = [n for n, p in procs.items() if p.poll() is None]
    node_log = [
        line.strip()
        for name in ("node0", "node1")
        for line in logs[name].read_text(errors="replace").splitlines()
        if "Sending" in line or "Receiving" in line or "Ignoring" in line
    ]
    shutil.rmtree(work, ignore_errors=True)
    return {
        "surviving_nodes_log": node_log,
        "result_arrays": result,
        "expected": "[2.0, 2.0, 2.0, 2.0]: each of the two rounds adds 1 (the mean of the surviving clients' +1)",
        "round_log": rounds,
        "events": events,
        "left_running": alive,
        "seconds": round(time.monotonic() - t0, 1),
    }


if __name__ == "__main__":
    write_result(RESULTS / "federated_deploy.json", deploy_check())
