"""Step 4, `export`: the checkpoint to ONNX, checked against torch on real sentences.

Writes ``model.onnx``, ``tokenizer.json`` and ``edgeslm.json`` (the checkpoint's metadata plus the parity check).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._fs import atomic_dir
from ..data import load_dataset
from ..errors import ModelError
from ..models import TextClassifier, load_checkpoint, mean_pool, run_layers
from ..recipe import ExportConfig
from ..runtime.predictor import encode, load_tokenizer, session_options
from .static_shapes import static_reshapes

__all__ = ["export_onnx"]

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _PaddingBias(nn.Module):
    """The classifier as the exporter should see it: padding as one additive attention bias (``run_layers``).

    It holds the classifier's own ``encoder`` and ``head`` (not the classifier), so the graph's weights keep the
    checkpoint's names.
    """

    def __init__(self, model: TextClassifier) -> None:
        super().__init__()
        self.encoder, self.head = model.encoder, model.head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        hidden = self.encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        return self.head(mean_pool(run_layers(self.encoder, hidden, attention_mask), attention_mask))


def _export(model: nn.Module, path: Path, opset: int) -> None:
    sample = {k: torch.ones(1, 8, dtype=torch.long) for k in INPUTS}
    axes = {k: {0: "batch", 1: "sequence"} for k in INPUTS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            model,
            (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]),
            str(path),
            input_names=list(INPUTS),
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,  # the TorchScript exporter: 20x faster here than dynamo and needs no onnxscript
        )
    model.eval()  # export restores the module's previous mode; make sure dropout stays off


def parity(
    model: TextClassifier, onnx_path: Path, tokenizer_json: str, max_length: int, texts: list[str]
) -> dict[str, Any]:
    """Max |logit difference| and label agreement between torch and ONNX Runtime, one sentence at a time (the
    difference also over one padded batch)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), session_options(None), providers=["CPUExecutionProvider"])
    tokenizer = load_tokenizer(tokenizer_json, max_length)
    diffs, agree = [], 0
    with torch.no_grad():
        for text in texts:
            feed = encode(tokenizer, [text])
            ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()
            (got,) = session.run(None, feed)
            diffs.append(float(np.abs(ref - got).max()))
            agree += int(ref.argmax() == got.argmax())
        feed = encode(tokenizer, texts[:16])  # and a padded batch: the padding bias is only exercised there
        ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()
        diffs.append(float(np.abs(ref - session.run(None, feed)[0]).max()))
    return {"rows": len(texts), "max_abs_diff": max(diffs), "label_agreement": agree / len(texts)}


def export_onnx(src: Path, out: Path, config: ExportConfig, *, force: bool = False) -> Path:
    """Export the checkpoint folder ``src`` to an ONNX model folder ``out``."""
    ckpt = load_checkpoint(Path(src))
    texts = list(load_dataset(config.data).eval.texts[: config.check_rows])
    tokenizer_json = (ckpt.path / "tokenizer.json").read_text(encoding="utf-8")
    with atomic_dir(Path(out), force=force) as tmp:
        try:
            traced = _PaddingBias(ckpt.model) if config.padding_bias else ckpt.model
            _export(traced, tmp / "model.onnx", config.opset)
        except Exception as e:  # the exporter raises many kinds
            raise ModelError(
                f"ONNX export of `{src}` failed ({e}); check the checkpoint and opset {config.opset}"
            ) from e
        rewritten = static_reshapes(tmp / "model.onnx") if config.static_shapes else 0
        check = parity(ckpt.model, tmp / "model.onnx", tokenizer_json, ckpt.max_length, texts)
        shutil.copyfile(ckpt.path / "tokenizer.json", tmp / "tokenizer.json")
        meta = {**ckpt.meta, "export": {"opset": config.opset, "check": check, "static_reshapes": rewritten}}
        (tmp / "edgeslm.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(out)
