"""Split learning, measured: bytes per example, the accuracy cost of quantized activations, and what they leak.

For each cut k (0 = embeddings only on the device ... depth = every layer on the device), the student of a build is
cut with ``edgeslm.learn.split_export.export_split`` and run as device half + server half through onnxruntime:

- bytes per example the device sends (fp32 / fp16 / int8 activations of the real tokens) against the text's UTF-8
  bytes (sending the text to a server) and against the model (running everything on the device);
- accuracy of the split pipeline per codec on the eval rows, and agreement with the bundle;
- token recovery by the server: nearest word embedding, and a ridge probe fitted on public text (SST-2) run through
  the device half, applied to the int8 payloads of private rows (CLINC150 test).

    nice -n 19 .venv/bin/python benchmarks/split_learning.py [--build out/clinc150 --data clinc150 --ks 0,1,2,3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeslm._fs import write_json
from edgeslm.data import load_dataset
from edgeslm.learn.inversion import fit_probe, nearest_embedding, probe, recovery
from edgeslm.learn.lora import resolve_student
from edgeslm.learn.split import CODECS, SplitDevice, SplitServer, pack, unpack
from edgeslm.learn.split_export import export_split
from edgeslm.recipe import DataConfig
from edgeslm.runtime import Predictor

RESULTS = Path(__file__).resolve().parent / "results"


def _stats(values: list[int]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 1), "median": float(np.median(values)), "max": int(max(values))}


def _rows_and_ids(device: SplitDevice, texts: list[str], codec: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Every real token's row (as the server receives it, through ``codec``; None: fp32 on the attacker's side)."""
    rows, ids = [], []
    for i in range(0, len(texts), 64):
        chunk = texts[i : i + 64]
        acts = device.activations(chunk)
        for text, h in zip(chunk, acts, strict=True):
            rows.append(unpack(pack(h, codec)) if codec else h)
            ids.append(device.tokenizer.encode(text).ids[: len(h)])
    return np.concatenate(rows), np.concatenate([np.asarray(x, dtype=np.int64) for x in ids])


