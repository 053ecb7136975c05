"""Is the INT8 embedding bundle as good as its FP32 teacher? Cosine per sentence and CLINC150 retrieval.

The teacher is the torch all-MiniLM-L6-v2 with mean pooling and normalisation (``edgeslm.embedding``'s
``MeanPooledEncoder``); the bundle is what ``edgeslm embed-build`` writes (dynamic INT8, per-channel). On real
sentences (CLINC150 in-scope test utterances and SST-2 dev sentences) it reports the cosine between the two
vectors of each sentence, and on CLINC150 the nearest-neighbour intent accuracy of each: the 15,000 in-scope train
utterances are the index, the 4,500 in-scope test utterances the queries, cosine similarity, exact search (numpy,
``edgeslm.runtime.search``), 1-NN and a 5-NN majority vote.

    python benchmarks/embed_quality.py --bundle out/minilm-embed

Writes benchmarks/results/embed_quality.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from edgeslm._fs import write_json
from edgeslm.bundle import verify_bundle
from edgeslm.embedding import _load, teacher_embeddings
from edgeslm.runtime import Predictor
from edgeslm.runtime.search import IndexConfig, VectorIndex

HERE = Path(__file__).parent
DATA = Path(os.environ.get("EDGESLM_DATA_DIR", HERE.parent.parent / "shared" / "data"))


def _sst2_dev() -> list[str]:
    with (DATA / "sst2" / "dev.tsv").open(encoding="utf-8") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def _knn_accuracy(train: np.ndarray, train_y: list[str], test: np.ndarray, test_y: list[str]) -> dict[str, float]:
    index = VectorIndex.build(train, IndexConfig(backend="exact"))
    _, idx = index.search(test, 5)
    top1 = [train_y[row[0]] for row in idx]
    vote = [Counter(train_y[i] for i in row).most_common(1)[0][0] for row in idx]  # ties: the nearer label first
    return {
        "nn1_accuracy": round(float(np.mean([a == b for a, b in zip(top1, test_y, strict=True)])), 4),
        "nn5_vote_accuracy": round(float(np.mean([a == b for a, b in zip(vote, test_y, strict=True)])), 4),
        "top1_rows": idx[:, 0].tolist(),  # dropped before writing; used for agreement
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="an embedding bundle of all-MiniLM-L6-v2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "embed_quality.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    manifest, _ = verify_bundle(args.bundle)
    clinc = json.loads((DATA / "clinc150" / "data_full.json").read_text())
    train_x, train_y = [u for u, _ in clinc["train"]], [y for _, y in clinc["train"]]
    test_x, test_y = [u for u, _ in clinc["test"]], [y for _, y in clinc["test"]]
    sst2 = _sst2_dev()

    model, folder = _load(manifest.recipe.get("base", "minilm"))
    tokenizer_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
    predictor = Predictor(args.bundle, threads=args.threads)
    vectors: dict[str, dict[str, np.ndarray]] = {"teacher_fp32": {}, "bundle_int8": {}}
    seconds: dict[str, float] = {}
    for name, texts in (("train", train_x), ("test", test_x), ("sst2", sst2)):
        t = time.perf_counter()
        vectors["teacher_fp32"][name] = teacher_embeddings(model, tokenizer_json, manifest.max_length, texts)
        seconds[f"teacher_{name}"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        vectors["bundle_int8"][name] = predictor.embed(texts)
        seconds[f"bundle_{name}"] = round(time.perf_counter() - t, 1)

    cosine = {}
    for name in ("test", "sst2"):
        a, b = vectors["teacher_fp32"][name], vectors["bundle_int8"][name]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        cosine[name] = {
            "rows": len(cos),
            "min": round(float(cos.min()), 4),
            "p1": round(float(np.percentile(cos, 1)), 4),
            "p5": round(float(np.percentile(cos, 5)), 4),
            "mean": round(float(cos.mean()), 4),
        }
    retrieval = {name: _knn_accuracy(v["train"], train_y, v["test"], test_y) for name, v in vectors.items()}
    agree = np.mean(
        np.array(retrieval["teacher_fp32"].pop("top1_rows")) == np.array(retrieval["bundle_int8"].pop("top1_rows"))
    )
    result = {
        "command": f"python benchmarks/embed_quality.py --bundle {args.bundle}",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "bundle": {"precision": manifest.metrics.get("precision"), "max_length": manifest.max_length},
        "data": {"clinc150": "data_full.json in-scope, train 15,000 as index, test 4,500 as queries", "sst2": "dev"},
        "cosine_bundle_vs_teacher": {"clinc150_test": cosine["test"], "sst2_dev": cosine["sst2"]},
        "clinc150_retrieval": retrieval,
        "same_nearest_neighbour": round(float(agree), 4),
        "embed_seconds": seconds,
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
