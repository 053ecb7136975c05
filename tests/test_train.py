"""The shared training loop's batching: batches group texts of similar length, so little of each batch is padding."""

from __future__ import annotations

import random
from pathlib import Path

from edgeslm import _train
from edgeslm.runtime.predictor import load_tokenizer


def test_lengths_count_real_tokens_with_a_padding_tokenizer(tiny_base: Path) -> None:
    tok = load_tokenizer((tiny_base / "tokenizer.json").read_text(), 64)  # pads a batch to its longest text
    texts = ["good", "a rather long and winding sentence about a film", "bad movie"]
    assert _train.token_lengths(tok, texts) == [3, 11, 4]  # [CLS] … [SEP], no padding counted


def test_grouped_batches_hold_similar_lengths() -> None:
    lengths = [random.Random(0).randint(2, 64) for _ in range(6400)]
    batches = _train.grouped_batches(lengths, 32, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(6400))
    spread = sorted(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread[len(spread) // 2] <= 2  # the median batch spans at most 2 tokens of length
