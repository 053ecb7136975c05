"""`edgeslm federate`: federated fine-tuning of the student on Flower, in simulation; the result is a new bundle.

One ``ClientApp`` (a device: train the LoRA A/B or the whole student on its own rows, send the arrays back) and one
``ServerApp`` (sample clients, aggregate with a Flower strategy, evaluate centrally), run by Flower's simulation
engine (Ray); they live in ``learn.apps``. Around the strategy: ``Guarded`` drops NaN and misshapen updates
(counted), and with ``dp_noise`` Flower's client-side-clipping DP wrapper adds noise on the server while its RDP
accountant reports ε. This module holds the run's config and the verb: split, simulate, bundle.
"""

from __future__ import annotations

import json
import resource
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..recipe import DataConfig
from .lora import LoraSpec

if TYPE_CHECKING:
    from .apps import Local
    from .deploy import SuperLink

__all__ = ["STRATEGIES", "FederateConfig", "FederateResult", "federate"]

STRATEGIES = ("fedavg", "fedprox", "trimmed-mean", "krum", "median")
MODES = ("lora", "full")


@dataclass(frozen=True)
class FederateConfig:
    """A federated run: who takes part, how they train, how the server aggregates."""

    data: DataConfig = field(default_factory=DataConfig)
    clients: int = 100  # simulated devices, each with its own rows
    per_round: int = 10  # clients sampled per round
    rounds: int = 5
    alpha: float | None = 0.5  # Dirichlet alpha over labels (non-IID); None: IID
    strategy: str = "fedavg"  # one of STRATEGIES
    mode: str = "lora"  # lora: only A/B travel; full: every weight of the student travels
    lora: LoraSpec = field(default_factory=LoraSpec)
    local_epochs: float = 1.0  # passes over a client's rows per round
    learning_rate: float | None = None  # None: 2e-3 for LoRA, 5e-5 for the full student
    batch_size: int = 16
    proximal_mu: float = 0.01  # FedProx's pull towards the global model (only with strategy fedprox)
    trim_beta: float = 0.2  # trimmed mean: share cut at each end of every coordinate
    poisoned: float = 0.0  # share of clients that flip their labels and boost their update (an attack)
    attack_boost: float = 10.0  # poisoned clients scale their update by this (model-replacement style)
    faulty: float = 0.0  # share of clients that send NaN or misshapen arrays (fault injection for tests)
    dp_noise: float | None = None  # Gaussian noise multiplier; None: no DP
    dp_clip: float = 1.0  # L2 clipping norm of each client's update (client-side, Flower's fixedclipping_mod)
    dp_delta: float = 1e-5  # δ at which ε is reported
    secagg: bool = False  # SecAgg+ (Flower's legacy workflow): the server sees only the sum; FedAvg only
    secagg_shares: int = 3  # SecAgg+ key shares per client (itself + neighbours); more tolerate more drop-outs
    secagg_threshold: int = 2  # shares needed to rebuild a dropped client's mask; < secagg_shares
    secagg_clip: float = 8.0  # SecAgg+ clips every travelling value to [-clip, clip] before quantizing (2^22 levels)
    round_timeout: float = 600.0  # seconds a round waits for replies; a device that never answers counts as failed
    eval_rows: int = 1000  # central evaluation rows per round (a fixed random subset of the eval split)
    workers: int = 2  # Ray actors running client apps at once (one CPU each)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "clients",
            "per_round",
            "rounds",
            "batch_size",
            "local_epochs",
            "eval_rows",
            "workers",
            "round_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"`{name}` must be > 0, got {getattr(self, name)}")
        if self.per_round > self.clients:
            raise ConfigError(f"`per_round` ({self.per_round}) must be <= `clients` ({self.clients})")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"`alpha` must be > 0 (or None for IID), got {self.alpha}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"`strategy` must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.mode not in MODES:
            raise ConfigError(f"`mode` must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("poisoned", "faulty"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be in [0, 1), got {getattr(self, name)}")
        if self.dp_noise is not None and self.dp_noise <= 0:
            raise ConfigError(f"`dp_noise` must be > 0, got {self.dp_noise}")
        if self.dp_clip <= 0:
            raise ConfigError(f"`dp_clip` must be > 0, got {self.dp_clip}")
        if self.dp_noise is not None and self.strategy != "fedavg":
            raise ConfigError("DP needs strategy fedavg (Flower's accounted DP wrapper averages uniformly)")
        if self.secagg:
            self._check_secagg()

    def _check_secagg(self) -> None:
        """SecAgg+ hides every single update from the server; what needs one is refused (see ``learn.secagg``)."""
        if self.strategy != "fedavg":
            raise ConfigError(
                f"--secagg works with strategy fedavg only, got {self.strategy!r}: robust aggregation (trimmed mean, "
                "Krum, median) needs each client's update, and SecAgg+ shows the server only their sum"
            )
        if self.dp_noise is not None:
            raise ConfigError(
                "--secagg cannot be combined with --dp-noise here: Flower 1.42 runs SecAgg+ only in its legacy "
                "workflow, and its ε accountant only in the Message-API DP wrapper, so the run would report no ε; "
                "choose one"
            )
        if self.faulty:
            raise ConfigError(
                "--secagg cannot inject faulty updates: the server cannot inspect a masked update to reject it "
                "(under SecAgg+ each device checks its own update before sending)"
            )
        if self.per_round < 2:
            raise ConfigError(f"--secagg needs at least 2 clients per round, got {self.per_round}")
        if not 2 <= self.secagg_threshold < self.secagg_shares:
            raise ConfigError(
                f"`secagg_threshold` must be in [2, secagg_shares) = [2, {self.secagg_shares}), "
                f"got {self.secagg_threshold}"
            )
        if self.secagg_clip <= 0:
            raise ConfigError(f"`secagg_clip` must be > 0, got {self.secagg_clip}")

    @property
    def lr(self) -> float:
        return self.learning_rate or (2e-3 if self.mode == "lora" else 5e-5)


