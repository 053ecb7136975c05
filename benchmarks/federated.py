"""Learning on the device, measured: LoRA personalization and federated learning on Flower.

    .venv/bin/python benchmarks/federated.py personalize [--build out/clinc150] [--domains banking,travel,...]
    .venv/bin/python benchmarks/federated.py latency     [--build out/clinc150]
    .venv/bin/python benchmarks/federated.py federate    --name NAME [--build out/clinc150] [--data clinc150]
                                                         [--clients 100 --per-round 10 --rounds 10 --alpha 0.5 ...]
    .venv/bin/python benchmarks/federated.py central     --name NAME [--build ...] [--data ...] [--epochs 1]
    .venv/bin/python benchmarks/federated.py plot

personalize: for each CLINC150 domain, a user who writes only about that domain (10 train rows per intent of it,
from CLINC150 train), or about it and often out of scope (``home+oos``: 100 more oos train rows); the adapter is
trained in a fresh process (its peak RSS is that process's), and the base bundle and the base bundle + adapter
(merged at load by onnxruntime) are scored on the user's test rows (the shift) and on 1,000 test rows of
everything else (elsewhere).
latency: batch-1, one-thread latency of the base bundle, the adapter merged at load, and the adapter kept separate
(a graph with the LoRA side branches x·Aᵀ·Bᵀ added beside every adapted MatMul, which is what ORT's native
adapters compute), on 300 real test sentences, interleaved, after warm-up.
federate / central: one Flower simulation, or centralised LoRA on all the train rows (the same student, targets,
rank and central evaluation rows), each into benchmarks/results/federated_runs/NAME.json; `plot` draws the curves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

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


# ---------------------------------------------------------------------------------------------------------------
# personalization


def _user_files(domain: str, per_intent: int, work: Path) -> tuple[Path, list[str], list[str], list[str], list[str]]:
    """The user's train CSV, and (texts, labels) of the user's test rows and of 1,000 test rows of everything else.

    ``home`` is a user who only asks about the home domain; ``home+oos`` one who also asks, often, for things the
    assistant does not do (CLINC150's out-of-scope class, 100 of its train rows): a label distribution shift.
    """
    import csv

    raw = json.loads((CLINC / "data_full.json").read_text())
    name, _, extra = domain.partition("+")
    intents = set(json.loads((CLINC / "domains.json").read_text())[name]) | ({"oos"} if extra == "oos" else set())
    rng = random.Random(0)
    train = [r for r in raw["train"] + raw["oos_train"] if r[1] in intents]
    rng.shuffle(train)
    kept: dict[str, list[str]] = {}
    for text, label in train:
        if len(kept.setdefault(label, [])) < (100 if label == "oos" else per_intent):
            kept[label].append(text)
    path = work / f"{domain}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((t, y) for y, ts in kept.items() for t in ts)
    test = raw["test"] + raw["oos_test"]
    shift = [r for r in test if r[1] in intents]
    elsewhere = random.Random(1).sample([r for r in test if r[1] not in intents], 1000)
    return path, [t for t, _ in shift], [y for _, y in shift], [t for t, _ in elsewhere], [y for _, y in elsewhere]


_TRAIN_CHILD = """
import json, sys, time
from pathlib import Path
from edgeslm.learn.lora import LoraSpec
from edgeslm.learn.personalize import PersonalizeConfig, personalize
from edgeslm.recipe import DataConfig
src, data, out, rank = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
r = personalize(Path(src), Path(out), PersonalizeConfig(data=DataConfig(name=data), lora=LoraSpec(rank=rank)))
print(json.dumps(r.meta["train"]))
"""


def personalize_bench(build: Path, domains: list[str], rank: int, per_intent: int) -> dict[str, Any]:
    from edgeslm.learn.adapter import AdaptedPredictor
    from edgeslm.runtime import Predictor

    base = Predictor(build / "bundle", threads=1)
    index = {n: i for i, n in enumerate(base.labels)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for domain in domains:
            csv_path, st, sy, et, ey = _user_files(domain, per_intent, work)
            out = work / f"adapter-{domain}"
            t = time.monotonic()
            child = subprocess.run(
                [sys.executable, "-c", _TRAIN_CHILD, str(build), str(csv_path), str(out), str(rank)],
                check=True,
                capture_output=True,
                text=True,
            )
            wall = time.monotonic() - t
            train = json.loads(child.stdout.strip().splitlines()[-1])
            adapted = AdaptedPredictor(build / "bundle", out, threads=1)

            def acc(p: Predictor, texts: list[str], labels: list[str]) -> float:
                pred = p.logits(texts).argmax(1)
                return float(np.mean(pred == np.asarray([index[y] for y in labels])))

            row = {
                "domain": domain,
                "user_train_rows": sum(1 for _ in csv_path.open()) - 1,
                "shift_rows": len(st),
                "elsewhere_rows": len(et),
                "shift_base": acc(base, st, sy),
                "shift_adapted": acc(adapted, st, sy),
                "elsewhere_base": acc(base, et, ey),
                "elsewhere_adapted": acc(adapted, et, ey),
                "adapter_bytes": (out / "adapter.safetensors").stat().st_size,
                "train_seconds": train["seconds"],
                "process_seconds": round(wall, 1),
                "peak_rss_mb": train["peak_rss_mb"],
                "peak_rss_before_training_mb": train.get("peak_rss_before_training_mb"),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {
        "build": str(build),
        "rank": rank,
        "targets": ["query", "value", "head"],
        "per_intent": per_intent,
        "bundle_bytes": (build / "bundle" / "model.onnx").stat().st_size,
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------------------------
# latency: base vs merged at load vs kept separate


def _separate_graph(model_bytes: bytes, adapter: Any) -> bytes:
    """The base INT8 graph plus, for every adapted MatMul, y += scaling · (x Aᵀ) Bᵀ in FP32 beside it."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_model_from_string(model_bytes)
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    by_init = {t.initializer: t for t in adapter.targets}
    new_nodes, new_inits = [], []
    for node in list(g.node):
        if node.op_type != "MatMulInteger" or node.input[1] not in by_init:
            continue
        t = by_init[node.input[1]]
        x = producers[node.input[0]].input[0]  # the FP32 input of DynamicQuantizeLinear
        cast = consumers[node.output[0]][0]
        mul = next(c for c in consumers[cast.output[0]] if c.op_type == "Mul")
        y = mul.output[0]
        key = t.module.replace(".", "_")
        a = adapter.tensors[f"{t.module}.lora_A"].T.astype(np.float32)  # (in, r)
        b = (adapter.scaling * adapter.tensors[f"{t.module}.lora_B"].T).astype(np.float32)  # (r, out)
        new_inits += [numpy_helper.from_array(a, f"{key}_A"), numpy_helper.from_array(b, f"{key}_B")]
        for c in consumers.get(y, []):
            c.input[:] = [f"{y}_lora" if i == y else i for i in c.input]
        new_nodes += [
            helper.make_node("MatMul", [x, f"{key}_A"], [f"{key}_xa"]),
            helper.make_node("MatMul", [f"{key}_xa", f"{key}_B"], [f"{key}_d"]),
            helper.make_node("Add", [y, f"{key}_d"], [f"{y}_lora"]),
        ]
    g.initializer.extend(new_inits)
    g.node.extend(new_nodes)  # onnxruntime sorts the graph itself when it resolves it
    return model.SerializeToString()


def latency_bench(build: Path, rows: int = 300) -> dict[str, Any]:
    import onnxruntime as ort

    from edgeslm.learn.adapter import AdaptedPredictor, load_adapter
    from edgeslm.runtime import Predictor
    from edgeslm.runtime.predictor import encode, session_options

    raw = json.loads((CLINC / "data_full.json").read_text())
    texts = [t for t, _ in raw["test"]][:rows]
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, *_ = _user_files("banking", 10, Path(tmp))
        out = Path(tmp) / "adapter"
        subprocess.run(
            [sys.executable, "-c", _TRAIN_CHILD, str(build), str(csv_path), str(out), "8"],
            check=True,
            capture_output=True,
        )
        adapter = load_adapter(out)
        t = time.perf_counter()
        base = Predictor(build / "bundle", threads=1)
        load_base = time.perf_counter() - t
        t = time.perf_counter()
        merged = AdaptedPredictor(build / "bundle", adapter, threads=1)
        load_merged = time.perf_counter() - t
        model_bytes = (build / "bundle" / "model.onnx").read_bytes()
        t = time.perf_counter()
        sep_session = ort.InferenceSession(
            _separate_graph(model_bytes, adapter), session_options(1), providers=["CPUExecutionProvider"]
        )
        load_sep = time.perf_counter() - t
        tok = base._tokenizer

        def run_sep(text: str) -> np.ndarray:
            return sep_session.run(None, encode(tok, [text]))[0]

        runners = {"base": lambda s: base.logits([s]), "merged": lambda s: merged.logits([s]), "separate": run_sep}
        check = max(float(np.abs(merged.logits([s]) - run_sep(s)).max()) for s in texts[:50])
        agree = float(np.mean([merged.logits([s]).argmax() == run_sep(s).argmax() for s in texts[:300]]))
        times: dict[str, list[float]] = {k: [] for k in runners}
        for s in texts[:30]:  # warm-up
            for f in runners.values():
                f(s)
        for s in texts:
            for name, f in runners.items():  # interleaved, so load changes hit all three alike
                t = time.perf_counter()
                f(s)
                times[name].append((time.perf_counter() - t) * 1000)
    out_rows = {
        k: {"p50_ms": float(np.median(v)), "p95_ms": float(np.percentile(v, 95)), "mean_ms": float(np.mean(v))}
        for k, v in times.items()
    }
    return {
        "build": str(build),
        "rows": len(texts),
        "threads": 1,
        "latency": out_rows,
        "load_seconds": {"base": load_base, "merged": load_merged, "separate": load_sep},
        "merged_vs_separate_max_abs_logit_diff": check,
        "merged_vs_separate_label_agreement": agree,
        "ratio_separate_vs_merged_p50": out_rows["separate"]["p50_ms"] / out_rows["merged"]["p50_ms"],
    }


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


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {p.stem: json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))}
    groups: dict[str, list[str]] = {}
    for name, r in runs.items():
        if "rounds" in r and r["config"]["rounds"] > 1 and "scale" not in name:  # scale runs use other eval rows
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
    p.add_argument("what", choices=("personalize", "latency", "federate", "central", "deploy", "plot"))
    p.add_argument("--build", default="out/clinc150")
    p.add_argument("--domains", default="banking,travel,kitchen_and_dining,auto_and_commute,utility")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--per-intent", type=int, default=10)
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
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--local-epochs", type=float, default=1.0)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-train-rows", type=int, default=None, help="a stratified subset of train (both runs)")
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    RUNS.mkdir(exist_ok=True)
    cmd = "nice -n 19 .venv/bin/python benchmarks/federated.py " + " ".join(sys.argv[1:])
    if args.what == "plot":
        plot()
        return
    if args.what == "personalize":
        result = personalize_bench(Path(args.build), args.domains.split(","), args.rank, args.per_intent)
        dest = RESULTS / "federated_personalize.json"
    elif args.what == "latency":
        result = latency_bench(Path(args.build))
        dest = RESULTS / "federated_adapter_latency.json"
    elif args.what == "deploy":
        result = deploy_check()
        dest = RESULTS / "federated_deploy.json"
    elif args.what == "federate":
        result = federate_run(args)
        dest = RUNS / f"{args.name}.json"
    else:
        result = central_run(args)
        dest = RUNS / f"{args.name}.json"
    dest.write_text(json.dumps({"command": cmd, "env": _env(), **result}, indent=2, default=str) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
