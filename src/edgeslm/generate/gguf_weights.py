"""Read a llama-family GGUF file into its config and weights, keeping the quantized blocks as they are.

Why not dequantize: the shipped SmolLM2 GGUF is already Q4_1 (4-bit, a scale and a minimum per 32 weights).
Re-quantizing the dequantized floats to another 4-bit grid loses what those blocks kept (+22% perplexity, see
shared/research/feasibility_gen_mcu.md), so the graph builder keeps the blocks' codes and scales instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError

__all__ = ["Blocks", "LlamaConfig", "LlamaWeights", "read_gguf"]

_BLOCK = 32  # weights per block in Q4_1 and Q8_0 (ggml's QK4_1 = QK8_0 = 32)


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rope_theta: float
    rms_eps: float
    context_length: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class Blocks:
    """One [N, K] weight matrix (ggml row-major: N output rows of K inputs), exactly as its file stored it.

    ``codes`` is [N, K/32, 32] uint8 (Q4_1: 0..15; Q8_0: the int8 value + 128), ``scales`` and ``mins`` [N, K/32]
    float32 so that weight = scales * codes + mins (Q8_0: mins = -128 * scales). Float tensors have ``dense`` set.
    """

    kind: str  # "Q4_1", "Q8_0" or "F32"
    shape: tuple[int, int]  # (N, K)
    codes: np.ndarray | None = None
    scales: np.ndarray | None = None
    mins: np.ndarray | None = None
    dense: np.ndarray | None = None

    def dequantize(self) -> np.ndarray:
        """The float32 [N, K] matrix the blocks stand for."""
        if self.dense is not None:
            return self.dense
        assert self.codes is not None and self.scales is not None and self.mins is not None
        w = self.scales[..., None] * self.codes.astype(np.float32) + self.mins[..., None]
        return w.reshape(self.shape)


@dataclass(frozen=True)
class LlamaWeights:
    config: LlamaConfig
    tensors: dict[str, Blocks]  # GGUF tensor name -> weights, e.g. "blk.0.attn_q.weight"
    metadata: dict[str, Any]  # tokenizer and chat fields: bos/eos ids, chat_template, add_bos_token


def _f16(raw: np.ndarray) -> np.ndarray:
    return raw.copy().view(np.float16).astype(np.float32)[..., 0]


def _blocks(kind: str, data: np.ndarray, n: int, k: int) -> Blocks:
    if kind == "F32" or kind == "F16":
        return Blocks("F32", (n, k), dense=np.asarray(data, np.float32).reshape(n, k))
    if k % _BLOCK:
        raise ModelError(f"a {kind} tensor of width {k} is not a whole number of 32-weight blocks; file is damaged")
    if kind == "Q4_1":  # block: f16 d, f16 m, 16 bytes (weights 0..15 in the low nibbles, 16..31 in the high)
        b = data.reshape(n, k // _BLOCK, 20)
        qs = b[..., 4:]
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
        return Blocks(kind, (n, k), codes, _f16(b[..., 0:2]), _f16(b[..., 2:4]))
    if kind == "Q8_0":  # block: f16 d, 32 x int8
        b = data.reshape(n, k // _BLOCK, 34)
        scales = _f16(b[..., 0:2])
        codes = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return Blocks(kind, (n, k), codes, scales, -128.0 * scales)
    raise ModelError(f"GGUF tensor type {kind} is not supported (Q4_1, Q8_0, F16 and F32 are); convert the model")


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    part = f.parts[f.data[0]]
    if f.types and f.types[0].name == "STRING":
        return bytes(part).decode("utf-8")
    return part.tolist()[0]


def read_gguf(path: Path) -> LlamaWeights:
    """Parse ``path``; raise ModelError if it is not a llama-architecture GGUF with tensors we can transcode."""
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        from ..errors import MissingExtraError

        raise MissingExtraError("reading a GGUF needs the gguf package; fix: pip install 'edgeslm[generate]'") from e
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read GGUF `{path}` ({e}); pass a .gguf model file") from e
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ModelError(f"GGUF `{path}` has architecture {arch!r}; only llama-family models are supported")
    tensors: dict[str, Blocks] = {}
    for t in reader.tensors:
        k, n = (int(x) for x in t.shape) if len(t.shape) == 2 else (int(t.shape[0]), 1)
        tensors[t.name] = _blocks(t.tensor_type.name, np.asarray(t.data), n, k)
    hidden = int(_field(reader, "llama.embedding_length"))
    heads = int(_field(reader, "llama.attention.head_count"))
    config = LlamaConfig(
        vocab_size=tensors["token_embd.weight"].shape[0],
        hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_layers=int(_field(reader, "llama.block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        rms_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        context_length=int(_field(reader, "llama.context_length", 2048)),
    )
    metadata = {
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        "chat_template": _field(reader, "tokenizer.chat_template"),
        "name": _field(reader, "general.name"),
    }
    return LlamaWeights(config, tensors, metadata)
