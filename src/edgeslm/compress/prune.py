"""Structured pruning: drop whole attention heads and FFN neurons, ranked by their importance on real data.

The result is a dense, smaller BERT (narrower Q/K/V/O and FFN matrices), not a mask: ONNX Runtime runs fewer
multiply-adds. Measured here (2-layer student, ORT INT8, batch 1, SST-2 dev): 12→6 heads and 1536→768 FFN
neurons take p50 from 1.25 to 0.82 ms. `distill` calls this on the student it initialises from the teacher, then
trains the pruned student, which recovers what pruning cost.

Importance is the first-order Taylor estimate of Michel et al. (2019, "Are Sixteen Heads Really Better than
One?"): for each example, |Σ_tokens activation · ∂loss/∂activation| on a head's context vectors or a neuron's
output, summed over examples. Written by hand: transformers 5 dropped `prune_heads`, and torch's
`torch.nn.utils.prune` only masks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BertModel

from .. import _train
from ..models import TextClassifier

__all__ = ["importance", "narrow"]

LossFn = Callable[[Tensor, list[int]], Tensor]  # (logits, row indices) -> loss


def importance(
    model: TextClassifier,
    feeds: Sequence[tuple[_train.Feed, list[int]]],
    loss_fn: LossFn,
) -> tuple[Tensor, Tensor]:
    """Per-layer head scores (layers, heads) and FFN neuron scores (layers, neurons) of ``model`` on ``feeds``."""
    layers: list[Any] = list(model.encoder.encoder.layer)  # BertLayer; nn.ModuleList indexing is untyped
    cfg = model.encoder.config
    heads = int(layers[0].attention.output.dense.in_features) // _head_size(model.encoder)
    head_scores = torch.zeros(len(layers), heads)
    ffn_scores = torch.zeros(len(layers), cfg.intermediate_size)
    captured: dict[tuple[str, int], Tensor] = {}

    def keep_input(kind: str, i: int) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(_: nn.Module, args: tuple[Tensor, ...]) -> None:
            args[0].retain_grad()
            captured[(kind, i)] = args[0]

        return hook

    handles = [
        h
        for i, layer in enumerate(layers)
        for h in (
            layer.attention.output.dense.register_forward_pre_hook(keep_input("head", i)),
            layer.output.dense.register_forward_pre_hook(keep_input("ffn", i)),
        )
    ]
    model.eval()  # no dropout: the scores describe the model as it runs
    try:
        for feed, idx in feeds:
            model.zero_grad(set_to_none=True)
            loss_fn(model(**feed), idx).backward()
            mask = feed["attention_mask"].unsqueeze(-1).to(torch.float32)
            for i in range(len(layers)):
                ctx = captured[("head", i)]
                assert ctx.grad is not None
                contrib = (ctx * ctx.grad * mask).sum(1)  # (b, heads*size)
                head_scores[i] += contrib.view(contrib.shape[0], heads, -1).sum(-1).abs().sum(0).detach().cpu()
                act = captured[("ffn", i)]
                assert act.grad is not None
                ffn_scores[i] += (act * act.grad * mask).sum(1).abs().sum(0).detach().cpu()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return head_scores, ffn_scores


def _head_size(encoder: BertModel) -> int:
    return int(encoder.config.hidden_size // encoder.config.num_attention_heads)


def _rows(linear: nn.Linear, keep: Tensor) -> nn.Linear:
    out = nn.Linear(linear.in_features, len(keep))
    out.weight.data = linear.weight.data[keep].clone()
    out.bias.data = linear.bias.data[keep].clone()
    return out


def _cols(linear: nn.Linear, keep: Tensor) -> nn.Linear:
    out = nn.Linear(len(keep), linear.out_features)
    out.weight.data = linear.weight.data[:, keep].clone()
    out.bias.data = linear.bias.data.clone()
    return out


def narrow(model: TextClassifier, head_scores: Tensor, ffn_scores: Tensor, heads: int, ffn: int) -> None:
    """Keep the ``heads`` best heads and ``ffn`` best FFN neurons of every layer, in place (scores: per layer).

    The same counts in every layer keep the config a plain BertConfig (``intermediate_size``) plus one field,
    ``edgeslm_heads``, that `models.load_checkpoint` reads to rebuild the narrower attention before loading.
    ``heads`` / ``ffn`` equal to what a layer has keep it as it is.
    """
    size = _head_size(model.encoder)
    layers: list[Any] = list(model.encoder.encoder.layer)
    for i, layer in enumerate(layers):
        kept_heads = head_scores[i].topk(heads).indices.sort().values
        cols = (kept_heads.unsqueeze(1) * size + torch.arange(size)).flatten()
        att = layer.attention.self
        att.query, att.key, att.value = _rows(att.query, cols), _rows(att.key, cols), _rows(att.value, cols)
        layer.attention.output.dense = _cols(layer.attention.output.dense, cols)
        kept = ffn_scores[i].topk(ffn).indices.sort().values
        layer.intermediate.dense = _rows(layer.intermediate.dense, kept)
        layer.output.dense = _cols(layer.output.dense, kept)
    model.encoder.config.intermediate_size = ffn
    model.encoder.config.edgeslm_heads = heads
