"""Summarise a note without the cloud: the most central sentences of a document, by sentence-embedding similarity.

Extractive, LexRank-style: every sentence is embedded by an embedding bundle, the sentences form a graph weighted
by their (non-negative) cosine similarity, and PageRank on that graph scores how much each sentence says what the
others say. The top sentences, skipping near-duplicates of ones already picked, are returned in document order.
Nothing is generated, so nothing is invented; it runs on numpy and the bundle only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError
from .predictor import Predictor

__all__ = ["Summary", "SummaryConfig", "split_sentences", "summarize"]

# Hand-written on purpose: the well-kept splitters (nltk punkt, spaCy, pysbd) need model downloads or weigh far more
# than the runtime; for notes, "end punctuation + space + capital/digit/quote" or a line break is enough.
# The two lookbehinds keep a closing quote or bracket with its sentence ('He said "stop." Then').
_SENTENCE_END = re.compile(
    r"(?:(?<=[.!?…。！？])|(?<=[.!?…。！？][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9À-ÖØ-Þ])"
    r"|\n\s*\n|\n(?=\s*[-*•\d])"
)
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "St.", "No.", "Fig.")


@dataclass(frozen=True, kw_only=True)
class SummaryConfig:
    sentences: int = 3  # how many sentences to keep; a phone notification shows about three
    damping: float = 0.85  # PageRank's usual teleport factor; lower spreads the score more evenly
    redundancy: float = 0.9  # skip a sentence this similar (cosine) to one already picked
    min_chars: int = 3  # pieces shorter than this (stray bullets, "OK.") are not candidates

    def __post_init__(self) -> None:
        if self.sentences < 1:
            raise ConfigError(f"`sentences` must be at least 1, got {self.sentences}")
        if not 0.0 < self.damping < 1.0:
            raise ConfigError(f"`damping` must be within (0, 1), got {self.damping}")
        if not 0.0 < self.redundancy <= 1.0:
            raise ConfigError(f"`redundancy` must be within (0, 1], got {self.redundancy}")


@dataclass(frozen=True)
class Summary:
    sentences: tuple[str, ...]  # the picked sentences, in document order
    indices: tuple[int, ...]  # their positions in `split_sentences(text)`
    scores: tuple[float, ...]  # centrality of every sentence of the document (sums to 1)

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after ., ! or ? before a capital, and at blank lines and list items."""
    pieces = [p.strip() for p in _SENTENCE_END.split(text) if p and p.strip()]
    merged: list[str] = []
    for piece in pieces:  # "e.g. Paris" is not a sentence end; glue it back
        if merged and merged[-1].endswith(_ABBREVIATIONS):
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged


def centrality(vectors: np.ndarray, damping: float = 0.85) -> np.ndarray:
    """PageRank over the cosine-similarity graph of unit ``vectors`` (n, dim): one score per row, summing to 1."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0)
    sims = np.clip(vectors @ vectors.T, 0.0, None).astype(np.float64)  # unrelated sentences cast no vote
    np.fill_diagonal(sims, 0.0)
    out = sims.sum(axis=1, keepdims=True)
    # A sentence unlike all others votes uniformly (the standard dangling-node rule).
    transition = np.where(out > 0, sims / np.where(out > 0, out, 1.0), 1.0 / n)
    scores = np.full(n, 1.0 / n)
    for _ in range(100):  # converges in ~20 steps for damping 0.85; numpy here is smaller than any graph library
        nxt = (1 - damping) / n + damping * (transition.T @ scores)
        if np.abs(nxt - scores).sum() < 1e-9:
            return nxt
        scores = nxt
    return scores


def summarize(predictor: Predictor, text: str, config: SummaryConfig | None = None) -> Summary:
    """The ``config.sentences`` most central sentences of ``text`` (an embedding bundle's ``Predictor``)."""
    config = config or SummaryConfig()
    if not isinstance(text, str):
        raise DataError("summarize() takes the document as one str")
    sentences = split_sentences(text)
    candidates = [i for i, s in enumerate(sentences) if len(s) >= config.min_chars]
    if not candidates:
        raise DataError("nothing to summarise: the document has no sentences")
    vectors = predictor.embed([sentences[i] for i in candidates])
    scores = centrality(vectors, config.damping)
    picked: list[int] = []  # positions within `candidates`
    for j in np.argsort(-scores, kind="stable"):
        if len(picked) == config.sentences:
            break
        if picked and float((vectors[picked] @ vectors[j]).max()) >= config.redundancy:
            continue
        picked.append(int(j))
    chosen = sorted(candidates[j] for j in picked)
    full = np.zeros(len(sentences))
    full[candidates] = scores
    return Summary(tuple(sentences[i] for i in chosen), tuple(chosen), tuple(float(s) for s in full))
