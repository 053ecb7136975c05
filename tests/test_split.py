"""Split learning: a real student cut in two, both halves run by onnxruntime, payloads on the wire, and the leak."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import modules_after
from edgeslm.errors import BundleError, ConfigError, DataError
from edgeslm.learn.inversion import fit_probe, nearest_embedding, probe, recovery
from edgeslm.learn.split import SplitDevice, SplitServer, pack, unpack
from edgeslm.learn.split_export import export_split
from edgeslm.runtime import Predictor


@pytest.fixture(scope="module")
def texts(sst2_csv: Path) -> list[str]:
    with sst2_csv.open() as f:
        return [r["text"] for r in csv.DictReader(f)][:300]


@pytest.fixture(scope="module")
def split_int8(learn_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_split(learn_build, tmp_path_factory.mktemp("split") / "k1", 1)


@pytest.mark.parametrize("k", [0, 1])
def test_the_fp32_halves_compose_to_the_whole_student(
    learn_build: Path, texts: list[str], tmp_path: Path, k: int
) -> None:
    """back(front(x)) through onnxruntime and an fp32 payload equals the torch student: the cut loses nothing."""
    from edgeslm._train import predict_logits
    from edgeslm.learn.lora import resolve_student
    from edgeslm.runtime.predictor import load_tokenizer

    folder = export_split(learn_build, tmp_path / "split", k, int8=False)
    device, server = SplitDevice(folder), SplitServer(folder)
    got = server.logits(device.send(texts[:40], "fp32"))
    ckpt = resolve_student(learn_build).checkpoint
    tokenizer = load_tokenizer((ckpt.path / "tokenizer.json").read_text(), ckpt.max_length)
    want = predict_logits(ckpt.model, tokenizer, texts[:40])
    assert np.abs(got - want).max() < 1e-4


def test_int8_halves_and_int8_payloads_agree_with_the_bundle(
    split_int8: Path, learn_build: Path, texts: list[str]
) -> None:
    device, server = SplitDevice(split_int8), SplitServer(split_int8)
    bundle = Predictor(learn_build / "bundle").logits(texts[:100]).argmax(1)
    for codec in ("fp32", "fp16", "int8"):
        pred = server.logits(device.send(texts[:100], codec)).argmax(1)
        assert np.mean(pred == bundle) >= 0.9, codec
    payload = device.send(["a dull film"], "int8")[0]
    n = len(device.tokenizer.encode("a dull film").ids)  # real tokens only, [CLS] and [SEP] included
    assert len(payload) == 9 + n * (device.hidden + 4)
    assert len(device.send(["a dull film"], "fp32")[0]) == 9 + n * device.hidden * 4
    assert server.predict([payload])[0] in ("negative", "positive")
    with pytest.raises(DataError, match="more than this split's"):
        server.logits([pack(np.ones((server.max_length + 1, server.hidden), dtype=np.float32))])


def test_payloads_round_trip_within_their_codec_error() -> None:
    rows = np.random.default_rng(0).normal(size=(7, 32)).astype(np.float32) * 3
    assert np.array_equal(unpack(pack(rows, "fp32")), rows)
    assert np.allclose(unpack(pack(rows, "fp16")), rows, rtol=1e-3, atol=1e-3)
    step = np.abs(rows).max(axis=1, keepdims=True) / 127
    assert (np.abs(unpack(pack(rows, "int8")) - rows) <= step / 2 + 1e-6).all()


def test_malformed_payloads_are_refused() -> None:
    good = pack(np.ones((3, 8), dtype=np.float32), "int8")
    with pytest.raises(DataError, match="shorter than its"):
        unpack(good[:4])
    with pytest.raises(DataError, match="needs .* bytes after the header"):
        unpack(good[:-1])
    with pytest.raises(DataError, match="not an edgeslm activation payload"):
        unpack(b"XXXX" + good[4:])
    with pytest.raises(DataError, match="hidden size 8, this server's half takes 32"):
        unpack(good, hidden=32)
    with pytest.raises(DataError, match="NaN or Inf"):
        unpack(pack(np.full((2, 8), np.inf, dtype=np.float32), "fp32"))
    with pytest.raises(DataError, match="unknown activation codec"):
        pack(np.ones((2, 8)), "int4")


def test_a_damaged_half_and_a_bad_cut_are_refused(split_int8: Path, learn_build: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(split_int8, broken)
    blob = bytearray((broken / "device" / "front.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (broken / "device" / "front.onnx").write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="does not match the hash"):
        SplitDevice(broken)
    SplitServer(broken)  # the other half is intact
    with pytest.raises(BundleError, match="not the device half"):
        SplitDevice(broken / "server")
    with pytest.raises(ConfigError, match=r"`k` must be in 0\.\.1"):
        export_split(learn_build, tmp_path / "x", 2)
    assert not (tmp_path / "x").exists()


def test_the_activations_give_the_text_away(split_int8: Path, learn_build: Path, texts: list[str]) -> None:
    """The server reads the tokens back from int8 payloads: the probe is fitted on other (public) rows only."""
    from edgeslm.learn.lora import resolve_student

    table = resolve_student(learn_build).checkpoint.model.encoder.embeddings.word_embeddings.weight.detach().numpy()
    device = SplitDevice(split_int8)
    special = [device.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]")]

    def rows_ids(batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
        acts = [unpack(p) for p in device.send(batch, "int8")]
        ids = [device.tokenizer.encode(t).ids[: len(a)] for t, a in zip(batch, acts, strict=True)]
        return np.concatenate(acts), np.concatenate(ids)

    public_rows, public_ids = rows_ids(texts[100:])
    rows, ids = rows_ids(texts[:100])
    guessed = probe(fit_probe(public_rows, public_ids, table), rows, table)
    rate = recovery(guessed, ids, special)
    chance = recovery(np.random.default_rng(0).integers(0, len(table), len(ids)), ids, special)
    assert rate > 0.5 and chance < 0.01
    assert recovery(nearest_embedding(table[ids], table), ids, special) == 1.0  # the attack's own sanity


def test_the_device_half_loads_no_torch_and_no_onnx() -> None:
    loaded = modules_after("import edgeslm.learn.split, edgeslm.learn.inversion")
    bad = {"torch", "transformers", "onnx", "peft", "flwr"} & loaded
    assert not bad, bad


def test_cli_split_writes_both_halves_and_refuses_a_bad_cut(learn_build: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgeslm.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["split", str(learn_build), "--out", str(tmp_path / "bad"), "--layers", "5"])
    assert bad.exit_code == 1 and "`k` must be in 0..1" in bad.output and "Traceback" not in bad.output
    ok = runner.invoke(app, ["split", str(learn_build), "--out", str(tmp_path / "ok"), "-k", "0"])
    assert ok.exit_code == 0, ok.output
    assert SplitDevice(tmp_path / "ok").layers == 0 and SplitServer(tmp_path / "ok").labels == ("negative", "positive")
