"""Cut a bundle's student in two at layer k, build side: export each half to ONNX, INT8 it like the bundle, write both.

Cut from the torch student rather than from the bundle's graph: in the exported graph the attention mask of every
layer is computed from the embeddings' output, so the back half of a graph cut would still need the input ids.
Here each half computes its own padding bias from ``attention_mask`` (``models.run_layers``), and
``export_split`` checks that back(front(x)) equals the whole student in torch before anything is written.
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .._fs import atomic_dir, write_bytes, write_json
from ..errors import ConfigError, ModelError
from ..models import TextClassifier, mean_pool, run_layers
from .lora import resolve_student
from .split import SPLIT_FORMAT, SPLIT_MANIFEST

__all__ = ["export_split"]

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Front(nn.Module):
    """Embeddings + the first k layers: what the device runs."""

    def __init__(self, model: TextClassifier, k: int) -> None:
        super().__init__()
        self.encoder, self.k = model.encoder, k

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        hidden = self.encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        return run_layers(self.encoder, hidden, attention_mask, 0, self.k)


class _Back(nn.Module):
    """Layers k.. + masked mean pooling + head: what the server runs."""

    def __init__(self, model: TextClassifier, k: int) -> None:
        super().__init__()
        self.encoder, self.head, self.k = model.encoder, model.head, k

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = run_layers(self.encoder, hidden, attention_mask, self.k, None)
        return self.head(mean_pool(hidden, attention_mask))


def _export(module: nn.Module, args: tuple[Tensor, ...], names: list[str], output: str, path: Path) -> None:
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch", 1: "sequence"} if output == "hidden" else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,  # as export.onnx: the TorchScript exporter, no onnxscript needed
        )


def _int8(src: Path, dst: Path) -> None:
    """INT8 weights, activations quantized on the fly: the bundle's default (Int8DynamicConfig, per tensor)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # onnxruntime.quantization logs generic advice as warnings
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=False)
    finally:
        root.setLevel(level)


def export_split(
    source: str | Path,
    out: str | Path,
    k: int,
    *,
    checkpoint: str | Path | None = None,
    int8: bool = True,
    force: bool = False,
) -> Path:
    """Write ``out/device`` (front.onnx, tokenizer.json) and ``out/server`` (back.onnx), cut after layer ``k``.

    ``source`` is a build folder (or a bundle with ``checkpoint``), as for ``edgeslm personalize``. ``k`` = 0 puts
    only the embeddings on the device; ``k`` = the student's depth leaves the server the pooling and head.
    """
    student = resolve_student(Path(source), Path(checkpoint) if checkpoint else None)
    ckpt = student.checkpoint
    model = ckpt.model.eval()
    depth = len(model.encoder.encoder.layer)
    if not 0 <= k <= depth:
        raise ConfigError(f"`k` must be in 0..{depth} (the student has {depth} layers), got {k}")
    front, back = _Front(model, k).eval(), _Back(model, k).eval()
    sample = {n: torch.ones(2, 8, dtype=torch.long) for n in _INPUTS}
    sample["input_ids"] = torch.randint(1000, 2000, (2, 8))
    sample["attention_mask"][1, 5:] = 0  # a padded row: the halves must mask it as the whole model does
    with torch.no_grad():
        whole = model(**sample)
        hidden = front(**sample)
        split = back(hidden, sample["attention_mask"])
    if not torch.allclose(whole, split, atol=1e-5):
        raise ModelError(
            f"the two halves cut at layer {k} disagree with the whole student by {float((whole - split).abs().max())}; "
            "this transformers version builds BERT's attention mask differently, the split is not exact"
        )
    out = Path(out)
    with atomic_dir(out, force=force) as tmp:
        stage = tmp / ".stage"
        stage.mkdir()
        halves = {"device": ("front.onnx", front), "server": ("back.onnx", back)}
        common = {
            "format_version": SPLIT_FORMAT,
            "layers": k,
            "depth": depth,
            "hidden": int(model.encoder.config.hidden_size),
            "labels": list(ckpt.labels),
            "max_length": ckpt.max_length,
            "weights": "int8-dynamic" if int8 else "fp32",
            "base": {"manifest_sha256": student.manifest_sha256},
        }
        for role, (name, module) in halves.items():
            (tmp / role).mkdir()
            fp32 = stage / name
            if role == "device":
                _export(module, tuple(sample[n] for n in _INPUTS), list(_INPUTS), "hidden", fp32)
            else:
                _export(module, (hidden, sample["attention_mask"]), ["hidden", "attention_mask"], "logits", fp32)
            final = tmp / role / name
            if int8:
                _int8(fp32, final)
            else:
                fp32.replace(final)
            files = {name: final}
            if role == "device":
                files["tokenizer.json"] = ckpt.path / "tokenizer.json"
                write_bytes(tmp / role / "tokenizer.json", files["tokenizer.json"].read_bytes())
            write_json(
                tmp / role / SPLIT_MANIFEST,
                {
                    **common,
                    "role": role,
                    "files": {
                        n: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
                        for n, p in files.items()
                    },
                },
            )
        shutil.rmtree(stage)
    return out
