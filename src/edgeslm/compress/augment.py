"""Data augmentation for distillation: new in-domain sentences made from the train texts, labelled by the teacher.

TinyBERT (Jiao et al. 2020, section 3.1) swaps words for their nearest neighbours in an embedding space and lets the
teacher label the result: the student then matches the teacher on many more inputs near the task's own, which is
what a small student lacks most (SST-2's train rows are mostly short phrases; its dev rows are whole sentences).

Written here because the augmentation libraries (nlpaug, TextAttack) need GloVe/word2vec files or a masked language
model fetched from a hub; the neighbours below come from the teacher's own input-embedding table, which every
checkpoint carries, so nothing is downloaded. Pure functions on arrays and strings.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

__all__ = ["augment", "nearest", "neighbours"]

SWAP_P = 0.4  # chance that each swappable word is replaced (TinyBERT's p_t)
TOP_K = 15  # a word's replacement is drawn from its 15 nearest whole words (TinyBERT's K)


def _is_word(token: str) -> bool:
    """Whole alphabetic wordpieces only: no `##` continuations, no [CLS]-style specials, no single letters."""
    return len(token) > 1 and token.isalpha()


def nearest(table: np.ndarray, rows: list[int], pool: list[int], k: int) -> np.ndarray:
    """For each of ``rows`` of ``table``, the positions in ``pool`` of its ``k`` most cosine-similar rows, best first.

    1,024 rows at a time: against a 20k pool that is ~80 MB of similarities, not the whole square. Also used by
    `trim` (k = 1) to alias a dropped wordpiece to its nearest kept one.
    """
    unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    cand = unit[pool]
    out = np.empty((len(rows), k), dtype=np.int64)
    for start in range(0, len(rows), 1024):
        sims = unit[rows[start : start + 1024]] @ cand.T
        if k == 1:
            out[start : start + 1024, 0] = sims.argmax(axis=1)
            continue
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start : start + 1024] = np.take_along_axis(top, order, axis=1)
    return out


def neighbours(vocab: dict[str, int], table: np.ndarray, words: set[str], k: int = TOP_K) -> dict[str, list[str]]:
    """For each of ``words`` that is one whole wordpiece, its ``k`` nearest whole wordpieces by cosine similarity."""
    candidates = sorted((t for t in vocab if _is_word(t)), key=lambda t: vocab[t])
    asked = sorted(w for w in words if w in vocab and _is_word(w))
    best = nearest(table, [vocab[w] for w in asked], [vocab[t] for t in candidates], k + 1)  # + itself
    return {
        word: [candidates[j] for j in row if candidates[j] != word][:k] for word, row in zip(asked, best, strict=True)
    }


def augment(
    texts: Sequence[str],
    near: dict[str, list[str]],
    copies: int,
    seed: int = 0,
    p: float = SWAP_P,
    min_words: int = 0,
) -> list[str]:
    """Up to ``copies`` new variants of each text, each swapping every word found in ``near`` with probability ``p``.

    Variants equal to their text or to an earlier variant are dropped, so a text with nothing to swap adds nothing.
    Texts of fewer than ``min_words`` words get none (their budget goes to the sentences a device will read).
    Matching is on the lower-cased word (the MiniLM vocabulary is uncased); whitespace splits words.
    """
    rng = random.Random(seed)
    seen = set(texts)
    out: list[str] = []
    for text in texts:
        words = text.split()
        if len(words) < min_words:
            continue
        swappable = [i for i, w in enumerate(words) if w.lower() in near]
        if not swappable:
            continue
        for _ in range(copies):
            new = list(words)
            for i in swappable:
                if rng.random() < p:
                    new[i] = rng.choice(near[words[i].lower()])
            variant = " ".join(new)
            if variant not in seen:
                seen.add(variant)
                out.append(variant)
    return out
