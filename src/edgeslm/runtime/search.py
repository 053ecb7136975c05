"""On-device semantic search: an index of unit-length vectors from an embedding bundle, searched by cosine.

Two backends behind one ``VectorIndex``. A small collection is searched exactly with one numpy matrix-vector product
(nothing to build, nothing approximate); a large one with a faiss HNSW graph, whose query time grows with log(n)
instead of n. ``backend="auto"`` switches at ``IndexConfig.crossover`` vectors: the size where the exact scan stops
being noise next to embedding the query itself (measured by ``benchmarks/embed_search_crossover.py``).

On disk an index is a folder written atomically (``_fs.atomic_dir``): ``texts.json``, ``index.json`` (backend,
sizes, and the sha256 of the bundle's model, so a query is never embedded by a different model than the collection)
and either ``vectors.npy`` (exact; float32, read with ``allow_pickle=False``) or ``hnsw.faiss`` (HNSW; faiss's own
serialization, read from bytes, which holds the vectors too, so they are not stored twice). No pickle anywhere.
Imports numpy (and faiss only for HNSW), never torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._fs import atomic_dir
from ..errors import ConfigError, DataError, MissingExtraError
from .predictor import Predictor

__all__ = ["Hit", "IndexConfig", "SemanticIndex", "VectorIndex", "build_index"]

INDEX_FORMAT = 1
BACKENDS = ("auto", "exact", "hnsw")
_VECTORS, _TEXTS, _META, _HNSW = "vectors.npy", "texts.json", "index.json", "hnsw.faiss"


@dataclass(frozen=True, kw_only=True)
class IndexConfig:
    backend: str = "auto"  # auto: exact below `crossover` vectors, HNSW from there on
    # Measured (benchmarks/results/embed_search_crossover.json; 384-d, batch-1 queries, one thread, this CPU): faiss
    # HNSW answers faster than the numpy scan at every size tried, from 50 vectors up, but below ~5,000 both take
    # under 0.3 ms, a tenth of embedding the query (2.9 ms), so the exact scan (exact, nothing to build, 15% smaller
    # on disk, no faiss) wins there. At 5,000 the scan reaches 10% of a query (0.31 ms), at 10,000 42% (1.2 ms), at
    # 100,000 several queries' worth; HNSW stays under 0.5 ms with recall@10 >= 0.97.
    crossover: int = 5_000
    hnsw_m: int = 32  # graph neighbours per node, within faiss's recommended 16-64; recall@10 0.97-1.0 measured
    ef_construction: int = 80  # build-time beam: 100,000 vectors build in about a minute on one core here
    ef_search: int = 64  # query-time beam: recall/latency knob, raised to at least k at query time

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"`backend` must be one of {', '.join(BACKENDS)}, got `{self.backend}`")
        if self.crossover < 1 or self.hnsw_m < 4 or self.ef_construction < 8 or self.ef_search < 1:
            raise ConfigError(
                "`crossover` >= 1, `hnsw_m` >= 4, `ef_construction` >= 8 and `ef_search` >= 1 are required"
            )

    def choose(self, n: int) -> str:
        """The backend for a collection of ``n`` vectors."""
        if self.backend != "auto":
            return self.backend
        return "hnsw" if n >= self.crossover else "exact"


@dataclass(frozen=True)
class Hit:
    index: int  # position of the text in the collection
    score: float  # cosine similarity to the query (vectors are unit length)
    text: str


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise MissingExtraError(
            "the HNSW index needs faiss; fix: pip install faiss-cpu, or use backend `exact` (numpy, any size)"
        ) from e
    return faiss


def _has_faiss() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise DataError(f"vectors must be a finite 2-D float array, got shape {arr.shape}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)  # bundles already normalise; this keeps scores cosines for any input


class VectorIndex:
    """Cosine top-k over a fixed set of vectors: exact (numpy) or approximate (faiss HNSW, inner product)."""

    def __init__(self, vectors: np.ndarray, backend: str, hnsw: Any = None, ef_search: int = 64) -> None:
        self.vectors = vectors  # (n, dim) float32, unit rows
        self.backend = backend
        self._hnsw = hnsw
        self.ef_search = ef_search

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig | None = None) -> VectorIndex:
        config = config or IndexConfig()
        unit = _unit_rows(vectors)
        backend = config.choose(len(unit))
        if backend == "hnsw" and config.backend == "auto" and not _has_faiss():
            backend = "exact"  # auto means the best this device has; exact is always right, only slower
        if backend == "exact":
            return cls(unit, "exact", ef_search=config.ef_search)
        faiss = _faiss()
        graph = faiss.IndexHNSWFlat(unit.shape[1], config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = config.ef_construction
        graph.add(unit)
        return cls(unit, "hnsw", graph, config.ef_search)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and row indices of the ``k`` nearest vectors per query, best first: two (q, k') arrays."""
        q = _unit_rows(queries)
        if q.shape[1] != self.dim:
            raise DataError(f"query vectors have {q.shape[1]} dimensions, the index {self.dim}; use the same bundle")
        k = min(k, len(self))
        if k < 1:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self.backend == "hnsw":
            self._hnsw.hnsw.efSearch = max(self.ef_search, k)
            scores, idx = self._hnsw.search(q, k)
            return scores, idx.astype(np.int64)
        sims = q @ self.vectors.T  # (q, n)
        if k < len(self):
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # O(n) selection, then sort only k
        else:
            part = np.tile(np.arange(len(self)), (len(q), 1))
        top = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)

    def hnsw_bytes(self) -> bytes:
        if self._hnsw is None:
            raise ConfigError("an exact index has no HNSW graph to serialize")
        return bytes(_faiss().serialize_index(self._hnsw))


