"""The Flower apps of ``edgeslm federate``: a ``ClientApp`` (a device trains on its own rows) and the server side
(a Flower strategy wrapped by ``Guarded`` and, with DP, by Flower's client-side-clipping wrapper), run in Flower's
simulation engine. The same ``ClientApp`` runs unchanged on a real SuperNode.

The clients read their rows from a work folder the server writes (dataset name, partition indices, student path),
so the simulation ships no data through Ray; on a real device the rows would simply be the device's own.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..recipe import DataConfig
from .federate import FederateConfig, load_eval
from .lora import LoraSpec

__all__ = ["Local", "accuracy", "client_app", "local_round", "serve", "simulate"]

# ---------------------------------------------------------------------------------------------------------------
# the model both sides hold


class Local:
    """The student (peft-wrapped in LoRA mode) with its tokenizer and numpy get/set of the travelling arrays."""

    def __init__(self, checkpoint: Path, mode: str, lora: LoraSpec, seed: int) -> None:
        import torch

        from ..models import load_checkpoint
        from ..runtime.predictor import load_tokenizer
        from .lora import wrap

        torch.set_num_threads(1)  # one Ray actor per core
        ckpt = load_checkpoint(checkpoint)
        self.labels = ckpt.labels
        self.tokenizer = load_tokenizer((checkpoint / "tokenizer.json").read_text(encoding="utf-8"), ckpt.max_length)
        self.mode = mode
        self.model: Any = wrap(ckpt.model, lora, seed) if mode == "lora" else ckpt.model

    def get(self) -> dict[str, np.ndarray]:
        from .lora import lora_arrays

        if self.mode == "lora":
            return lora_arrays(self.model)
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.named_parameters() if v.requires_grad}

    def set(self, arrays: dict[str, np.ndarray]) -> None:
        import torch

        from .lora import set_lora_arrays

        if self.mode == "lora":
            set_lora_arrays(self.model, arrays)
            return
        with torch.no_grad():
            for k, v in self.model.named_parameters():
                if k in arrays:
                    v.copy_(torch.from_numpy(arrays[k]))


@dataclass(frozen=True)
class _Settings:
    """TrainSettings for one client's local round."""

    epochs: float
    learning_rate: float
    batch_size: int
    seed: int
    max_minutes: float | None = None
    weight_decay: float = 0.0
    warmup: float = 0.0
    freeze_embeddings: bool = False


@functools.lru_cache(maxsize=1)  # one run per actor at a time; a new run replaces it
def _client_state(workdir: str) -> tuple[Local, dict[str, Any], list[str], list[int], list[np.ndarray]]:
    """Loaded once per Ray actor: the student, the run's settings, the train rows and every client's indices."""
    from ..data import load_dataset

    setup = json.loads((Path(workdir) / "setup.json").read_text(encoding="utf-8"))
    config = _config_from(setup["config"])
    local = Local(Path(setup["checkpoint"]), config.mode, config.lora, config.seed)
    ds = load_dataset(config.data)
    with np.load(Path(workdir) / "partitions.npz") as z:
        parts = [z[f"arr_{i}"] for i in range(config.clients)]
    return local, setup, list(ds.train.texts), list(ds.train.labels), parts


def _config_from(raw: dict[str, Any]) -> FederateConfig:
    return FederateConfig(
        **{
            **raw,
            "data": DataConfig(**raw["data"]),
            "lora": LoraSpec(**{**raw["lora"], "targets": tuple(raw["lora"]["targets"])}),
        }
    )


def _train_client(
    workdir: str, pid: int, arrays: dict[str, np.ndarray], rnd: int, mu: float
) -> tuple[dict[str, np.ndarray], int]:
    """One simulated client's local round on its partition; returns its new arrays and the rows it trained on."""
    local, setup, texts, labels, parts = _client_state(workdir)
    config = _config_from(setup["config"])
    rows = parts[pid]
    poisoned = bool(config.poisoned) and pid % round(1 / config.poisoned) == 0
    texts, labels = [texts[i] for i in rows], [labels[i] for i in rows]
    return local_round(local, config, texts, labels, arrays, rnd, mu, pid, poisoned), len(rows)