def _latency_ms(fn: Any, texts: list[str]) -> float:
    for t in texts[:5]:
        fn([t])
    times = []
    for t in texts:
        t0 = time.perf_counter()
        fn([t])
        times.append((time.perf_counter() - t0) * 1e3)
    return round(float(np.median(times)), 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    build = Path(args.build)
    student = resolve_student(build)
    table = student.checkpoint.model.encoder.embeddings.word_embeddings.weight.detach().numpy().astype(np.float32)
    depth = len(student.checkpoint.model.encoder.encoder.layer)
    ks = [int(k) for k in args.ks.split(",")] if args.ks else list(range(depth + 1))
    ds = load_dataset(DataConfig(name=args.data))
    pick = np.random.default_rng(0).permutation(len(ds.eval))[: args.eval_rows]
    texts = [ds.eval.texts[i] for i in pick]
    labels = np.asarray([ds.eval.labels[i] for i in pick])
    public_ds = load_dataset(DataConfig(name=args.public))
    public = list(public_ds.train.texts[: args.public_rows])
    bundle = Predictor(student.bundle, threads=1)
    bundle_logits = bundle.logits(texts)
    model_bytes = (student.bundle / bundle.manifest.model).stat().st_size
    text_bytes = [len(t.encode("utf-8")) for t in texts]
    result: dict[str, Any] = {
        "command": "nice -n 19 .venv/bin/python benchmarks/split_learning.py " + " ".join(sys.argv[1:]),
        "build": str(build),
        "data": args.data,
        "public": args.public,
        "eval_rows": len(texts),
        "public_rows": len(public),
        "attack_rows": args.attack_rows,
        "depth": depth,
        "hidden": int(table.shape[1]),
        "vocab": int(table.shape[0]),
        "bundle": {
            "model_bytes": model_bytes,
            "accuracy": float(np.mean(bundle_logits.argmax(1) == labels)),
            "latency_ms_p50": _latency_ms(bundle.logits, texts[: args.latency_rows]),
        },
        "text_bytes": _stats(text_bytes),
        "splits": [],
    }
    with tempfile.TemporaryDirectory(prefix="edgeslm-split-") as work:
        for k in ks:
            t0 = time.monotonic()
            folder = export_split(build, Path(work) / f"k{k}", k)
            device, server = SplitDevice(folder, threads=1), SplitServer(folder, threads=1)
            special = [device.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")]
            entry: dict[str, Any] = {
                "k": k,
                "export_s": round(time.monotonic() - t0, 1),
                "front_bytes": (folder / "device" / "front.onnx").stat().st_size,
                "back_bytes": (folder / "server" / "back.onnx").stat().st_size,
                "device_latency_ms_p50": _latency_ms(device.activations, texts[: args.latency_rows]),
                "codecs": {},
            }
            reference = None
            for codec in CODECS:
                payloads = [p for i in range(0, len(texts), 64) for p in device.send(texts[i : i + 64], codec)]
                logits = np.concatenate([server.logits(payloads[i : i + 64]) for i in range(0, len(payloads), 64)])
                pred = logits.argmax(1)
                if reference is None:
                    reference = pred
                sizes = [len(p) for p in payloads]
                entry["codecs"][codec] = {
                    "payload_bytes": _stats(sizes),
                    "payload_over_text": round(float(np.mean(sizes)) / float(np.mean(text_bytes)), 1),
                    "accuracy": float(np.mean(pred == labels)),
                    "agreement_with_fp32_split": float(np.mean(pred == reference)),
                    "agreement_with_bundle": float(np.mean(pred == bundle_logits.argmax(1))),
                    "examples_to_outweigh_back_half": int(entry["back_bytes"] // np.mean(sizes)),
                }
            # the attack: the server fits on public text run through the front, then reads private int8 payloads
            t1 = time.monotonic()
            pub_rows, pub_ids = _rows_and_ids(device, public, None)
            victim = texts[: args.attack_rows]
            rows, ids = _rows_and_ids(device, victim, "int8")
            nearest = nearest_embedding(rows, table)
            fitted = fit_probe(pub_rows, pub_ids, table, ridge=args.ridge)
            probed = probe(fitted, rows, table)
            lengths = [len(device.tokenizer.encode(t).ids) for t in victim[:3]]
            examples, start = [], 0
            for text, n in zip(victim[:3], lengths, strict=True):
                examples.append(
                    {"text": text, "recovered": device.tokenizer.decode(probed[start : start + n].tolist())}
                )
                start += n
            entry["attack"] = {
                "tokens": int(np.sum(~np.isin(ids, special))),
                "public_tokens": len(pub_ids),
                "nearest_embedding_recovery": recovery(nearest, ids, special),
                "probe_recovery": recovery(probed, ids, special),
                "probe_recovery_public_vocab_only": recovery(
                    probed[np.isin(ids, pub_ids)], ids[np.isin(ids, pub_ids)], special
                ),
                "seconds": round(time.monotonic() - t1, 1),
                "examples": examples,
            }
            result["splits"].append(entry)
            a, c = entry["attack"], entry["codecs"]
            print(
                f"k={k}: int8 {c['int8']['payload_bytes']['mean']:.0f} B/example "
                f"({c['int8']['payload_over_text']}x text), acc fp32 {c['fp32']['accuracy']:.4f} "
                f"int8 {c['int8']['accuracy']:.4f}; recovery nearest {a['nearest_embedding_recovery']:.3f} "
                f"probe {a['probe_recovery']:.3f}",
                file=sys.stderr,
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="out/clinc150")
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--public", default="sst2", help="the attacker's public text (its train rows)")
    parser.add_argument("--ks", default="", help="comma-separated cuts; default every k from 0 to the depth")
    parser.add_argument("--eval-rows", type=int, default=1000)
    parser.add_argument("--public-rows", type=int, default=4000)
    parser.add_argument("--attack-rows", type=int, default=500)
    parser.add_argument("--latency-rows", type=int, default=200)
    parser.add_argument("--ridge", type=float, default=1.0)
    parser.add_argument("--out", default=str(RESULTS / "split_learning.json"))
    args = parser.parse_args()
    write_json(Path(args.out), run(args))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