@dataclass(frozen=True)
class FederateResult:
    bundle: Path
    summary: dict[str, Any]  # federate.json as written


# ---------------------------------------------------------------------------------------------------------------
# the verb


def federate(
    source: Path,
    out: Path,
    config: FederateConfig,
    *,
    checkpoint: Path | None = None,
    force: bool = False,
    superlink: SuperLink | None = None,
) -> FederateResult:
    """Run ``config.rounds`` federated rounds over ``source``'s student; write ``out/bundle`` (a new bundle version),
    ``out/adapter`` (LoRA mode: the federated adapter, bound to the base bundle, shippable as a delta) and
    ``out/federate.json`` (accuracy per round, bytes per client per round, rejected updates, ε).

    Without ``superlink`` the clients are simulated on Dirichlet splits of ``config.data``; with it, real SuperNodes
    train on their own rows (``learn.deploy``) and ``config.data`` serves only the central evaluation."""
    from .._fs import atomic_dir, write_json
    from ..data import load_dataset
    from .lora import resolve_student
    from .partition import partition

    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"output `{out}` already exists; choose another path or pass --force to replace it")
    if superlink is not None:
        _check_deployable(config)
    student = resolve_student(Path(source), checkpoint)
    ds = load_dataset(config.data)
    unknown = set(ds.label_names) - set(student.checkpoint.labels)
    if unknown or len(ds.label_names) != len(student.checkpoint.labels):
        raise ConfigError(
            f"dataset `{ds.name}` has labels {sorted(ds.label_names)[:4]}…, the student "
            f"{list(student.checkpoint.labels)[:4]}…; federate on the data the student was built for"
        )
    parts = partition(ds.train.labels, config.clients, config.alpha, config.seed) if superlink is None else []
    with tempfile.TemporaryDirectory(prefix="edgeslm-federate-") as work:
        workdir = Path(work)
        config_dict = prepare_workdir(workdir, config, student.checkpoint.path, parts)
        if superlink is not None:
            from .deploy import run_deployed

            sim = run_deployed(config, workdir, student.checkpoint.path, student.manifest_sha256, superlink)
        elif config.secagg:
            from .secagg import simulate as simulate_secagg

            sim = simulate_secagg(config, workdir, student.checkpoint.path)
        else:
            from .apps import simulate

            sim = simulate(config, workdir, student.checkpoint.path)
    server: Local = sim["server"]
    server.set(sim["arrays"])
    uploads = [b for r in sim["rounds"].values() for b in r["upload_bytes"]]
    summary: dict[str, Any] = {
        "config": {**config_dict, "data": {"name": config.data.name}},
        "base_bundle_manifest_sha256": student.manifest_sha256,
        "accuracy": sim["accuracy"],  # central eval: before round 1, then after each round
        "eval_rows": min(config.eval_rows, len(ds.eval)),
        "rounds": sim["rounds"],
        "rejected_updates": sum(r["rejected_nan"] + r["rejected_shape"] for r in sim["rounds"].values()),
        "failed_clients": sum(r["failed"] for r in sim["rounds"].values()),
        "upload_bytes_per_client_round": int(np.median(uploads)) if uploads else 0,
        "wire": _wire(sim.get("wire", {})),
        "array_bytes": int(sum(a.nbytes for a in sim["initial"].values())),
        "seconds": round(sim["seconds"], 1),
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "epsilon": sim["epsilon"],
        "delta": sim.get("delta"),
        "engine": "deployment" if superlink else "simulation",
        "superlink": superlink.address if superlink else None,
        "partition_sizes": {  # simulation only: deployed devices keep their own rows
            "min": int(min(map(len, parts))),
            "median": float(np.median([len(p) for p in parts])),
            "max": int(max(map(len, parts))),
        }
        if parts
        else None,
    }
    with atomic_dir(out, force=force) as tmp:
        if config.mode == "lora":
            from .lora import write_adapter

            write_adapter(server.model, student, tmp / "adapter", {"federated": True})
        _write_bundle(server, student, config, tmp, summary)
        write_json(tmp / "federate.json", summary)
    return FederateResult(out / "bundle", summary)


