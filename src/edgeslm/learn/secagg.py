"""``edgeslm federate --secagg``: FedAvg under Flower's SecAgg+ protocol, so the server only ever sees the sum.

In Flower 1.42 SecAgg+ exists only in the legacy API: ``SecAggPlusWorkflow`` (``flwr.server.workflow``) drives a
legacy ``Strategy`` (``flwr.server.strategy.FedAvg``) through a ``LegacyContext``, and the client side is the
``secaggplus_mod`` around a ``NumPyClient``. So this is a second pair of apps next to ``learn.apps``; the local
training step (``apps._train_client``) and the server's evaluation are the same.

Each client clips its arrays to ``[-clip, clip]``, quantizes them to 2^22 levels, multiplies by its row count
(the FedAvg weight) and adds pairwise masks that cancel in the sum; the masked vectors are integers mod 2^32.
The aggregate therefore equals plain FedAvg's up to that quantization (tested).

What it rules out, and why ``FederateConfig`` refuses the combinations:
- robust aggregation (trimmed mean, Krum, median) needs every client's update; SecAgg+ reveals only the sum;
- the NaN/shape guard (``learn.guard``) cannot look inside a masked vector, so the check moves onto the device:
  a client whose update is not finite raises instead of sending, and SecAgg+ recovers the round without it;
- DP: Flower's ε accountant lives in the Message-API DP wrapper (``flwr.serverapp.strategy``), which this
  legacy workflow cannot drive; running the two together would report no ε.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .apps import Local, _client_state, _train_client, accuracy
from .federate import FederateConfig, load_eval
from .wire import CountingGrid

__all__ = ["client_app", "simulate"]


def client_app() -> Any:
    """The device side: train on the device's rows, then hand the arrays to ``secaggplus_mod`` to mask."""
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp

    class _Client(NumPyClient):
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
            workdir = str(config["workdir"])
            local = _client_state(workdir)[0]
            names = list(local.get())  # the order both sides agree on: the model's module order
            new, n = _train_client(
                workdir, self.pid, dict(zip(names, parameters, strict=True)), int(config["round"]), 0.0
            )
            arrays = [new[k] for k in names]
            if not all(np.isfinite(a).all() for a in arrays):  # the server cannot check a masked vector
                raise DataError(f"client {self.pid}: the local update is not finite; not sent")
            return arrays, n, {}

    def client_fn(context: Any) -> Any:
        return _Client(int(str(context.node_config["partition-id"]))).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


def simulate(config: FederateConfig, workdir: Path, checkpoint: Path) -> dict[str, Any]:
    """Run the rounds under SecAgg+ in Flower's simulation engine; the same result shape as ``apps.simulate``."""
    from flwr.app import Context
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp import Grid
    from flwr.simulation import run_simulation

    server = Local(checkpoint, config.mode, config.lora, config.seed)
    eval_texts, eval_labels = load_eval(config)
    initial = server.get()
    names = list(initial)
    out: dict[str, Any] = {"accuracy": [], "epsilon": None}

    def evaluate(rnd: int, arrays: list[np.ndarray], _: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        out["arrays"] = {k: np.array(a, copy=True) for k, a in zip(names, arrays, strict=True)}
        server.set(out["arrays"])
        acc = accuracy(server, eval_texts, eval_labels)
        out["accuracy"].append(acc)
        return 0.0, {"accuracy": acc}

    class _FedAvg(FedAvg):
        """FedAvg whose global arrays stay float32: SecAgg+ unmasks into float64, which would double every later
        round's downlink (measured: 170 KB -> 335 KB per client for the LoRA arrays)."""

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> tuple[Any, dict[str, Any]]:
            params, metrics = super().aggregate_fit(server_round, results, failures)
            if params is not None:
                params = ndarrays_to_parameters([np.asarray(a, np.float32) for a in parameters_to_ndarrays(params)])
            return params, metrics

    strategy = _FedAvg(
        fraction_fit=config.per_round / config.clients,
        fraction_evaluate=0.0,  # evaluation is central, on the server's held-out rows
        min_fit_clients=config.per_round,
        min_evaluate_clients=0,
        min_available_clients=config.clients,
        evaluate_fn=evaluate,
        on_fit_config_fn=lambda rnd: {"workdir": str(workdir), "round": rnd},
        initial_parameters=ndarrays_to_parameters([initial[k] for k in names]),
    )
    with np.load(workdir / "partitions.npz") as z:
        # each client pre-scales its arrays by rows / max_weight before quantizing: the largest client's row count
        # keeps every ratio <= 1 (no overflow) and as large as it can be (the least quantization error)
        max_rows = max(len(z[k]) for k in z.files)
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=config.secagg_shares,
            reconstruction_threshold=config.secagg_threshold,
            max_weight=float(max_rows),
            clipping_range=config.secagg_clip,
        )
    )
    app = ServerApp()
    counting: list[CountingGrid] = []

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        counting.append(CountingGrid(grid))
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=config.rounds), strategy=strategy)
        workflow(counting[0], legacy)

    t0 = time.monotonic()
    run_simulation(
        server_app=app,
        client_app=client_app(),
        num_supernodes=config.clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": config.workers, "include_dashboard": False, "log_to_driver": False},
        },
    )
    out["seconds"] = time.monotonic() - t0
    wire = counting[0].per_round() if counting else {}
    if len(out["accuracy"]) != config.rounds + 1:
        raise ConfigError(
            f"the SecAgg+ run ended after {max(len(out['accuracy']) - 1, 0)} of {config.rounds} rounds; "
            "see Flower's log above for the failing stage"
        )
    out["rounds"] = {
        int(r): {
            "replies": w["nodes"],
            "accepted": w["nodes"],
            "rejected_nan": 0,  # not visible under SecAgg+: the device checks its own update
            "rejected_shape": 0,
            "failed": 0,  # a drop-out is SecAgg+'s to recover from its key shares; not counted here
            "upload_bytes": w["up"],
        }
        for r, w in wire.items()
    }
    out["wire"] = wire
    out["server"] = server
    out["initial"] = initial
    return out
