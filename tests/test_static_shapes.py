"""Constant Reshape targets: fewer nodes, the same logits at every batch size and length."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgeslm.export.onnx import _export
from edgeslm.export.static_shapes import static_reshapes
from edgeslm.models import new_classifier
from edgeslm.runtime.predictor import encode, load_tokenizer


def _run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feed)[0])


def test_static_reshapes_keep_logits_and_drop_shape_nodes(tiny_base: Path, tmp_path: Path) -> None:
    model = new_classifier(tiny_base, ("negative", "positive")).eval()
    _export(model, tmp_path / "dynamic.onnx", 17)
    shutil.copyfile(tmp_path / "dynamic.onnx", tmp_path / "static.onnx")
    rewritten = static_reshapes(tmp_path / "static.onnx")
    before, after = (onnx.load(str(tmp_path / f"{n}.onnx")).graph.node for n in ("dynamic", "static"))
    assert rewritten >= 4  # q, k, v and the merged heads of each layer
    assert sum(n.op_type == "Shape" for n in after) < sum(n.op_type == "Shape" for n in before)
    assert len(after) < len(before) - 30
    tok = load_tokenizer((tiny_base / "tokenizer.json").read_text(), 64)
    texts = ["good", "a rather long and winding sentence about a film that never ends", "bad movie , truly"]
    for feed in (encode(tok, texts[1:2]), encode(tok, texts)):  # batch 1, and batch 3 with padding
        np.testing.assert_allclose(
            _run(tmp_path / "static.onnx", feed), _run(tmp_path / "dynamic.onnx", feed), rtol=0, atol=1e-5
        )


def test_a_second_pass_changes_nothing(tiny_base: Path, tmp_path: Path) -> None:
    model = new_classifier(tiny_base, ("negative", "positive")).eval()
    _export(model, tmp_path / "m.onnx", 17)
    static_reshapes(tmp_path / "m.onnx")
    assert static_reshapes(tmp_path / "m.onnx") == 0
