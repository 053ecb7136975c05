"""The nano student: a real (tiny) teacher recipe built by the pipeline's steps, then a narrow student distilled
from it on a trimmed vocabulary; its recipe file is checked like any recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeslm.errors import ConfigError
from edgeslm.export.nano import NanoConfig, build_nano, load_nano_recipe, param_count
from edgeslm.recipe import DataConfig


def _teacher_toml(tmp: Path, base: Path, data: DataConfig) -> Path:
    path = tmp / "teacher.toml"
    path.write_text(
        f'base = "{base}"\n[data]\nname = "{data.name}"\ndev_path = "{data.dev_path}"\n'
        "[finetune]\nepochs = 1\nbatch_size = 16\n"
    )
    return path


def test_nano_recipe_builds_a_narrow_student_from_the_teachers_steps(
    tiny_base: Path, tiny_data: DataConfig, tmp_path: Path
) -> None:
    from edgeslm import _train
    from edgeslm.export.onnx import export_onnx
    from edgeslm.models import load_checkpoint
    from edgeslm.recipe import ExportConfig
    from edgeslm.runtime.predictor import load_tokenizer

    _teacher_toml(tmp_path, tiny_base, tiny_data)
    (tmp_path / "nano.toml").write_text(
        'teacher = "teacher.toml"\n[nano]\nhidden = 16\nlayers = 1\nheads = 2\nffn = 32\nvocab = 300\n'
        "max_length = 16\nteacher_rows = 96\nepochs = 1\nbatch_size = 32\n"
    )
    teacher, config = load_nano_recipe(tmp_path / "nano.toml")
    assert teacher == (tmp_path / "teacher.toml").resolve() and config.hidden == 16 and config.epochs == 1.0
    out = build_nano(teacher, tmp_path / "nano", config, cache=tmp_path / "cache")
    ckpt = load_checkpoint(out)
    cfg = ckpt.model.encoder.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.hidden_act) == (16, 1, 32, "relu")
    meta = json.loads((out / "edgeslm.json").read_text())
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    # the 300 most frequent train pieces + every single character and special token of the MiniLM vocabulary
    assert meta["trim"]["vocab_after"] == len(vocab) == cfg.vocab_size and 1994 < len(vocab) < 1994 + 300 + 10
    assert meta["train"]["train_rows"] == 96 and meta["config"]["data"]["dev_path"] == tiny_data.dev_path
    assert param_count(out) == sum(p.numel() for p in ckpt.model.parameters())
    assert param_count(out) < len(vocab) * 16 + 20_000  # the table dominates; no teacher-sized layer came along
    assert list((tmp_path / "cache").glob("nano-soft-*.npy"))  # the teacher's labels are cached for re-runs
    tok = load_tokenizer((out / "tokenizer.json").read_text(), 16)
    logits = _train.predict_logits(ckpt.model, tok, ["a fine film", "dull"])
    assert logits.shape == (2, 2) and np.isfinite(logits).all()
    onnx = export_onnx(out, tmp_path / "onnx", ExportConfig(data=tiny_data, check_rows=4))  # the usual next step
    assert json.loads((onnx / "edgeslm.json").read_text())["export"]["check"]["max_abs_diff"] < 1e-4


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('teacher = "t.toml"\n[nano]\nwidth = 3\n', r"unknown key `nano.width`"),
        ('teacher = "t.toml"\n[nano]\nhidden = "big"\n', r"`nano.hidden` must be int"),
        ('teacher = "t.toml"\n[nano]\nhidden = 130\nheads = 4\n', r"multiple of `nano.heads`"),
        ('teacher = "t.toml"\n[nano]\nvocab = 0\n', r"`nano.vocab` must be > 0"),
        ("[nano]\nhidden = 64\n", r'takes `teacher = "recipe.toml"`'),
        ('teacher = "t.toml"\n[nano\n', r"not valid TOML"),
    ],
)
def test_bad_nano_recipes_are_refused_with_the_key(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "n.toml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_nano_recipe(tmp_path / "n.toml")


def test_shipped_nano_recipe_is_within_two_million_parameters() -> None:
    """The recipe's shape, counted as BERT stores it (the trimmed vocabulary is ~6,000 pieces at vocab 4000)."""
    _, c = load_nano_recipe(Path(__file__).parents[1] / "benchmarks" / "nano_sst2.toml")
    layer = 4 * (c.hidden * c.hidden + c.hidden) + 2 * c.hidden * c.ffn + c.ffn + c.hidden + 4 * c.hidden
    embeddings = (6000 + c.max_length + 1) * c.hidden + 2 * c.hidden
    assert embeddings + c.layers * layer + c.hidden * 2 + 2 < 2_000_000
    assert NanoConfig().hidden == c.hidden  # the defaults are the shipped model