def local_round(
    local: Local,
    config: FederateConfig,
    texts: list[str],
    labels: list[int],
    arrays: dict[str, np.ndarray],
    rnd: int,
    mu: float,
    client: int,
    poisoned: bool = False,
) -> dict[str, np.ndarray]:
    """Train ``local`` from the server's ``arrays`` on one device's rows; return the arrays that travel back.

    The same step runs in simulation (``_train_client``) and on a real SuperNode (``learn.deploy``). ``poisoned``
    (simulation only) flips the labels and boosts the update, the attack the robust strategies are tested against.
    """
    import torch

    from .._train import train

    k = len(local.labels)
    y = torch.tensor([(k - 1 - label) if poisoned else label for label in labels])
    local.set(arrays)
    start = {name: torch.from_numpy(a.copy()) for name, a in arrays.items()}
    params = dict(local.model.named_parameters())
    names = {n: _param_name(local, n) for n in arrays}

    def loss_fn(m: Any, feed: dict[str, torch.Tensor], idx: list[int]) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(m(**feed), y[idx])
        if mu > 0:  # FedProx: mu/2 * ||w - w_global||^2 over the travelling weights
            prox = sum(((params[names[n]] - start[n]) ** 2).sum() for n in arrays)
            loss = loss + mu / 2 * prox
        return loss

    seed = config.seed * 100_003 + rnd * 1_009 + client
    settings = _Settings(config.local_epochs, config.lr, config.batch_size, seed)
    with contextlib.redirect_stdout(io.StringIO()):  # the loop's progress lines, times thousands of clients
        train(local.model, local.tokenizer, texts, settings, loss_fn, f"client {client}")
    new = local.get()
    if poisoned:
        new = {n: arrays[n] + config.attack_boost * (new[n] - arrays[n]) for n in new}
    return new


def _param_name(local: Local, array_name: str) -> str:
    """The torch parameter behind a travelling array name."""
    if local.mode == "full":
        return array_name
    module, which = array_name.rsplit(".", 1)  # "<module>.lora_A"
    return f"base_model.model.{module}.{which}.default.weight"


def client_app(dp: bool) -> Any:
    """The device side: one local round per train message. With ``dp``, Flower's ``fixedclipping_mod`` clips the
    update on the device before it leaves (the server's DP wrapper sends the norm and adds the noise)."""
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.clientapp.mod import fixedclipping_mod

    def handle(msg: Message, context: Context) -> Message:
        cfg: dict[str, Any] = dict(msg.content.config_records["config"])
        pid = int(str(context.node_config["partition-id"]))
        arrays = {k: a.numpy() for k, a in msg.content.array_records["arrays"].items()}
        workdir = str(cfg["workdir"])
        new, n = _train_client(workdir, pid, arrays, int(cfg["round"]), float(cfg.get("proximal-mu", 0.0)))
        faulty = float(cfg["faulty"])
        if faulty and pid % round(1 / faulty) == 1 % round(1 / faulty):  # fault injection: broken updates
            first = next(iter(new))
            new[first] = np.full_like(new[first], np.nan) if int(cfg["round"]) % 2 else new[first][:1]
        weight = 1 if bool(cfg["uniform"]) else n  # DP accounting needs equal weights
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()}),
                "metrics": MetricRecord({"num-examples": weight}),
            }
        )
        return Message(content=content, reply_to=msg)

    app = ClientApp(mods=[fixedclipping_mod] if dp else [])
    app.train()(handle)
    return app


# ---------------------------------------------------------------------------------------------------------------
# the server


