"""`edgeslm federate --superlink HOST:PORT`: the same federated run on Flower's deployment engine, real devices.

Simulation (``learn.apps``) gives every virtual client a slice of one dataset. Here each device is a Flower
SuperNode that holds its own rows and its own copy of the student, and nothing but the travelling arrays crosses
the network. A device joins with Flower's own tool:

    flower-supernode --insecure --superlink HOST:PORT \\
        --node-config "data='my_rows.csv' student='build/'"

``data`` is a .csv/.tsv/.jsonl of (text, label) with the student's label names; ``student`` is the folder
`edgeslm build` wrote (the student checkpoint and its bundle). A device refuses a run for another student (by the
sha256 of the bundle manifest), so a fleet cannot silently mix models.

The operator runs `edgeslm federate ... --superlink` on the SuperLink's host. It packages the apps below as a
Flower App (a FAB whose two modules point here), submits it with `flwr run`, and reads the result the ServerApp
writes into the run's work folder; the ServerApp runs beside the SuperLink, so that folder must be on its host.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..errors import ConfigError, DataError
from .apps import Local, _config_from, local_round, serve
from .federate import FederateConfig

__all__ = ["SuperLink", "client_app", "run_deployed", "server_app"]

RESULT_ARRAYS, RESULT_JSON = "result.safetensors", "result.json"


@dataclass(frozen=True)
class SuperLink:
    """Where the fleet's SuperLink listens, and how to reach it."""

    address: str  # host:port of the SuperLink (Flower 1.42 serves every API on one port, 8000 by default)
    root_ca: Path | None = None  # PEM of the CA that signed the SuperLink's certificate; None: plaintext
    connect_timeout: float = 5.0  # seconds to wait for the SuperLink to accept a connection before giving up
    wait_for_fleet: float = 300.0  # seconds the ServerApp waits for `clients` SuperNodes before round 1

    def __post_init__(self) -> None:
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--superlink must be HOST:PORT (e.g. 127.0.0.1:8000), got {self.address!r}")
        if self.root_ca is None and not _is_loopback(host.strip("[]")):
            raise ConfigError(
                f"--superlink {self.address} is not on this machine and no --superlink-ca was given: the arrays "
                "would cross the network in plaintext; pass the CA (PEM) that signed the SuperLink's certificate"
            )
        if self.root_ca is not None and not Path(self.root_ca).is_file():
            raise ConfigError(f"--superlink-ca `{self.root_ca}` is not a file")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# the device


@functools.lru_cache(maxsize=1)  # a ClientApp process serves one message; the cache only spares repeat reads
def _device_state(student: str, data: str, config_json: str) -> tuple[Local, list[str], list[int]]:
    """The device's own student and rows, checked against the run the server started."""
    from ..data import read_rows
    from ..recipe import DataConfig
    from .lora import resolve_student

    setup = json.loads(config_json)
    config = _config_from(setup["config"])
    mine = resolve_student(Path(student))
    if mine.manifest_sha256 != setup["base_bundle_manifest_sha256"]:
        raise ConfigError(
            f"this device's student `{student}` is not the one the run federates (bundle manifest "
            f"{mine.manifest_sha256[:12]}…, run {setup['base_bundle_manifest_sha256'][:12]}…); give the SuperNode "
            "the same build in --node-config student=..."
        )
    rows = read_rows(Path(data), DataConfig(name=data))  # a device may hold one label only: no split, no check
    index = {name: i for i, name in enumerate(mine.checkpoint.labels)}
    unknown = sorted({label for _, label in rows} - set(index))
    if unknown:
        raise DataError(f"labels {unknown[:5]} in `{data}` are not among the student's labels {list(index)[:5]}")
    local = Local(mine.checkpoint.path, config.mode, config.lora, config.seed)
    return local, [text for text, _ in rows], [index[label] for _, label in rows]


def _train(msg: Message, context: Context) -> Message:
    """One local round on the device's own rows (``apps.local_round``, as in simulation)."""
    for key in ("data", "student"):
        if key not in context.node_config:
            raise ConfigError(f"this SuperNode has no `{key}` in --node-config (data='rows.csv' student='build/')")
    setup = str(context.run_config["setup"])
    local, texts, labels = _device_state(str(context.node_config["student"]), str(context.node_config["data"]), setup)
    cfg = dict(msg.content.config_records["config"])
    arrays = {k: a.numpy() for k, a in msg.content.array_records["arrays"].items()}
    config = _config_from(json.loads(setup)["config"])
    rnd = int(str(cfg["round"]))
    new = local_round(
        local, config, texts, labels, arrays, rnd, float(str(cfg.get("proximal-mu", 0.0))), context.node_id % 100_003
    )
    weight = 1 if bool(cfg["uniform"]) else len(texts)  # DP accounting needs equal weights
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()}),
            "metrics": MetricRecord({"num-examples": weight}),
        }
    )
    return Message(content=content, reply_to=msg)


def _client_app() -> ClientApp:
    app = ClientApp()
    app.train()(_train)
    return app


client_app = _client_app()


# ---------------------------------------------------------------------------------------------------------------
# the server


