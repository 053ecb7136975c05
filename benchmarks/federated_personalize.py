"""LoRA personalization on one device, measured: the gain per user shift, and merged vs separate adapter latency.

    .venv/bin/python benchmarks/federated_personalize.py personalize [--build out/clinc150] [--domains banking,...]
    .venv/bin/python benchmarks/federated_personalize.py latency     [--build out/clinc150]

personalize: for each CLINC150 domain, a user who writes only about that domain (10 train rows per intent of it,
from CLINC150 train), or about it and often out of scope (``home+oos``: 100 more oos train rows); the adapter is
trained in a fresh process (its peak RSS is that process's), and the base bundle and the base bundle + adapter
(merged at load by onnxruntime) are scored on the user's test rows (the shift) and on 1,000 test rows of
everything else (elsewhere).
latency: batch-1, one-thread latency of the base bundle, the adapter merged at load, and the adapter kept separate
(a graph with the LoRA side branches x·Aᵀ·Bᵀ added beside every adapted MatMul, which is what ORT's native
adapters compute), on 300 real test sentences, interleaved, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from federated import CLINC, RESULTS, write_result

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("personalize", "latency"))
    p.add_argument("--build", default="out/clinc150")
    p.add_argument("--domains", default="banking,travel,kitchen_and_dining,auto_and_commute,utility")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--per-intent", type=int, default=10)
    args = p.parse_args()
    if args.what == "personalize":
        result = personalize_bench(Path(args.build), args.domains.split(","), args.rank, args.per_intent)
        write_result(RESULTS / "federated_personalize.json", result)
    else:
        write_result(RESULTS / "federated_adapter_latency.json", latency_bench(Path(args.build)))


if __name__ == "__main__":
    main()
