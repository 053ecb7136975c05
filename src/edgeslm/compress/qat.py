"""Quantization-aware training: the student trains with the INT8 rounding `quantize` will apply simulated.

``with simulated_int8(model, config): ...`` makes every forward pass round as onnxruntime's dynamic INT8 does
(measured on our exported graphs):

- each Linear (a MatMul in ONNX) rounds its weight to INT8, symmetric, one scale per tensor (or per output channel
  with ``per_channel``), and its input to UINT8 over that tensor's own range, taken per call
  (DynamicQuantizeLinear), so per sentence at batch 1 on the device; here per row of the batch;
- the word, position and token-type tables (Gather) round to UINT8, asymmetric, one scale per table;
- the attention products (activation x activation) stay in float.

The rounding is torch's ``fake_quantize_*`` ops, whose straight-through gradient is the standard QAT estimator.
Written here rather than taken from a QAT library because what must be simulated is exactly the arithmetic above,
which is a few lines on those ops, and a library brings its own scheme that would have to be configured into this
one. On exit the model is plain again: the same modules, the same parameters, now trained to survive rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn.utils import parametrize

from ..recipe import Int8DynamicConfig

__all__ = ["simulated_int8"]


def _uint8(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of UINT8 over [lo, hi] widened to hold zero, as onnxruntime computes them."""
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = ((hi - lo) / 255).clamp(min=1e-12).float()
    return scale, torch.round(-lo / scale).clamp(0, 255).to(torch.int32)


def _uint8_rows(x: torch.Tensor) -> torch.Tensor:
    """UINT8 over each row's own range (DynamicQuantizeLinear, one sentence per row)."""
    flat = x.detach().reshape(x.shape[0], -1)
    scale, zero = _uint8(flat.amin(1), flat.amax(1))
    return torch.fake_quantize_per_channel_affine(x, scale, zero, 0, 0, 255)


def _uint8_table(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rows looked up from ``table``, rounded as the UINT8 table onnxruntime stores (one scale per table)."""
    scale, zero = _uint8(table.detach().min(), table.detach().max())
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


class _Int8Weight(torch.nn.Module):
    """A Linear weight ([out, in]) rounded to symmetric INT8 in [-127, 127], as onnxruntime rounds MatMul weights."""

    def __init__(self, per_channel: bool) -> None:
        super().__init__()
        self.per_channel = per_channel

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.per_channel:
            scale = (w.detach().abs().amax(1) / 127).clamp(min=1e-12).float()
            zero = torch.zeros_like(scale, dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)
        return torch.fake_quantize_per_tensor_affine(w, max(float(w.detach().abs().max()) / 127, 1e-12), 0, -127, 127)


@contextmanager
def simulated_int8(model: torch.nn.Module, config: Int8DynamicConfig) -> Iterator[torch.nn.Module]:
    """Inside the block, ``model`` computes as its dynamic INT8 export will; on exit it is a plain model again."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    hooks = [m.register_forward_pre_hook(lambda _m, args: (_uint8_rows(args[0]), *args[1:])) for m in linears]
    hooks += [m.register_forward_hook(lambda m, _args, out: _uint8_table(out, m.weight)) for m in tables]
    for m in linears:
        parametrize.register_parametrization(m, "weight", _Int8Weight(config.per_channel))
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()
        for m in linears:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