def _main(grid: Grid, context: Context) -> None:
    """Wait for the fleet, run the rounds (``apps.serve``), leave the result in the run's work folder."""
    from .._fs import write_bytes, write_json

    setup = json.loads(str(context.run_config["setup"]))
    workdir = Path(setup["workdir"])
    if not workdir.is_dir():
        raise ConfigError(
            f"work folder `{workdir}` is not on the SuperLink's host; run `edgeslm federate --superlink` there"
        )
    config = _config_from(setup["config"])
    deadline = time.monotonic() + float(setup["wait_for_fleet"])
    while len(list(grid.get_node_ids())) < config.clients:
        if time.monotonic() > deadline:
            raise ConfigError(
                f"only {len(list(grid.get_node_ids()))} of {config.clients} SuperNodes connected within "
                f"{setup['wait_for_fleet']:.0f} s; start the missing devices or lower --clients"
            )
        time.sleep(1.0)
    t0 = time.monotonic()
    server = Local(Path(setup["checkpoint"]), config.mode, config.lora, config.seed)
    out = serve(config, server, grid, {}, deployed=True)
    from safetensors.numpy import save

    arrays = save({k: np.ascontiguousarray(v) for k, v in out.pop("arrays").items()})
    out.pop("initial")
    write_bytes(workdir / RESULT_ARRAYS, arrays)
    write_json(workdir / RESULT_JSON, {**out, "seconds": time.monotonic() - t0})


def _server_app() -> ServerApp:
    app = ServerApp()
    app.main()(_main)
    return app


server_app = _server_app()


# ---------------------------------------------------------------------------------------------------------------
# the operator's side: package, submit, collect

# The Flower App is this pyproject alone: its two components are the objects above, in the installed edgeslm
# package, and it declares no dependencies, so SuperNodes install nothing at run time (they have edgeslm[federated]).
_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "edgeslm-federate"
version = "1.0.0"
description = "edgeslm federated fine-tuning of a student"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "edgeslm"

[tool.flwr.app.components]
serverapp = "edgeslm.learn.deploy:server_app"
clientapp = "edgeslm.learn.deploy:client_app"

[tool.flwr.app.config]
setup = ""
"""


def run_deployed(
    config: FederateConfig, workdir: Path, checkpoint: Path, base_sha256: str, link: SuperLink
) -> dict[str, Any]:
    """Submit the run to ``link`` with `flwr run`, stream its log, and return what the ServerApp wrote (the same
    keys as ``apps.simulate``)."""
    from .._fs import write_bytes

    _reachable(link)
    app = workdir / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(_PYPROJECT, encoding="utf-8")
    setup = {
        "config": asdict(config),
        "workdir": str(workdir.resolve()),
        "checkpoint": str(Path(checkpoint).resolve()),
        "base_bundle_manifest_sha256": base_sha256,
        "wait_for_fleet": link.wait_for_fleet,
    }
    # a TOML basic string: json.dumps escapes exactly what TOML needs escaped (quotes, backslashes, controls)
    write_bytes(workdir / "run.toml", f"setup = {json.dumps(json.dumps(setup))}\n".encode())
    home = workdir / "flwr-home"
    home.mkdir()
    tls = f"root-certificates = {json.dumps(str(Path(link.root_ca).resolve()))}" if link.root_ca else "insecure = true"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "edgeslm"\n\n[superlink.edgeslm]\naddress = {json.dumps(link.address)}\n{tls}\n',
        encoding="utf-8",
    )
    flwr = Path(sys.executable).parent / "flwr"
    cmd = [str(flwr), "run", str(app), "edgeslm", "--run-config", str(workdir / "run.toml"), "--stream"]
    env = {**os.environ, "FLWR_HOME": str(home)}
    t0 = time.monotonic()
    for attempt in range(3):  # a busy SuperLink can miss the CLI's first connection; nothing was submitted then
        lines = _flwr_run(cmd, env)
        submitted = any("Successfully started run" in line for line in lines)
        if submitted or not any("unavailable" in line for line in lines):
            break
        time.sleep(2.0 * (attempt + 1))
    if not (workdir / RESULT_JSON).is_file():
        tail = "\n".join(lines[-8:])
        raise ConfigError(f"the run on the SuperLink {link.address} ended without a result; `flwr run` said:\n{tail}")
    out: dict[str, Any] = json.loads((workdir / RESULT_JSON).read_text(encoding="utf-8"))
    from safetensors.numpy import load_file

    out["arrays"] = load_file(workdir / RESULT_ARRAYS)
    server = Local(Path(checkpoint), config.mode, config.lora, config.seed)
    out["initial"] = server.get()
    out["server"] = server
    out["wall_seconds"] = time.monotonic() - t0
    return out


def _flwr_run(cmd: list[str], env: dict[str, str]) -> list[str]:
    """Run `flwr run`, echoing Flower's own log of the run (rounds, replies, failures); return its lines."""
    lines: list[str] = []
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            print(line, end="", flush=True)
    return lines


def _reachable(link: SuperLink) -> None:
    """Refuse at once, with the fix, when nothing listens at the address (`flwr run` would retry for minutes)."""
    try:
        with socket.create_connection(link.host_port, timeout=link.connect_timeout):
            pass
    except OSError as e:
        raise ConfigError(
            f"the SuperLink at {link.address} does not answer ({e.strerror or e}); start it with "
            "`flower-superlink --insecure` on that host (it listens on port 8000), or fix --superlink"
        ) from e
