"""What split-learning activations leak: recover the input tokens from the layer-k rows a device sends.

Two attacks by the server, which knows the device half's weights (it shipped them) and has public text:

- ``nearest_embedding``: each row's nearest word embedding by cosine. No training; it works while the residual
  stream still carries the token's embedding, which in BERT is every layer.
- ``fit_probe`` + ``probe``: a ridge-regression map from layer-k rows to word embeddings, fitted on the device
  half's activations of *public* text (the attacker runs the front itself), then the nearest embedding. Linear and
  closed-form, so it is cheap; a stronger attacker only does better.

``recovery`` scores either as the share of real tokens ([CLS]/[SEP] excluded) recovered exactly. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Probe", "fit_probe", "nearest_embedding", "probe", "recovery"]

_CHUNK = 2048  # rows per similarity block: 2048 x 30522 float32 is 250 MB


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def nearest_embedding(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """For each (hidden,) row, the id of the most cosine-similar row of ``table`` (vocab, hidden)."""
    table_u = _unit(table)
    rows_u = _unit(rows)
    out = np.empty(len(rows_u), dtype=np.int64)
    for i in range(0, len(rows_u), _CHUNK):
        out[i : i + _CHUNK] = (rows_u[i : i + _CHUNK] @ table_u.T).argmax(axis=1)
    return out


@dataclass(frozen=True)
class Probe:
    """A linear map from layer-k rows to the word-embedding space."""

    weight: np.ndarray  # (hidden + 1, hidden): the last row is the bias


def fit_probe(rows: np.ndarray, ids: np.ndarray, table: np.ndarray, ridge: float = 1.0) -> Probe:
    """Least squares (with an L2 penalty ``ridge``) from ``rows`` to the unit embeddings of their tokens ``ids``."""
    x = np.hstack([np.asarray(rows, dtype=np.float64), np.ones((len(rows), 1))])
    y = _unit(table)[np.asarray(ids)].astype(np.float64)
    gram = x.T @ x + ridge * np.eye(x.shape[1])
    return Probe(np.linalg.solve(gram, x.T @ y).astype(np.float32))


def probe(p: Probe, rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The probe's guess of each row's token id."""
    mapped = np.hstack([np.asarray(rows, dtype=np.float32), np.ones((len(rows), 1), dtype=np.float32)]) @ p.weight
    return nearest_embedding(mapped, table)


def recovery(guess: np.ndarray, truth: np.ndarray, ignore: Sequence[int] = ()) -> float:
    """Share of tokens guessed exactly, leaving out ``ignore`` (the special tokens every input has)."""
    keep = ~np.isin(truth, np.asarray(list(ignore), dtype=np.int64))
    if not keep.any():
        return 0.0
    return float(np.mean(np.asarray(guess)[keep] == np.asarray(truth)[keep]))
