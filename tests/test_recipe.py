from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from edgeslm.errors import ConfigError
from edgeslm.recipe import (
    DataConfig,
    DistillConfig,
    FinetuneConfig,
    Int8DynamicConfig,
    Int8StaticConfig,
    Recipe,
    load_recipe,
    recipe_from_dict,
)

DEMO = Path(__file__).resolve().parents[1] / "src" / "edgeslm" / "recipes" / "demo.toml"


def test_defaults_need_no_file() -> None:
    r = load_recipe()
    assert r == Recipe()
    assert r.base == "minilm" and r.data.name == "sst2" and isinstance(r.quantize, Int8DynamicConfig)


def test_data_section_reaches_every_step() -> None:
    r = load_recipe(overrides={"data.name": "clinc150", "data.max_train_rows": 50})
    for step in (r.finetune, r.distill, r.export, r.eval):
        assert step.data.name == "clinc150" and step.data.max_train_rows == 50


def test_demo_recipe_loads() -> None:
    r = load_recipe(DEMO)
    assert r.distill.num_layers == 2 and r.data.max_train_rows == 4000


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    f = tmp_path / "r.toml"
    f.write_text(
        '[distill]\nnum_layers = 2\nlayers = [0, 5]\n[quantize]\nmethod = "int8-static"\ncalibration_rows = 8\n'
    )
    r = load_recipe(f, {"distill.num_layers": 1, "data.name": "x.csv"})
    assert r.distill.num_layers == 1 and r.distill.layers == (0, 5)
    assert isinstance(r.quantize, Int8StaticConfig) and r.quantize.calibration_rows == 8
    assert r.quantize.data.name == "x.csv"


def test_to_dict_round_trips() -> None:
    r = load_recipe(overrides={"quantize.method": "int8-static", "finetune.epochs": 3.0})
    raw = r.to_dict()
    raw.pop("device")  # None is not representable in TOML; absence means the default
    for section in raw.values():
        if isinstance(section, dict):
            for key in [k for k, v in section.items() if v is None]:
                section.pop(key)
    assert recipe_from_dict(raw) == r


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[finetune]\nepochs = 0\n", "`epochs` must be > 0, got 0.0"),
        ("[finetune]\nepoch = 1\n", "unknown key `finetune.epoch`"),
        ("[nope]\n", "unknown section or key `nope`"),
        ('[finetune]\nepochs = "two"\n', "`finetune.epochs` must be float, got 'two'"),
        ('[export]\npadding_bias = "yes"\n', "`export.padding_bias` must be bool, got 'yes'"),
        ('[quantize]\nmethod = "int3"\n', "`quantize.method` must be one of int8-dynamic, int8-static"),
        ("[data]\ndev_fraction = 1.5\n", "`dev_fraction` must be between 0 and 1"),
        ("[distill]\nkd_weight = 0\nce_weight = 0\n", "cannot both be 0"),
        ("[data\n", "is not valid TOML"),
    ],
)
def test_bad_recipes_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_recipe(f)


def test_missing_recipe_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(Path("/nonexistent/recipe.toml"))


def test_configs_are_frozen() -> None:
    for cfg in (DataConfig(), FinetuneConfig(), DistillConfig()):
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.seed = 1  # type: ignore[misc]


def test_demo_recipe_is_valid_toml() -> None:
    assert "data" in tomllib.loads(DEMO.read_text())