def _check_deployable(config: FederateConfig) -> None:
    """What only the simulation can do is refused on real devices, by name."""
    if config.poisoned or config.faulty:
        raise ConfigError(
            "--poisoned and fault injection are simulated attacks (the server picks who misbehaves); "
            "they do not run on a real fleet: drop them with --superlink"
        )
    if config.dp_noise is not None:
        raise ConfigError(
            "--dp-noise runs in simulation only here: the deployed device app does not clip its update yet, and "
            "without that clipping the reported ε would be false; drop --dp-noise or --superlink"
        )
    if config.secagg:
        raise ConfigError(
            "--secagg runs in simulation only here: Flower 1.42's SecAgg+ is a legacy-API workflow that the "
            "deployed edgeslm apps do not use; drop --secagg or --superlink"
        )


def prepare_workdir(workdir: Path, config: FederateConfig, checkpoint: Path, parts: list[np.ndarray]) -> dict[str, Any]:
    """What every client reads (``apps._client_state``): the run's settings, the student, each client's rows."""
    from .._fs import write_json

    config_dict = asdict(config)
    write_json(workdir / "setup.json", {"config": config_dict, "checkpoint": str(Path(checkpoint).resolve())})
    if parts:
        np.savez(workdir / "partitions.npz", *parts)  # arr_0, arr_1, ... in client order
    return config_dict


def _write_bundle(server: Local, student: Any, config: FederateConfig, tmp: Path, summary: dict[str, Any]) -> None:
    """The federated student, merged, exported, quantized (INT8 dynamic, like the build) and bundled."""
    from ..bundle import MANIFEST, write_bundle
    from ..compress.quantize import quantize
    from ..export.onnx import export_onnx
    from ..models import save_checkpoint
    from ..recipe import ExportConfig, Int8DynamicConfig

    model = server.model.merge_and_unload() if config.mode == "lora" else server.model
    ckpt = student.checkpoint
    stage = tmp / ".stage"
    save_checkpoint(
        model,
        stage / "checkpoint",
        ckpt.path / "tokenizer.json",
        ckpt.labels,
        ckpt.max_length,
        {**ckpt.meta, "federated": True},
    )
    onnx_dir = export_onnx(stage / "checkpoint", stage / "onnx", ExportConfig(data=config.data, check_rows=8))
    q = quantize(onnx_dir, stage / "quantized", Int8DynamicConfig())
    base = json.loads((student.bundle / MANIFEST).read_text(encoding="utf-8"))
    write_bundle(
        {"model.onnx": q / "model.onnx", "tokenizer.json": q / "tokenizer.json"},
        tmp / "bundle",
        {
            "task": base["task"],
            "labels": tuple(base["labels"]),
            "max_length": base["max_length"],
            "inputs": tuple(base["inputs"]),
            "model": "model.onnx",
            "tokenizer": "tokenizer.json",
            "min_runtime_version": base["min_runtime_version"],
            "target_devices": tuple(base.get("target_devices", ())),
            "recipe": base.get("recipe", {}),
            "extra": {
                "federated": {
                    "from_manifest_sha256": student.manifest_sha256,
                    "strategy": config.strategy,
                    "mode": config.mode,
                    "rounds": config.rounds,
                    "clients": config.clients,
                    "accuracy": summary["accuracy"][-1],
                    "epsilon": summary["epsilon"],
                }
            },
        },
    )
    import shutil

    shutil.rmtree(stage)
    from ..runtime import Predictor

    eval_ds = load_eval(config)
    pred = Predictor(tmp / "bundle", threads=1).logits(eval_ds[0]).argmax(1)
    summary["bundle_accuracy"] = float(np.mean(pred == np.asarray(eval_ds[1])))


def _wire(per_round: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Serialized message bytes per client per round, both directions (``learn.wire``), as medians over rounds."""
    if not per_round:
        return {}
    rounds = [w for r, w in per_round.items() if r.isdigit() and int(r) > 0]
    if not rounds:
        return {}
    # medians over the clients that answered with content: a device lost mid-round sent nothing up
    ups = [[u for u in w["up"] if u] or [0] for w in rounds]
    return {
        "down_bytes_per_client_round": int(np.median([np.median(w["down"]) for w in rounds])),
        "up_bytes_per_client_round": int(np.median([np.median(u) for u in ups])),
        "exchanges_per_round": int(max(w["exchanges"] for w in rounds)),
        "per_round": per_round,
    }


def load_eval(config: FederateConfig) -> tuple[list[str], list[int]]:
    """The central evaluation rows (the same fixed subset every round uses)."""
    from ..data import load_dataset

    ds = load_dataset(config.data)
    pick = np.random.default_rng(config.seed).permutation(len(ds.eval))[: config.eval_rows]
    return [ds.eval.texts[i] for i in pick], [ds.eval.labels[i] for i in pick]
