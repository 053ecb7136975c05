"""Quantization-aware training, for real on the tiny model: the INT8 it simulates is the INT8 `quantize` ships."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

import edgeslm
from edgeslm.compress.distill import distill
from edgeslm.compress.qat import simulated_int8
from edgeslm.compress.trim import trim_vocab
from edgeslm.export.onnx import export_onnx
from edgeslm.finetune import finetune
from edgeslm.models import load_checkpoint
from edgeslm.pipeline import _quantization_aware
from edgeslm.recipe import (
    DistillConfig,
    ExportConfig,
    FinetuneConfig,
    Int8DynamicConfig,
    QatConfig,
    Recipe,
    TrimConfig,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, tiny_data: edgeslm.DataConfig) -> list[Path]:
    """A teacher and its 1-layer student."""
    root = tmp_path_factory.mktemp("qat")
    config = FinetuneConfig(data=tiny_data, epochs=1, batch_size=16, learning_rate=1e-3)
    teacher = finetune(tiny_base, root / "teacher", config)
    student = DistillConfig(data=tiny_data, num_layers=1, epochs=1, batch_size=16, learning_rate=1e-3)
    return [teacher, distill(teacher, root / "student", student)]


@pytest.mark.parametrize("per_channel", [False, True])
def test_simulated_int8_computes_what_onnxruntime_ships(
    trained: list[Path], tiny_data: edgeslm.DataConfig, tmp_path: Path, per_channel: bool
) -> None:
    import onnxruntime as ort
    import torch

    from edgeslm.runtime import encode, load_tokenizer

    student = trained[1]
    config = Int8DynamicConfig(per_channel=per_channel)
    onnx = export_onnx(student, tmp_path / "onnx", ExportConfig(data=tiny_data, check_rows=8))
    int8 = edgeslm.quantize(onnx, tmp_path / "int8", config)
    session = ort.InferenceSession(str(int8 / "model.onnx"), providers=["CPUExecutionProvider"])
    model = load_checkpoint(student).model
    tok = load_tokenizer((student / "tokenizer.json").read_text(), 16)
    simulated, plain = [], []
    for text in edgeslm.load_dataset(tiny_data).eval.texts[:20]:  # batch 1, as the device runs
        feed = encode(tok, [text])
        shipped = session.run(None, feed)[0]
        tensors = {k: torch.from_numpy(v) for k, v in feed.items()}
        with torch.no_grad():
            with simulated_int8(model, config):
                simulated.append(np.abs(model(**tensors).numpy() - shipped).max())
            plain.append(np.abs(model(**tensors).numpy() - shipped).max())
    assert max(simulated) < 1e-4  # the same rounding, to float error
    assert max(plain) > 1e-3  # ... while FP32 really differs from INT8, so the check above is not trivial
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())  # a plain model again after the block
    assert set(model.state_dict()) == set(load_file(str(student / "model.safetensors")))


def test_qat_continues_a_trimmed_student_at_its_shape(
    trained: list[Path], tiny_data: edgeslm.DataConfig, tmp_path: Path
) -> None:
    """QAT follows the trim (pipeline order): the trimmed table, tokenizer and trim record survive it."""
    teacher, untrimmed = trained
    student = trim_vocab(untrimmed, tmp_path / "trimmed", TrimConfig(data=tiny_data, enabled=True, alias=True))
    config = DistillConfig(data=tiny_data, num_layers=1, epochs=1, batch_size=16, learning_rate=1e-3)
    aware = distill(teacher, tmp_path / "qat", config, init=student, simulate=Int8DynamicConfig())
    meta = json.loads((aware / "edgeslm.json").read_text())
    assert meta["simulated"]["per_channel"] is False and meta["first_stage"] == str(student)
    assert meta["trim"] == json.loads((student / "edgeslm.json").read_text())["trim"]
    assert (aware / "tokenizer.json").read_bytes() == (student / "tokenizer.json").read_bytes()
    before, after = load_file(str(student / "model.safetensors")), load_file(str(aware / "model.safetensors"))
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    assert not np.allclose(before["head.weight"], after["head.weight"])  # it trained
    with pytest.raises(edgeslm.ConfigError, match="pass `init`"):
        distill(teacher, tmp_path / "bad", config, simulate=Int8DynamicConfig())


class _FakeSteps:
    """`Steps` as `_quantization_aware` sees it: canned accuracies per folder, a record of QAT builds."""

    def __init__(self, recipe: Recipe, accuracy: dict[str, float]) -> None:
        self.recipe, self.accuracy, self.qat_builds, self.log = recipe, accuracy, 0, print

    def measure(self, path: Path, _config: object) -> dict[str, Any]:
        return {"accuracy": self.accuracy[path.name]}

    def student(self, _teacher: Path, _key: str, *, qat: bool) -> dict[str, Path]:
        assert qat
        self.qat_builds += 1
        return {"student": Path("q"), "student_onnx": Path("q-fp32"), "student_quantized": Path("q-int8")}


PTQ = {"student": Path("s"), "student_onnx": Path("fp32"), "student_quantized": Path("int8")}


@pytest.mark.parametrize(
    ("accuracy", "qat", "builds", "shipped"),
    [
        ({"fp32": 0.90, "int8": 0.897}, QatConfig(), 0, "s"),  # lost 0.3 points: PTQ is good enough
        ({"fp32": 0.90, "int8": 0.89, "q-fp32": 0.90, "q-int8": 0.899}, QatConfig(), 1, "q"),  # lost 1 point
        ({"fp32": 0.90, "int8": 0.89, "q-fp32": 0.90, "q-int8": 0.88}, QatConfig(), 1, "s"),  # QAT did worse: PTQ
        ({"fp32": 0.90, "int8": 0.89}, QatConfig(max_drop=2.0), 0, "s"),
        ({}, QatConfig(mode="off"), 0, "s"),
    ],
)
def test_qat_runs_when_int8_costs_more_than_the_tolerance_and_ships_the_better(
    accuracy: dict[str, float], qat: QatConfig, builds: int, shipped: str
) -> None:
    steps = _FakeSteps(Recipe(qat=qat), accuracy)
    folders, info = _quantization_aware(steps, Path("t"), "k", PTQ)  # type: ignore[arg-type]
    assert steps.qat_builds == builds and folders["student"] == Path(shipped) and info["mode"] == qat.mode
    assert info["used"] == (shipped == "q")
    if accuracy:
        assert info["ptq_drop_points"] == pytest.approx(100 * (accuracy["fp32"] - accuracy["int8"]))


def test_qat_config_errors() -> None:
    with pytest.raises(edgeslm.ConfigError, match="`mode` must be one of auto, always, off, got 'sometimes'"):
        edgeslm.load_recipe(None, {"qat.mode": "sometimes"})
    with pytest.raises(edgeslm.ConfigError, match="`max_drop` must be a number >= 0"):
        edgeslm.load_recipe(None, {"qat.max_drop": -1.0})
    with pytest.raises(edgeslm.ConfigError, match="simulates int8-dynamic, but `quantize.method` is .int4-weight-only"):
        edgeslm.load_recipe(None, {"qat.mode": "always", "quantize.method": "int4-weight-only"})
    assert edgeslm.load_recipe(None, {"quantize.method": "int4-weight-only"}).qat.mode == "auto"  # auto: skipped


def test_cli_names_the_recipe_section_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgeslm.cli import app

    recipe = tmp_path / "r.toml"
    recipe.write_text('[qat]\nmode = "always"\n[quantize]\nmethod = "int4-weight-only"\n')
    result = CliRunner().invoke(app, ["build", "--recipe", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert '`[qat] mode = "always"` simulates int8-dynamic' in " ".join(result.output.split())  # not eaten as markup
    assert not (tmp_path / "o").exists()