def _strategy(config: FederateConfig, deployed: bool) -> Any:
    from flwr.serverapp import strategy as st

    # Simulation: min_train_nodes = the cohort, because Flower computes the sample before all nodes registered
    # (PR #4247). Deployment: the ServerApp waits for the whole fleet before round 1 (``learn.deploy``), then
    # samples from whoever is alive, so that a device lost mid-run shrinks the next cohort instead of stalling it.
    floor = 1 if deployed else config.per_round
    common: dict[str, Any] = {
        "fraction_train": config.per_round / config.clients,
        "fraction_evaluate": 0.0,  # evaluation is central, on the server's held-out rows
        "min_train_nodes": floor,
        "min_evaluate_nodes": 0,
        "min_available_nodes": 1 if deployed else config.clients,
    }
    expected_bad = round(config.per_round * config.poisoned)
    return {
        "fedavg": lambda: st.FedAvg(**common),
        "fedprox": lambda: st.FedProx(**common, proximal_mu=config.proximal_mu),
        "trimmed-mean": lambda: st.FedTrimmedAvg(**common, beta=config.trim_beta),
        "krum": lambda: st.Krum(**common, num_malicious_nodes=max(1, expected_bad)),
        "median": lambda: st.FedMedian(**common),
    }[config.strategy]()


def accuracy(local: Local, texts: list[str], labels: list[int]) -> float:
    from .._train import predict_logits

    return float(np.mean(predict_logits(local.model, local.tokenizer, texts).argmax(1) == np.asarray(labels)))


def serve(
    config: FederateConfig, server: Local, grid: Any, train_config: dict[str, Any], deployed: bool
) -> dict[str, Any]:
    """The server's rounds on ``grid`` (simulated or deployed): the strategy wrapped by ``Guarded`` and, with DP, by
    Flower's client-side-clipping wrapper; central evaluation after each round. Returns the final arrays, accuracy
    per round, what each round received, the bytes on the wire and ε."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    from .guard import Guarded
    from .wire import CountingGrid

    eval_texts, eval_labels = load_eval(config)
    out: dict[str, Any] = {"accuracy": [], "epsilon": None, "initial": server.get()}
    accountant = None
    inner = _strategy(config, deployed)
    if config.dp_noise is not None:
        from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
        from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=config.dp_delta,
                population_size=config.clients,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,  # the only mode Flower's accounted wrapper takes
            )
        )
        inner = DifferentialPrivacyClientSideFixedClipping(
            inner, config.dp_noise, config.dp_clip, config.per_round, accountant=accountant
        )
    guarded = Guarded(inner)

    def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        server.set({k: a.numpy() for k, a in arrays.items()})
        acc = accuracy(server, eval_texts, eval_labels)
        out["accuracy"].append(acc)
        return MetricRecord({"accuracy": acc})

    counting = CountingGrid(grid)
    result = guarded.start(
        grid=counting,
        initial_arrays=ArrayRecord({k: Array(v) for k, v in out["initial"].items()}),
        num_rounds=config.rounds,
        train_config=ConfigRecord(
            {**train_config, "faulty": config.faulty, "uniform": config.dp_noise is not None, "round": 0}
        ),
        evaluate_fn=evaluate,
        timeout=config.round_timeout,
    )
    out["arrays"] = {k: a.numpy() for k, a in result.arrays.items()}
    out["rounds"] = {r: asdict(log) for r, log in guarded.rounds.items()}
    out["wire"] = counting.per_round()
    if accountant is not None:
        spent = accountant.get_privacy_spent()
        out["epsilon"], out["delta"] = float(spent.epsilon), float(spent.delta)
    return out


def simulate(config: FederateConfig, workdir: Path, checkpoint: Path) -> dict[str, Any]:
    """Run the rounds in Flower's simulation engine; returns ``serve``'s result plus the time and the server model."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    server = Local(checkpoint, config.mode, config.lora, config.seed)
    out: dict[str, Any] = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        out.update(serve(config, server, grid, {"workdir": str(workdir)}, deployed=False))

    t0 = time.monotonic()
    run_simulation(
        server_app=app,
        client_app=client_app(config.dp_noise is not None),
        num_supernodes=config.clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": config.workers, "include_dashboard": False, "log_to_driver": False},
        },
    )
    out["seconds"] = time.monotonic() - t0
    if "arrays" not in out:
        raise ConfigError("the federated run ended without a result; see Flower's log above for the failing round")
    out["server"] = server
    return out
