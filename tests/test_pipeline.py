"""The whole pipeline, for real, on a tiny random BERT and 400 real SST-2 rows."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import edgeslm
from edgeslm import Predictor, build
from edgeslm.recipe import DistillConfig, EvalConfig, ExportConfig, FinetuneConfig, Recipe


def _recipe(base: Path, data: edgeslm.DataConfig) -> Recipe:
    return Recipe(
        base=str(base),
        data=data,
        finetune=FinetuneConfig(epochs=2, learning_rate=1e-3, batch_size=16),
        distill=DistillConfig(num_layers=1, epochs=1, batch_size=16, learning_rate=1e-3),
        export=ExportConfig(check_rows=16),
        eval=EvalConfig(latency_rows=20, warmup_rows=2),
    )


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, tiny_data: edgeslm.DataConfig) -> Path:
    out = tmp_path_factory.mktemp("build") / "out"
    build(_recipe(tiny_base, tiny_data), out)
    return out


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_build_writes_bundle_and_report(built: Path) -> None:
    assert sorted(p.name for p in built.iterdir()) == ["bundle", "report.html", "report.json"]
    manifest = json.loads((built / "bundle" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["labels"] == ["negative", "positive"]
    assert set(manifest["files"]) == {"model.onnx", "tokenizer.json"}
    assert manifest["recipe"]["distill"]["num_layers"] == 1
    assert 0 <= manifest["metrics"]["accuracy"] <= 1 and manifest["metrics"]["p50_ms"] > 0
    assert sum(manifest["metrics"]["label_distribution"].values()) == pytest.approx(1.0)
    for golden in manifest["extra"]["golden"]:  # what the updater's health check replays on the device
        assert Predictor(built / "bundle").predict(golden["text"]).label == golden["label"]
    report = json.loads((built / "report.json").read_text())
    names = [m["name"] for m in report["models"]]
    assert names == ["teacher", "teacher one-click", "student", "student bundle"]
    assert report["qat"]["mode"] == "auto" and "ptq_drop_points" in report["qat"]  # measured, QAT or not
    for m in report["models"]:
        assert m["eval_rows"] == 100 and m["latency_rows"] == 20 and m["threads"] == 1
        assert m["p95_ms"] >= m["p50_ms"] > 0 and m["peak_rss_mb"] > 10 and m["size_mb"] > 0 and m["parameters"] > 0
    by = {m["name"]: m for m in report["models"]}
    assert by["student bundle"]["size_mb"] < by["student"]["size_mb"] < by["teacher"]["size_mb"]
    assert by["student bundle"]["parameters"] < by["teacher"]["parameters"]
    assert report["export_check"]["max_abs_diff"] < 1e-4 and report["export_check"]["label_agreement"] == 1.0
    # The runtime process (no torch) needs far less memory than the torch teacher's.
    assert by["student bundle"]["peak_rss_mb"] < by["teacher"]["peak_rss_mb"]


def test_report_html_is_self_contained(built: Path) -> None:
    page = (built / "report.html").read_text()
    assert page.count("<svg") == 4 and "<table>" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "<script" not in page


def test_predictor_single_and_batch(built: Path) -> None:
    p = Predictor(built / "bundle", threads=1)
    one = p.predict("a gorgeous , witty , seductive movie .")
    many = p.predict(["a gorgeous , witty , seductive movie .", "the worst film of the year ."])
    assert one.label in ("negative", "positive") and 0.5 <= one.score <= 1
    assert sum(one.scores.values()) == pytest.approx(1.0, abs=1e-5)
    # Dynamic INT8 scales activations per batch, so a batch neighbour nudges the scores, never the label.
    assert many[0].label == one.label and len(many) == 2
    assert many[0].score == pytest.approx(one.score, abs=0.02)
    assert p.predict([]) == []


def test_runtime_matches_torch_student(built: Path) -> None:
    import torch

    from edgeslm.models import load_checkpoint
    from edgeslm.runtime import encode, load_tokenizer

    cache = built.parent / ".edgeslm-cache"
    student = load_checkpoint(next(cache.glob("distill-*")))
    texts = ["it 's a charming and often affecting journey .", "unflinchingly bleak and desperate"]
    tok = load_tokenizer((student.path / "tokenizer.json").read_text(), student.max_length)
    with torch.no_grad():
        ref = student.model(**{k: torch.from_numpy(v) for k, v in encode(tok, texts).items()}).numpy()
    got = Predictor(built / "bundle").logits(texts)
    assert np.abs(ref - got).max() < 0.05  # INT8 vs FP32
    assert (ref.argmax(1) == got.argmax(1)).all()


def test_rerun_reuses_cached_steps_and_never_mutates_inputs(
    built: Path, tiny_base: Path, tiny_data: edgeslm.DataConfig
) -> None:
    cache = built.parent / ".edgeslm-cache"
    before = {p.name: _tree_hash(p) for p in cache.iterdir()}
    base_before = _tree_hash(tiny_base)
    result = build(_recipe(tiny_base, tiny_data), built, force=True)
    assert all(v == 0.0 for v in result.report["step_seconds"].values())
    assert {p.name: _tree_hash(p) for p in cache.iterdir()} == before
    assert _tree_hash(tiny_base) == base_before


def test_existing_output_is_refused(built: Path, tiny_base: Path, tiny_data: edgeslm.DataConfig) -> None:
    with pytest.raises(edgeslm.ConfigError, match="already exists"):
        build(_recipe(tiny_base, tiny_data), built)


def test_interrupted_build_leaves_nothing_half_written(
    built: Path, tiny_base: Path, tiny_data: edgeslm.DataConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = built.parent / "interrupted"

    def boom(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("edgeslm.evaluate.evaluate", boom)
    with pytest.raises(KeyboardInterrupt):
        build(_recipe(tiny_base, tiny_data), out)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".interrupted")]


def test_static_int8_quantization(built: Path, tiny_data: edgeslm.DataConfig, tmp_path: Path) -> None:
    onnx_dir = next((built.parent / ".edgeslm-cache").glob("export-*"))
    out = edgeslm.quantize(onnx_dir, tmp_path / "static", edgeslm.Int8StaticConfig(data=tiny_data, calibration_rows=16))
    assert (out / "model.onnx").stat().st_size < (onnx_dir / "model.onnx").stat().st_size
    meta = json.loads((out / "edgeslm.json").read_text())
    assert meta["quantize"]["method"] == "Int8StaticConfig"


def test_distill_layer_choice_keeps_the_top_layer() -> None:
    from edgeslm.compress.distill import pick_layers

    assert pick_layers(6, DistillConfig(num_layers=1)) == (5,)
    assert pick_layers(6, DistillConfig(num_layers=2)) == (0, 5)
    assert pick_layers(6, DistillConfig(num_layers=3)) == (0, 2, 5)
    assert pick_layers(6, DistillConfig(layers=(1, 3))) == (1, 3)
    with pytest.raises(edgeslm.ConfigError, match="at most the teacher's 6 layers"):
        pick_layers(6, DistillConfig(num_layers=7))
    with pytest.raises(edgeslm.ConfigError, match="names layer 6"):
        pick_layers(6, DistillConfig(layers=(6,)))


def test_vocabulary_trim_keeps_covered_texts_exact(built: Path, tiny_data: edgeslm.DataConfig, tmp_path: Path) -> None:
    import torch

    from edgeslm.compress.trim import trim_vocab
    from edgeslm.models import load_checkpoint
    from edgeslm.recipe import TrimConfig
    from edgeslm.runtime import encode, load_tokenizer

    student = next((built.parent / ".edgeslm-cache").glob("distill-*"))
    out = trim_vocab(student, tmp_path / "trimmed", TrimConfig(data=tiny_data))
    info = json.loads((out / "edgeslm.json").read_text())["trim"]
    assert info["vocab_before"] == 30522 and 1000 < info["vocab_after"] < 30522
    assert 0 < info["check"]["identical_tokenization"] <= 1 and 0 < info["check"]["label_agreement"] <= 1
    before, after = load_checkpoint(student), load_checkpoint(out)
    assert after.model.encoder.embeddings.word_embeddings.num_embeddings == info["vocab_after"]
    # A train sentence uses only kept pieces: same pieces, same logits.
    text = load_dataset_text(tiny_data)
    old_tok = load_tokenizer((student / "tokenizer.json").read_text(), 64)
    new_tok = load_tokenizer((out / "tokenizer.json").read_text(), 64)
    assert old_tok.encode(text).tokens == new_tok.encode(text).tokens
    with torch.no_grad():
        a = before.model(**{k: torch.from_numpy(v) for k, v in encode(old_tok, [text]).items()})
        b = after.model(**{k: torch.from_numpy(v) for k, v in encode(new_tok, [text]).items()})
    assert torch.allclose(a, b, atol=1e-5)
    # Any text still tokenizes, and never into more [UNK] than before.
    odd = "zyzzyva quixotically überjazz 🙂"
    assert new_tok.encode(odd).tokens.count("[UNK]") <= old_tok.encode(odd).tokens.count("[UNK]")


def test_aliased_trim_keeps_every_split_and_points_dropped_pieces_at_kept_rows(
    built: Path, tiny_data: edgeslm.DataConfig, tmp_path: Path
) -> None:
    from edgeslm.compress.trim import trim_vocab
    from edgeslm.errors import ModelError
    from edgeslm.export.carray import _vocab
    from edgeslm.recipe import TrimConfig
    from edgeslm.runtime import load_tokenizer

    student = next((built.parent / ".edgeslm-cache").glob("distill-*"))
    out = trim_vocab(student, tmp_path / "aliased", TrimConfig(data=tiny_data, alias=True))
    info = json.loads((out / "edgeslm.json").read_text())["trim"]
    assert info["aliases"] == info["vocab_before"] - info["vocab_after"] > 0
    assert info["check"]["identical_tokenization"] == 1.0  # every eval text: the same pieces as before
    assert info["check"]["identical_ids"] < 1.0  # ... some of them through an alias (dev words train never saw)
    old_tok = load_tokenizer((student / "tokenizer.json").read_text(), 64)
    new_tok = load_tokenizer((out / "tokenizer.json").read_text(), 64)
    odd = "zyzzyva quixotically überjazz 🙂"
    assert new_tok.encode(odd).tokens == old_tok.encode(odd).tokens
    assert max(new_tok.encode(odd).ids) < info["vocab_after"]  # every id is a row of the trimmed table
    with pytest.raises(ModelError, match="one piece per id"):
        _vocab((out / "tokenizer.json").read_text())


def test_trim_keeps_the_pieces_of_unlabelled_texts(built: Path, tiny_data: edgeslm.DataConfig, tmp_path: Path) -> None:
    import torch

    from edgeslm.compress.trim import trim_vocab
    from edgeslm.models import load_checkpoint
    from edgeslm.recipe import TrimConfig
    from edgeslm.runtime import load_tokenizer

    student = next((built.parent / ".edgeslm-cache").glob("distill-*"))
    more = tmp_path / "more.txt"
    more.write_text("zyzzyva quixotically\nthe archipelago's lighthouse\n", encoding="utf-8")
    plain = trim_vocab(student, tmp_path / "plain", TrimConfig(data=tiny_data, alias=True))
    wider = trim_vocab(student, tmp_path / "wider", TrimConfig(data=tiny_data, alias=True, unlabelled=str(more)))
    text = "zyzzyva quixotically the archipelago's lighthouse"
    before = load_checkpoint(student).model.encoder.embeddings.word_embeddings.weight
    old_ids = load_tokenizer((student / "tokenizer.json").read_text(), 64).encode(text).ids

    def own_rows(trimmed: Path) -> list[bool]:
        """Per piece of ``text``: is its row in ``trimmed`` its own (not an alias's nearest kept row)?"""
        after = load_checkpoint(trimmed).model.encoder.embeddings.word_embeddings.weight
        new_ids = load_tokenizer((trimmed / "tokenizer.json").read_text(), 64).encode(text).ids
        return [bool(torch.equal(before[o], after[n])) for o, n in zip(old_ids, new_ids, strict=True)]

    assert all(own_rows(wider)) and not all(own_rows(plain))
    assert json.loads((wider / "edgeslm.json").read_text())["trim"]["unlabelled_rows"] == 2


def load_dataset_text(data: edgeslm.DataConfig) -> str:
    return edgeslm.load_dataset(data).train.texts[0]


def test_build_with_trim_reuses_the_distilled_student(
    built: Path, tiny_base: Path, tiny_data: edgeslm.DataConfig
) -> None:
    from edgeslm.recipe import TrimConfig

    recipe = dataclasses.replace(_recipe(tiny_base, tiny_data), trim=TrimConfig(enabled=True))
    result = build(recipe, built.parent / "trimmed")
    seconds = result.report["step_seconds"]
    assert seconds["finetune"] == 0.0 and seconds["distill"] == 0.0 and seconds["trim"] > 0
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    assert manifest["extra"]["trim"]["vocab_after"] < 30522
    assert result.report["trim_check"]["eval_rows"] == 100
    assert Predictor(result.bundle).predict("a fine film").label in ("negative", "positive")


def test_int4_weight_only_quantization(built: Path, tmp_path: Path) -> None:
    import onnx

    onnx_dir = next((built.parent / ".edgeslm-cache").glob("export-*"))
    out = edgeslm.quantize(onnx_dir, tmp_path / "int4", edgeslm.Int4WeightOnlyConfig())
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops and "GatherBlockQuantized" in ops
    assert (out / "model.onnx").stat().st_size < (onnx_dir / "model.onnx").stat().st_size / 4
    assert json.loads((out / "edgeslm.json").read_text())["quantize"]["block_size"] == 32


def test_fit_checks_budgets_from_the_graph(built: Path) -> None:
    from edgeslm.fit import fit, graph_memory

    bundle = built / "bundle"
    model = (bundle / "model.onnx").read_bytes()
    short, long = graph_memory(model, 16), graph_memory(model, 64)
    assert short["weights"] == long["weights"] > 0
    assert long["activations_peak"] > short["activations_peak"] > 0
    _, lines = fit(bundle, "host")
    assert all(line.ok is not False for line in lines)
    _, lines = fit(bundle, "stm32h7")
    assert [line.ok for line in lines if line.check == "runtime"] == [False]
    with pytest.raises(edgeslm.ConfigError, match="unknown device `toaster`"):
        fit(bundle, "toaster")


def test_fit_cli_exit_codes(built: Path) -> None:
    from typer.testing import CliRunner

    from edgeslm.cli import app

    ok = CliRunner().invoke(app, ["fit", str(built / "bundle"), "--device", "host"])
    assert ok.exit_code == 0 and "pass" in ok.output
    bad = CliRunner().invoke(app, ["fit", str(built / "bundle"), "--device", "stm32h7"])
    assert bad.exit_code == 1 and "does not fit stm32h7" in bad.output and "Traceback" not in bad.output
