"""Federated learning on Flower, measured: one run per call, the centralised reference, and the curves.

    .venv/bin/python benchmarks/federated.py federate --name NAME [--build out/clinc150] [--data clinc150]
                                              [--clients 100 --per-round 10 --rounds 10 --alpha 0.5 ...] [--secagg]
    .venv/bin/python benchmarks/federated.py central  --name NAME [--build ...] [--data ...] [--epochs 1]
    .venv/bin/python benchmarks/federated.py plot

federate / central: one Flower simulation, or centralised LoRA on all the train rows (the same student, targets,
rank and central evaluation rows), each into benchmarks/results/federated_runs/NAME.json; `plot` draws the curves.
Personalization on one device is in ``federated_personalize.py``, the deployment-engine check in
``federated_deploy.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "federated_runs"
CLINC = ROOT.parent / "shared" / "data" / "clinc150"


def _env() -> dict[str, Any]:
    import onnxruntime
    import torch

    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cpus": len(__import__("os").sched_getaffinity(0)),
        "note": "2-core machine shared with other benchmark runs; every run under nice -n 19",
    }


def write_result(dest: Path, result: dict[str, Any]) -> None:
    """``result`` with the command that produced it and the machine, as JSON."""
    cmd = "nice -n 19 .venv/bin/python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"command": cmd, "env": _env(), **result}, indent=2, default=str) + "\n")
    print(f"wrote {dest}")


# ---------------------------------------------------------------------------------------------------------------
# federated runs


class _PeakRss:
    """Peak of the summed RSS of this process and every descendant (Ray's workers included), sampled at 2 Hz."""

    def __init__(self) -> None:
        import threading

        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.5):
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total / 2**20)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def federate_run(args: argparse.Namespace) -> dict[str, Any]:
    import os

    from edgeslm.learn.federate import FederateConfig, federate
    from edgeslm.learn.lora import LoraSpec
    from edgeslm.recipe import DataConfig

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    config = FederateConfig(
        data=DataConfig(name=args.data, max_train_rows=args.max_train_rows),
        clients=args.clients,
        per_round=args.per_round,
        rounds=args.rounds,
        alpha=None if args.alpha <= 0 else args.alpha,
        strategy=args.strategy,
        mode=args.mode,
        lora=LoraSpec(rank=args.rank),
        poisoned=args.poisoned,
        dp_noise=args.dp_noise,
        dp_clip=args.dp_clip,
        secagg=args.secagg,
        eval_rows=args.eval_rows,
        local_epochs=args.local_epochs,
    )
    with tempfile.TemporaryDirectory() as tmp, _PeakRss() as rss:
        t = time.monotonic()
        result = federate(Path(args.build), Path(tmp) / "out", config)
        wall = time.monotonic() - t
    return {**result.summary, "wall_seconds": round(wall, 1), "tree_peak_rss_mb": round(rss.peak, 1)}


def central_run(args: argparse.Namespace) -> dict[str, Any]:
    """Centralised LoRA on every train row: the reference the federated runs are compared with."""
    import torch

    from edgeslm._train import train
    from edgeslm.data import load_dataset
    from edgeslm.learn.apps import Local, accuracy
    from edgeslm.learn.federate import FederateConfig, load_eval
    from edgeslm.learn.lora import LoraSpec, resolve_student
    from edgeslm.learn.personalize import PersonalizeConfig
    from edgeslm.recipe import DataConfig

    data = DataConfig(name=args.data, max_train_rows=args.max_train_rows)
    config = FederateConfig(data=data, lora=LoraSpec(rank=args.rank), eval_rows=args.eval_rows)
    student = resolve_student(Path(args.build))
    local = Local(student.checkpoint.path, "lora", config.lora, 0)
    torch.set_num_threads(2)
    ds = load_dataset(config.data)
    texts, labels = load_eval(config)
    before = accuracy(local, texts, labels)
    y = torch.tensor(ds.train.labels)

    def loss_fn(m: Any, feed: dict[str, torch.Tensor], idx: list[int]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(m(**feed), y[idx])

    settings = PersonalizeConfig(data=config.data, lora=config.lora, epochs=args.epochs, learning_rate=config.lr)
    stats = train(local.model, local.tokenizer, list(ds.train.texts), settings, loss_fn, "central LoRA")
    return {
        "accuracy": [before, accuracy(local, texts, labels)],
        "eval_rows": len(texts),
        "train": stats,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {p.stem: json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))}
    groups: dict[str, list[str]] = {}
    for name, r in runs.items():
        # the 10-round runs share the 1,000 eval rows; the scale and cost runs use fewer rows and rounds
        if "rounds" in r and r["config"]["rounds"] >= 10 and "scale" not in name:
            groups.setdefault(r["config"]["data"]["name"], []).append(name)
    for data, names in groups.items():
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name in names:
            acc = runs[name]["accuracy"]
            ax.plot(range(len(acc)), acc, marker=".", label=name)
        central = runs.get(f"central_{data}")
        if central:
            epochs = central["train"]["epochs_done"]
            ax.axhline(central["accuracy"][-1], color="k", ls="--", lw=1, label=f"centralised LoRA ({epochs} epoch)")
        ax.set_xlabel("round")
        ax.set_ylabel(f"accuracy ({runs[names[0]]['eval_rows']} {data} eval rows)")
        ax.set_title(f"federated LoRA on {data}: accuracy per round")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(RESULTS / f"federated_curves_{data}.png", dpi=110)
        print(f"wrote {RESULTS / f'federated_curves_{data}.png'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("federate", "central", "plot"))
    p.add_argument("--build", default="out/clinc150")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--name", default="run")
    p.add_argument("--data", default="clinc150")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--alpha", type=float, default=0.5, help="<= 0 for IID")
    p.add_argument("--strategy", default="fedavg")
    p.add_argument("--mode", default="lora")
    p.add_argument("--poisoned", type=float, default=0.0)
    p.add_argument("--dp-noise", type=float, default=None)
    p.add_argument("--dp-clip", type=float, default=1.0)
    p.add_argument("--secagg", action="store_true", help="SecAgg+ (Flower's legacy workflow)")
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--local-epochs", type=float, default=1.0)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-train-rows", type=int, default=None, help="a stratified subset of train (both runs)")
    args = p.parse_args()
    if args.what == "plot":
        plot()
        return
    result = federate_run(args) if args.what == "federate" else central_run(args)
    write_result(RUNS / f"{args.name}.json", result)


if __name__ == "__main__":
    main()
