"""`edgeslm personalize`: a real peft LoRA on a real (tiny) student, merged into the real INT8 bundle by onnxruntime."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import modules_after
from edgeslm.errors import BundleError, ConfigError, DataError
from edgeslm.learn.adapter import ADAPTER_FILE, ADAPTER_MANIFEST, AdaptedPredictor, load_adapter, merge
from edgeslm.learn.lora import LoraSpec
from edgeslm.learn.personalize import PersonalizeConfig, personalize
from edgeslm.recipe import DataConfig
from edgeslm.runtime import Predictor


@pytest.fixture(scope="module")
def user_csv(tmp_path_factory: pytest.TempPathFactory, sst2_csv: Path) -> Path:
    """A user who writes only short texts and mostly negative ones: a label and wording shift from SST-2 at large."""
    with sst2_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if len(r["text"].split()) <= 12]
    neg = [r for r in rows if r["label"] == "negative"]
    pos = [r for r in rows if r["label"] == "positive"][: len(neg) // 3]
    out = tmp_path_factory.mktemp("user") / "mine.csv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(neg + pos)
    return out


@pytest.fixture(scope="module")
def adapter(learn_build: Path, user_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    config = PersonalizeConfig(data=DataConfig(name=str(user_csv)), lora=LoraSpec(rank=4), epochs=2)
    personalize(learn_build, out, config)
    return out


def test_adapter_artifact_is_small_and_names_its_base_by_hash(adapter: Path, learn_build: Path) -> None:
    import hashlib

    meta = json.loads((adapter / ADAPTER_MANIFEST).read_text())
    base = hashlib.sha256((learn_build / "bundle" / "manifest.json").read_bytes()).hexdigest()
    assert meta["base"]["manifest_sha256"] == base
    assert meta["rank"] == 4
    assert {t["module"].rsplit(".", 1)[-1] for t in meta["targets"]} == {"query", "value", "head"}
    size = (adapter / ADAPTER_FILE).stat().st_size
    assert size == meta["files"][ADAPTER_FILE]["size"]
    assert size < (learn_build / "bundle" / "model.onnx").stat().st_size / 10
    assert meta["train"]["peak_rss_mb"] > 0 and meta["train"]["seconds"] > 0
    acc = meta["held_out_accuracy"]
    assert 0 <= acc["base"] <= 1 and 0 <= acc["adapted"] <= 1 and acc["rows"] > 0


def test_runtime_merge_matches_the_torch_lora_model(adapter: Path, learn_build: Path, user_csv: Path) -> None:
    """The ORT session with merged INT8 weights answers like the FP32 torch model with LoRA, within INT8 error."""
    import torch
    from peft import set_peft_model_state_dict  # noqa: F401  (peft must import: the adapter came from it)

    from edgeslm._train import predict_logits
    from edgeslm.learn.lora import resolve_student, set_lora_arrays, wrap

    texts = [r["text"] for r in csv.DictReader(user_csv.open())][:40]
    student = resolve_student(learn_build)
    base_torch = predict_logits(student.checkpoint.model, _tok(student), texts)
    model = wrap(student.checkpoint.model, LoraSpec(rank=4), 0)
    set_lora_arrays(model, load_adapter(adapter).tensors)
    with torch.no_grad():
        lora_torch = predict_logits(model, _tok(student), texts)
    base_ort = Predictor(learn_build / "bundle").logits(texts)
    adapted_ort = AdaptedPredictor(learn_build / "bundle", adapter).logits(texts)
    quant_error = np.abs(base_ort - base_torch).max()
    assert np.abs(lora_torch - base_torch).max() > 3 * quant_error  # the adapter moved the logits for real
    assert np.abs(adapted_ort - lora_torch).max() < 3 * quant_error + 1e-3  # and the merged bundle followed


def _tok(student: object) -> object:
    from edgeslm.runtime.predictor import load_tokenizer

    ckpt = student.checkpoint  # type: ignore[attr-defined]
    return load_tokenizer((ckpt.path / "tokenizer.json").read_text(), ckpt.max_length)


def test_a_zero_update_merges_to_the_exact_base_weights(adapter: Path, learn_build: Path) -> None:
    """Requantizing an unchanged weight gives back the stored INT8 values and scale: merging is lossless at zero."""
    loaded = load_adapter(adapter)
    model = (learn_build / "bundle" / "model.onnx").read_bytes()
    for t in loaded.targets:
        n = t.shape[0] * t.shape[1]
        base = np.frombuffer(model[t.offset : t.offset + n], dtype=np.int8).reshape(t.shape)
        merged = merge(base, t, np.zeros(t.shape, dtype=np.float32))
        assert np.array_equal(merged[t.initializer], base)
        assert t.scale is not None
        assert np.allclose(merged[t.scale], t.scale_value, rtol=1e-6)


def test_an_adapter_is_refused_on_another_base(adapter: Path, learn_build: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(learn_build / "bundle", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["extra"]["note"] = "a different release of the same model"
    (other / "manifest.json").write_text(json.dumps(manifest))
    Predictor(other)  # a valid bundle in its own right
    with pytest.raises(BundleError, match="was trained for the base bundle with manifest sha256"):
        AdaptedPredictor(other, adapter)


def test_a_damaged_adapter_is_refused(adapter: Path, learn_build: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    blob = bytearray((broken / ADAPTER_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (broken / ADAPTER_FILE).write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="does not match the hash"):
        AdaptedPredictor(learn_build / "bundle", broken)


@pytest.mark.parametrize("rank", [0, -2])
def test_rank_must_be_positive(rank: int) -> None:
    with pytest.raises(ConfigError, match=f"`rank` must be > 0, got {rank}"):
        LoraSpec(rank=rank)


def test_labels_the_bundle_does_not_know_are_refused(learn_build: Path, tmp_path: Path) -> None:
    data = tmp_path / "odd.csv"
    data.write_text("text,label\n" + "".join(f"row {i},{'meh' if i % 2 else 'negative'}\n" for i in range(30)))
    with pytest.raises(DataError, match=r"labels \['meh'\].*not among the bundle's 2 labels"):
        personalize(learn_build, tmp_path / "a", PersonalizeConfig(data=DataConfig(name=str(data))))
    assert not (tmp_path / "a").exists()


def test_the_adapter_runtime_loads_no_torch_and_no_onnx() -> None:
    bad = {"torch", "transformers", "onnx", "peft", "flwr"} & modules_after("import edgeslm.learn.adapter")
    assert not bad, bad


def test_cli_personalize_reports_and_refuses_a_bad_rank(learn_build: Path, user_csv: Path, tmp_path: Path) -> None:
    from edgeslm.cli import app

    runner = CliRunner()
    bad = runner.invoke(
        app, ["personalize", str(learn_build), "--data", str(user_csv), "--out", str(tmp_path / "x"), "--rank", "0"]
    )
    assert bad.exit_code == 1
    assert "`rank` must be > 0, got 0" in bad.output and "Traceback" not in bad.output
    ok = runner.invoke(
        app,
        [
            "personalize",
            str(learn_build),
            "--data",
            str(user_csv),
            "--out",
            str(tmp_path / "a"),
            "--rank",
            "2",
            "--epochs",
            "1",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "held-out accuracy" in ok.output
    assert AdaptedPredictor(learn_build / "bundle", tmp_path / "a").predict("a dull film").label in (
        "negative",
        "positive",
    )