class SemanticIndex:
    """A collection of texts, their vectors and a ``VectorIndex``, tied to the bundle that embedded them."""

    def __init__(self, index: VectorIndex, texts: list[str], meta: dict[str, Any]) -> None:
        self.index = index
        self.texts = texts
        self.meta = meta

    def search(self, predictor: Predictor, queries: Sequence[str], k: int = 5) -> list[list[Hit]]:
        """The ``k`` most similar texts to each query, best first."""
        _check_model(predictor, self.meta)
        if not queries:
            return []
        scores, idx = self.index.search(predictor.embed(list(queries)), k)
        return [
            [Hit(int(i), float(s), self.texts[int(i)]) for s, i in zip(srow, irow, strict=True) if i >= 0]
            for srow, irow in zip(scores, idx, strict=True)
        ]

    @classmethod
    def load(cls, path: Path) -> SemanticIndex:
        """Read an index folder written by ``build_index`` (no pickle: npy with allow_pickle=False, JSON, faiss)."""
        path = Path(path)
        try:
            meta = json.loads((path / _META).read_text(encoding="utf-8"))
            texts = json.loads((path / _TEXTS).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise DataError(
                f"`{path}` is not a search index (no {Path(e.filename).name}); make one with `edgeslm index`"
            ) from e
        except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
            raise DataError(f"search index `{path}` is damaged ({e}); rebuild it with `edgeslm index`") from e
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else "?"
            raise DataError(
                f"search index `{path}` has format {found}, this runtime reads {INDEX_FORMAT}; "
                "rebuild it with `edgeslm index`"
            )
        if meta.get("backend") not in ("exact", "hnsw"):
            raise DataError(f"search index `{path}` names an unknown backend `{meta.get('backend')}`; rebuild it")
        hnsw = None
        try:
            if meta["backend"] == "hnsw":
                faiss = _faiss()
                hnsw = faiss.deserialize_index(np.frombuffer((path / _HNSW).read_bytes(), dtype=np.uint8))
                vectors = hnsw.reconstruct_n(0, hnsw.ntotal)  # (n, dim) float32, from the graph's own storage
            else:
                vectors = np.load(path / _VECTORS, allow_pickle=False)
        except (
            OSError,
            ValueError,
            RuntimeError,
        ) as e:  # a bad .npy header is a ValueError, a bad faiss file a RuntimeError
            raise DataError(f"search index `{path}`: its vectors do not load ({e}); rebuild it") from e
        consistent = (
            isinstance(texts, list)
            and all(isinstance(t, str) for t in texts)
            and vectors.ndim == 2
            and vectors.dtype.kind == "f"
            and len(texts) == len(vectors) == meta.get("count")
        )
        if not consistent:
            raise DataError(f"search index `{path}` is inconsistent (texts, vectors and count differ); rebuild it")
        vectors = vectors.astype(np.float32, copy=False)
        return cls(VectorIndex(vectors, meta["backend"], hnsw, int(meta.get("ef_search", 64))), texts, meta)


def _model_sha(predictor: Predictor) -> str:
    return predictor.manifest.files[predictor.manifest.model].sha256


def _check_model(predictor: Predictor, meta: dict[str, Any]) -> None:
    if _model_sha(predictor) != meta.get("model_sha256"):
        raise ConfigError(
            f"this index was embedded by another model (bundle `{meta.get('bundle')}`); search it with that "
            "bundle, or rebuild the index with this one"
        )


def build_index(
    predictor: Predictor,
    texts: Sequence[str],
    out: Path,
    config: IndexConfig | None = None,
    *,
    bundle: str | Path = "",
    force: bool = False,
) -> SemanticIndex:
    """Embed ``texts`` with ``predictor`` (an embedding bundle) and write a search index folder at ``out``."""
    config = config or IndexConfig()
    texts = list(texts)
    if not texts:
        raise DataError("nothing to index: the collection has no texts")
    if not all(isinstance(t, str) for t in texts):
        raise DataError("the collection must be a list of str")
    index = VectorIndex.build(predictor.embed(texts), config)
    meta = {
        "format": INDEX_FORMAT,
        "backend": index.backend,
        "count": len(index),
        "dim": index.dim,
        "metric": "cosine",
        "ef_search": config.ef_search,
        "hnsw_m": config.hnsw_m if index.backend == "hnsw" else None,
        "bundle": str(Path(bundle).resolve()) if bundle else "",
        "model_sha256": _model_sha(predictor),
    }
    with atomic_dir(Path(out), force=force) as tmp:
        if index.backend == "exact":
            np.save(tmp / _VECTORS, index.vectors, allow_pickle=False)
        (tmp / _TEXTS).write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        if index.backend == "hnsw":
            (tmp / _HNSW).write_bytes(index.hnsw_bytes())
        (tmp / _META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return SemanticIndex(index, texts, meta)
