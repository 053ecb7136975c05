"""Where does a vector index library beat a plain numpy scan? The crossover behind ``IndexConfig.crossover``.

For growing collections of 384-d unit vectors, batch-1 queries, one thread: the exact numpy scan
(``VectorIndex`` backend ``exact``) against faiss HNSW (backend ``hnsw``, the shipped M / efConstruction / efSearch),
interleaved query by query so machine drift hits both alike. Reports median and p95 query time, HNSW build time and
recall@10 against the exact answer, and the smallest size where HNSW's median is lower. Because a query must be
embedded before it is searched, it also times that (batch 1) and reports the size where the exact scan grows past
10% of it: below that size search time is noise next to the model, and the exact scan (nothing to build, exact,
smaller on disk, no extra library) is the better choice; that size is ``IndexConfig.crossover``.

The vectors are real: CLINC150 train utterances embedded by the INT8 embedding bundle (15,000). Larger collections
add copies of them with Gaussian noise (sigma 0.05 per dimension, renormalised), so they keep the real clusters;
queries are CLINC150 test utterances. Exact-scan time does not depend on the data; HNSW recall does, a little.

    python benchmarks/embed_search_crossover.py --bundle out/minilm-embed [--sizes 1000,5000,...]

Writes benchmarks/results/embed_search_crossover.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread for numpy's BLAS and faiss alike, before they load
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import time
from pathlib import Path

import faiss
import numpy as np

from edgeslm._fs import write_json
from edgeslm.runtime import Predictor
from edgeslm.runtime.search import IndexConfig, VectorIndex

HERE = Path(__file__).parent
DATA = Path(os.environ.get("EDGESLM_DATA_DIR", HERE.parent.parent / "shared" / "data")) / "clinc150" / "data_full.json"


def _collection(base: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if n <= len(base):
        return base[:n]
    extra = base[rng.integers(0, len(base), n - len(base))] + rng.normal(0, 0.05, (n - len(base), base.shape[1]))
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    return np.concatenate([base, extra.astype(np.float32)])


def _ms(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)) * 1000, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="an INT8 embedding bundle of all-MiniLM-L6-v2")
    parser.add_argument("--sizes", default="50,100,200,500,1000,2000,5000,10000,15000,20000,50000,100000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "embed_search_crossover.json")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    data = json.loads(DATA.read_text())
    predictor = Predictor(args.bundle, threads=1)
    t = time.perf_counter()
    base = predictor.embed([u for u, _ in data["train"]])
    embed_s = time.perf_counter() - t
    query_texts = [u for u, _ in data["test"][: args.queries]]
    predictor.embed(query_texts[:5])  # warm-up
    embed_times = []
    for text in query_texts:
        start = time.perf_counter()
        predictor.embed([text])
        embed_times.append(time.perf_counter() - start)
    queries = predictor.embed(query_texts)
    embed_p50 = _ms(embed_times, 50)
    config = IndexConfig()
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        vectors = _collection(base, n, rng)
        exact = VectorIndex.build(vectors, IndexConfig(backend="exact"))
        t = time.perf_counter()
        hnsw = VectorIndex.build(vectors, IndexConfig(backend="hnsw"))
        build_s = time.perf_counter() - t
        times: dict[str, list[float]] = {"exact": [], "hnsw": []}
        recall = []
        for i, q in enumerate(queries):
            order = (exact, hnsw) if i % 2 == 0 else (hnsw, exact)
            found = {}
            for index in order:
                start = time.perf_counter()
                _, idx = index.search(q[None, :], 10)
                times[index.backend].append(time.perf_counter() - start)
                found[index.backend] = idx[0]
            recall.append(len(set(found["exact"]) & set(found["hnsw"])) / 10)
        row = {
            "n": n,
            "exact_ms_p50": _ms(times["exact"], 50),
            "exact_ms_p95": _ms(times["exact"], 95),
            "hnsw_ms_p50": _ms(times["hnsw"], 50),
            "hnsw_ms_p95": _ms(times["hnsw"], 95),
            "hnsw_build_s": round(build_s, 3),
            "hnsw_recall_at_10": round(float(np.mean(recall)), 4),
            "vectors_mb": round(vectors.nbytes / 1e6, 2),
            "hnsw_file_mb": round(len(hnsw.hnsw_bytes()) / 1e6, 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    faster = [r["n"] for r in rows if r["hnsw_ms_p50"] < r["exact_ms_p50"]]
    costly = [r["n"] for r in rows if r["exact_ms_p50"] > 0.1 * embed_p50 and r["n"] in faster]
    write_json(
        args.out,
        {
            "command": "python benchmarks/embed_search_crossover.py --bundle " + str(args.bundle),
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": 1},
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "dim": int(base.shape[1]),
            "real_vectors": len(base),
            "embed_train_s": round(embed_s, 1),
            "queries": len(queries),
            "config": {
                "hnsw_m": config.hnsw_m,
                "ef_construction": config.ef_construction,
                "ef_search": config.ef_search,
            },
            "query_embed_ms_p50": embed_p50,
            "query_embed_ms_p95": _ms(embed_times, 95),
            "rows": rows,
            "hnsw_faster_from_n": min(faster) if faster else None,
            "exact_scan_over_10pct_of_embed_from_n": min(costly) if costly else None,
        },
    )


if __name__ == "__main__":
    main()
