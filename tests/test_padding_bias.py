"""The exported padding bias: transformers' mask builder leaves the graph, the logits stay, padding included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgeslm.export.onnx import _export, _PaddingBias
from edgeslm.models import new_classifier
from edgeslm.runtime.predictor import encode, load_tokenizer

TEXTS = ["good", "a rather long and winding sentence about a film that never ends", "bad movie , truly"]


def test_padding_bias_drops_the_mask_builder_and_keeps_logits(tiny_base: Path, tmp_path: Path) -> None:
    model = new_classifier(tiny_base, ("negative", "positive")).eval()
    _export(model, tmp_path / "hf.onnx", 17)
    _export(_PaddingBias(model), tmp_path / "bias.onnx", 17)
    hf, bias = (onnx.load(str(tmp_path / f"{n}.onnx")).graph.node for n in ("hf", "bias"))
    assert {"IsNaN", "Range"} <= {n.op_type for n in hf}  # what the mask builder traces into
    assert not {"IsNaN", "Range", "Where"} & {n.op_type for n in bias}
    assert len(bias) < len(hf) - 30
    tok = load_tokenizer((tiny_base / "tokenizer.json").read_text(), 64)
    session = ort.InferenceSession(str(tmp_path / "bias.onnx"), providers=["CPUExecutionProvider"])
    for feed in (encode(tok, TEXTS[1:2]), encode(tok, TEXTS)):  # batch 1, and batch 3 with padding
        assert feed["attention_mask"].min() == 0 or len(feed["input_ids"]) == 1
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()
        np.testing.assert_allclose(session.run(None, feed)[0], ref, rtol=0, atol=1e-5)


def test_the_graph_keeps_the_checkpoints_weight_names(tiny_base: Path, tmp_path: Path) -> None:
    model = new_classifier(tiny_base, ("negative", "positive")).eval()
    _export(_PaddingBias(model), tmp_path / "bias.onnx", 17)
    named = {i.name for i in onnx.load(str(tmp_path / "bias.onnx")).graph.initializer if "::" not in i.name}
    assert "head.bias" in named and named <= set(model.state_dict())  # the MatMul weights are numbered copies
