"""The real all-MiniLM-L6-v2 (the one test that loads it): pinned hashes, a classifier on it, ONNX parity."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeslm.errors import ModelError
from edgeslm.models import MINILM_SHA256, new_classifier, resolve_base, sha256_file


def test_minilm_is_pinned_and_verified() -> None:
    folder = resolve_base("minilm")
    for name, digest in MINILM_SHA256.items():
        assert sha256_file(folder / name) == digest
    assert (folder / "model.safetensors").stat().st_size == 90_868_376


def test_real_minilm_classifier_exports_with_parity(tmp_path: Path) -> None:
    from edgeslm.export.onnx import _export, parity

    base = resolve_base("minilm")
    model = new_classifier(base, ("negative", "positive")).eval()
    assert sum(p.numel() for p in model.encoder.parameters()) == 22_565_376  # 22.7M less the dropped pooler
    _export(model, tmp_path / "m.onnx", 17)
    texts = ["hide new secretions from the parental units", "the acting , costumes , music are all magnificent ."]
    check = parity(model, tmp_path / "m.onnx", (base / "tokenizer.json").read_text(), 64, texts)
    assert check["max_abs_diff"] < 1e-4 and check["label_agreement"] == 1.0


def test_non_bert_base_is_refused(tmp_path: Path) -> None:
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / f).write_text("{}")
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelError, match="is a `gpt2` model"):
        resolve_base(str(tmp_path))
