"""Distillation data beyond the labelled rows: nearest-neighbour word swaps (pure functions), unlabelled text files,
and a real distill that uses both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgeslm
from edgeslm.compress.augment import augment, neighbours
from edgeslm.errors import ConfigError
from edgeslm.recipe import DistillConfig


def _table() -> tuple[dict[str, int], np.ndarray]:
    vocab = {"[CLS]": 0, "good": 1, "great": 2, "bad": 3, "awful": 4, "##ly": 5, "a": 6, "film": 7}
    table = np.array(
        [[0, 0, 1], [1, 0.1, 0], [1, 0.2, 0], [-1, 0.1, 0], [-1, 0.2, 0], [1, 0.15, 0], [0, 1, 0], [0, 1, 0.1]],
        dtype=np.float32,
    )
    return vocab, table


def test_neighbours_are_nearest_whole_words() -> None:
    vocab, table = _table()
    near = neighbours(vocab, table, {"good", "bad", "a", "unknown"}, k=1)
    assert near == {"good": ["great"], "bad": ["awful"]}  # not "##ly" (a continuation), not "a" (one letter)


def test_augment_swaps_deterministically_and_drops_repeats() -> None:
    near = {"good": ["great"], "film": ["movie"]}
    out = augment(["a good film", "nothing here"], near, copies=10, p=0.5, seed=1)
    assert set(out) <= {"a great film", "a good movie", "a great movie"} and len(out) == len(set(out))
    assert out == augment(["a good film", "nothing here"], near, copies=10, p=0.5, seed=1)
    assert augment(["A Good film"], near, copies=1, p=1.0) == ["A great movie"]  # matched lower-cased


def test_augment_min_words_leaves_short_phrases_alone() -> None:
    near = {"good": ["great"], "film": ["movie"]}
    texts = ["good film", "a good film with a plot"]
    out = augment(texts, near, copies=10, p=0.5, seed=1, min_words=3)
    assert out and all(len(v.split()) == 6 for v in out)  # variants of the sentence only
    assert augment(texts, near, copies=10, p=0.5, seed=1, min_words=0) == augment(texts, near, 10, 1, 0.5)
    assert augment(texts, near, copies=10, min_words=7) == []


def test_augment_is_refused_with_a_black_box_teacher(tiny_data: edgeslm.DataConfig) -> None:
    with pytest.raises(ConfigError, match="`augment` needs a local teacher"):
        DistillConfig(data=tiny_data, augment=2, soft_targets="scores")
    with pytest.raises(ConfigError, match="`augment` must be a whole number of copies from 0 to 100, got -1"):
        DistillConfig(data=tiny_data, augment=-1)
    with pytest.raises(ConfigError, match="`augment_min_words` must be a whole number of words from 0 to 1000, got -2"):
        DistillConfig(data=tiny_data, augment=2, augment_min_words=-2)
    with pytest.raises(ConfigError, match="`augment` is 0: set `augment` too"):
        DistillConfig(data=tiny_data, augment_min_words=10)
    with pytest.raises(ConfigError, match="`unlabelled` needs a local teacher"):
        DistillConfig(data=tiny_data, unlabelled="texts.txt", soft_targets="scores")


def test_unlabelled_texts_are_read_and_keyed_by_content(tmp_path: Path) -> None:
    from edgeslm.data import read_texts
    from edgeslm.errors import DataError
    from edgeslm.pipeline import _texts_key

    file = tmp_path / "texts.txt"
    file.write_text("play some jazz\n\n  what is the tallest mountain  \n", encoding="utf-8")
    assert read_texts(file) == ("play some jazz", "what is the tallest mountain")
    config = DistillConfig(unlabelled=str(file))
    before = _texts_key("distill", "k", config)
    assert before not in (_texts_key("distill", "k", DistillConfig()), _texts_key("distill", "k2", config))
    file.write_text("play some jazz\n", encoding="utf-8")  # same path, other texts: another build
    assert _texts_key("distill", "k", config) != before
    for content, error in [(None, "does not exist"), (b"\n \n", "holds no text"), (b"\xff\xfe", "is not UTF-8")]:
        bad = tmp_path / "bad.txt"
        bad.unlink(missing_ok=True)
        if content is not None:
            bad.write_bytes(content)
        with pytest.raises(DataError, match=error):
            read_texts(bad)


def test_distill_trains_on_augmented_and_unlabelled_rows(
    tiny_base: Path, tiny_data: edgeslm.DataConfig, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from edgeslm.compress.distill import _augmented, distill
    from edgeslm.data import load_dataset
    from edgeslm.finetune import finetune
    from edgeslm.models import load_checkpoint
    from edgeslm.recipe import FinetuneConfig
    from edgeslm.runtime import load_tokenizer

    tmp = tmp_path_factory.mktemp("augment")
    teacher = finetune(tiny_base, tmp / "teacher", FinetuneConfig(data=tiny_data, epochs=1, batch_size=16))
    unlabelled = tmp / "unlabelled.txt"
    train = load_dataset(tiny_data).train.texts
    texts = tuple(" ".join(reversed(t.split())) for t in train[:50])  # train's words, so they have neighbours
    unlabelled.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    config = DistillConfig(data=tiny_data, num_layers=1, epochs=1, batch_size=16, augment=2, unlabelled=str(unlabelled))
    meta = json.loads((distill(teacher, tmp / "student", config) / "edgeslm.json").read_text())
    # up to two variants of each of the 400 train rows and of each unlabelled text (in-domain text too)
    tokenizer = load_tokenizer((teacher / "tokenizer.json").read_text(), 64)
    model = load_checkpoint(teacher).model
    assert meta["augmented_rows"] == len(_augmented(model, tokenizer, train + texts, config)) > 0
    assert meta["augmented_rows"] > len(_augmented(model, tokenizer, train, config))
    assert meta["unlabelled_rows"] == 50
    assert meta["train"]["train_rows"] == 400 + meta["augmented_rows"] + 50


def test_build_stops_on_a_missing_unlabelled_file_before_training(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgeslm.cli import app

    for section in ("distill", "trim"):
        recipe = tmp_path / f"{section}.toml"
        recipe.write_text(f'[{section}]\nunlabelled = "{tmp_path / "missing.txt"}"\n')
        out = tmp_path / section / "o"
        result = CliRunner().invoke(app, ["build", "--recipe", str(recipe), "--out", str(out)])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "missing.txt` does not exist" in " ".join(result.output.split())
        assert len(result.output.strip().splitlines()) <= 2  # one message (rich may wrap it)
        assert not (tmp_path / section).exists()  # stopped before the teacher: nothing in the cache either
