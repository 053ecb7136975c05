"""An ONNX llama decoder with a KV cache, written node by node from GGUF weights.

Why our own graph and not onnxruntime-genai's builder: the builder takes a float checkpoint and re-quantizes it, which
costs +22% perplexity on this already-4-bit model, and its asymmetric mode does not load (research note, A2). Here every
Q4_1 block (weight = d * q + m, codes q 0..15) goes into onnxruntime's ``MatMulNBits`` with its codes and scale d
unchanged. MatMulNBits only takes integer zero points (float ones make the CPU kernel dequantize the whole matrix on
every call, 20x slower, measured), so the block minimum is split: zero point z = round(-m / d), which the int8 kernel
applies for free, and the residual r = m + d * z (at most d/2) times the block's input sum, carried by the same
MatMulNBits call as extra input columns: x is extended with its 32-wide block sums and each weight row with its
residuals, 4-bit quantized. One kernel call per matrix instead of a MatMulNBits, a float MatMul of the minimums and an
Add (708 -> 588 nodes): decode +5-7% on SmolLM2-135M at one thread, perplexity +0.15% (the residual's 4-bit
rounding). Dropping r costs +20% perplexity; dropping it from one matrix kind only, +1.5% (o) to +6.8% (down).

Inputs: ``input_ids`` [b, s], ``attention_mask`` [b, past + s], ``logits_to_keep`` [1] (1 while generating, s for
perplexity) and ``past.{i}.key/value`` [b, kv_heads, past, head_dim]. Outputs ``logits`` [b, keep, vocab] and
``present.{i}.key/value``. Attention is onnxruntime's GroupQueryAttention (rotary, causal mask and cache update in
one op; bind one buffer as both past and present and it writes new positions in place, see runtime/generate.py).
GGUF stores q/k rows permuted for llama.cpp's adjacent-pair rope, so ``rotary_interleaved=1`` is the match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ConfigError
from .gguf_weights import Blocks, LlamaWeights

__all__ = ["PRECISIONS", "build_decoder", "io_names"]

# int4: the file's Q4_1 codes and scales kept (only the block minimum's remainder is rounded); int4-asym /
# int4-rtn: the dequantized weights re-quantized (asymmetric with zero points / symmetric), kept to measure what
# transcoding saves.
PRECISIONS = ("int4", "int8", "int4-asym", "int4-rtn", "fp32")
_BLOCK = 32
_TABLE_BLOCK = 64  # the 8-bit token table's block (see _table)


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """The cache input and output names, in layer order (key, value, key, value, ...)."""
    past = [f"past.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return past, present


@dataclass
class _Graph:
    """Nodes and initializers under construction; ``op`` returns the output name so the code reads like math."""

    precision: str
    accuracy_level: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    _n: int = 0
    _consts: set[str] = field(default_factory=set)

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        self._consts.add(name)
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs: Any) -> list[str]:
        self._n += 1
        outs = [f"{op_type}_{self._n}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{op_type}_{self._n}", domain=domain, **attrs))
        return outs

    def one(self, op_type: str, inputs: list[str], domain: str = "", **attrs: Any) -> str:
        return self.op(op_type, inputs, 1, domain, **attrs)[0]

    # -- linear layers ------------------------------------------------------------------------------------------
    def linear(self, x: str, w: Blocks, name: str, extended: dict[str, str]) -> str:
        """x [.., K] @ w.T -> [.., N] in this graph's precision. ``extended`` caches, per input, the input with its
        block sums appended, so matrices that read the same x (none after the q|k|v and gate|up fusions) share it."""
        if self.precision == "fp32":
            return self.one("MatMul", [x, self.const(f"{name}.weight", w.dequantize().T.copy())])
        if self.precision == "int4" and w.kind == "Q4_1":
            return self._q4_1(x, w, name, extended)
        if w.kind == "Q8_0" and self.precision != "int4-rtn":  # already 8-bit: keep its blocks (zero point 128)
            assert w.codes is not None and w.scales is not None
            return self._nbits(x, name, w.codes, w.scales, 8)
        bits = 8 if self.precision == "int8" else 4
        codes, scales, zero = _rtn(w.dequantize(), bits, symmetric=self.precision == "int4-rtn")
        return self._nbits(x, name, codes, scales, bits, zero=zero)

    def _q4_1(self, x: str, w: Blocks, name: str, extended: dict[str, str]) -> str:
        """A Q4_1 matrix as one MatMulNBits over [x, block sums of x]: codes and scales as stored, zero point
        round(-m/d), and the residual minimum (m + d * zero point) as extra 4-bit columns (see the module doc)."""
        assert w.codes is not None and w.scales is not None and w.mins is not None
        d, m = w.scales, w.mins
        safe = np.where(d > 0, d, 1.0)
        zero = np.where(d > 0, np.clip(np.round(-m / safe), 0, 15), 8).astype(np.uint8)
        n, k = w.shape
        nb = k // _BLOCK
        cols = -(-nb // _BLOCK) * _BLOCK  # the block sums padded to whole 32-wide blocks (unpadded K runs slower)
        if x not in extended:  # [x, x @ ones]: the 0/1 [K, cols] matrix sums each 32-wide block (zeros as padding)
            ones = f"blockones.{k}"
            if ones not in self._consts:
                mat = np.zeros((k, cols), np.float32)
                mat[:, :nb] = np.kron(np.eye(nb, dtype=np.float32), np.ones((_BLOCK, 1), np.float32))
                self.const(ones, mat)
            extended[x] = self.one("Concat", [x, self.one("MatMul", [x, ones])], axis=-1)
        residual = np.zeros((n, cols), np.float32)
        residual[:, :nb] = m + zero * d  # w = d * (q - zero) + residual
        rcodes, rscales, rzero = _rtn(residual, 4, symmetric=False)
        assert rzero is not None
        return self._nbits(
            extended[x],
            name,
            np.concatenate([w.codes, rcodes], axis=1),
            np.concatenate([d, rscales], axis=1),
            4,
            zero=np.concatenate([zero, rzero], axis=1),
        )

    def _nbits(
        self,
        x: str,
        name: str,
        codes: np.ndarray,
        scales: np.ndarray,
        bits: int,
        zero: np.ndarray | None = None,
    ) -> str:
        """MatMulNBits over [N, K/block, block] codes, [N, K/block] scales and (optional) zero points."""
        n, nb, block = codes.shape
        packed = _pack4(codes) if bits == 4 else codes
        inputs = [x, self.const(f"{name}.q{bits}", packed), self.const(f"{name}.scales", scales.astype(np.float32))]
        if zero is not None:
            inputs.append(self.const(f"{name}.zero", (_pack4(zero) if bits == 4 else zero).reshape(-1)))
        return self.one(
            "MatMulNBits",
            inputs,
            domain="com.microsoft",
            K=nb * block,
            N=n,
            bits=bits,
            block_size=block,
            accuracy_level=self.accuracy_level,
        )


def _pack4(codes: np.ndarray) -> np.ndarray:
    """Codes 0..15 -> bytes along the last axis (padded to even), element 2i in the low nibble (MatMulNBits' layout:
    [N, nb, 32] codes -> [N, nb, 16] bytes; [N, nb] zero points -> [N, ceil(nb/2)])."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), codes.dtype)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def _rtn(
    w: np.ndarray, bits: int, symmetric: bool, block: int = _BLOCK
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Round-to-nearest block quantization of a float [N, K] matrix: [N, K/block, block] codes, [N, K/block] scales
    and, when asymmetric, [N, K/block] zero points (0 stays exact: the range always includes it)."""
    n, k = w.shape
    blocks = w.reshape(n, k // block, block)
    top = (1 << bits) - 1
    if symmetric:  # zero point 2^(bits-1), MatMulNBits' default
        amax = np.abs(blocks).max(-1)
        half = top // 2
        scale = np.where(amax > 0, amax / half, 1.0).astype(np.float32)
        codes = np.clip(np.round(blocks / scale[..., None]) + half + 1, 0, top).astype(np.uint8)
        return codes, scale, None
    lo = np.minimum(blocks.min(-1), 0.0)
    hi = np.maximum(blocks.max(-1), 0.0)
    scale = np.where(hi > lo, (hi - lo) / top, 1.0).astype(np.float32)
    zp = np.clip(np.round(-lo / scale), 0, top).astype(np.uint8)
    codes = np.clip(np.round(blocks / scale[..., None]) + zp[..., None], 0, top).astype(np.uint8)
    return codes, scale, zp


def _fuse(parts: list[Blocks]) -> Blocks:
    """Stack matrices that read the same input along N (q|k|v, gate|up): one kernel call instead of several."""
    kinds = {p.kind for p in parts}
    n = sum(p.shape[0] for p in parts)
    if len(kinds) == 1 and parts[0].codes is not None:
        cat = lambda xs: np.concatenate(xs, axis=0)  # noqa: E731
        return Blocks(
            parts[0].kind,
            (n, parts[0].shape[1]),
            cat([p.codes for p in parts]),
            cat([p.scales for p in parts]),
            cat([p.mins for p in parts]),
        )
    return Blocks("F32", (n, parts[0].shape[1]), dense=np.concatenate([p.dequantize() for p in parts], axis=0))


def _table(table: Blocks) -> Blocks:
    """The token table as 8-bit blocks of 64 (32 if the width does not allow), whatever the file stored.

    Why 64 and not the file's Q8_0 blocks of 32: a tied lm_head reads the whole table every token (49k x 576 for
    SmolLM2, the largest matrix), and half as many float scales make decode about 3% faster for +0.04% perplexity
    (measured, issue 9). 4-bit does not pay: +10% perplexity (blocks of 32), slower and +9% (blocks of 16).
    """
    k = table.shape[1]
    block = _TABLE_BLOCK if k % _TABLE_BLOCK == 0 else _BLOCK
    if table.kind == "Q8_0" and block == _BLOCK:
        return table
    codes, scales, _ = _rtn(table.dequantize(), 8, symmetric=True, block=block)
    return Blocks("Q8_0", table.shape, codes, scales, -128.0 * scales)


def _embedding(g: _Graph, ids: str, table: Blocks, hidden: int) -> str:
    """Token ids -> [b, s, hidden]; 8-bit tables are gathered as codes and scaled, so they are stored once."""
    if g.precision == "fp32" or table.kind != "Q8_0":
        return g.one("Gather", [g.const("embed.weight", table.dequantize()), ids])
    assert table.codes is not None and table.scales is not None
    q8, sc = g.const("embed.q8", table.codes), g.const("embed.scales", table.scales.astype(np.float32))
    codes = g.one("Cast", [g.one("Gather", [q8, ids])], to=TensorProto.FLOAT)  # a tied lm_head reads q8 too
    scales = g.one("Gather", [sc, ids])
    centered = g.one("Sub", [codes, g.const("embed.zero", np.array(128.0, np.float32))])
    scaled = g.one("Mul", [centered, g.one("Unsqueeze", [scales, g.const("embed.axis", np.array([-1], np.int64))])])
    return g.one("Reshape", [scaled, g.const("embed.shape", np.array([0, 0, hidden], np.int64))])


def build_decoder(weights: LlamaWeights, precision: str, max_length: int, accuracy_level: int = 4) -> onnx.ModelProto:
    """The whole decoder as one ONNX model (weights inline: even INT8 stays far below protobuf's 2 GB limit)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    c, t = weights.config, weights.tensors
    g = _Graph(precision, accuracy_level)
    hd = c.head_dim
    # The tied table: an lm_head of its own if the file has one, else the embedding (SmolLM2 ties them).
    embed = t["token_embd.weight"]
    if precision != "fp32":
        embed = _table(embed)
    head = t.get("output.weight", embed)
    tied = head is embed and precision not in ("fp32", "int4-rtn")  # lm_head reads the embedding's 8-bit codes
    h = _embedding(g, "input_ids", embed, c.hidden_size)

    inv_freq = 1.0 / (c.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    freqs = np.outer(np.arange(max_length, dtype=np.float64), inv_freq)
    cos, sin = (
        g.const("cos_cache", np.cos(freqs).astype(np.float32)),
        g.const("sin_cache", np.sin(freqs).astype(np.float32)),
    )
    axis1 = g.const("axis1", np.array([1], np.int64))
    seqlens = g.one(
        "Cast",
        [
            g.one(
                "Sub",
                [g.one("ReduceSum", ["attention_mask", axis1], keepdims=0), g.const("one", np.array(1, np.int64))],
            )
        ],
        to=TensorProto.INT32,
    )
    total = g.one(
        "Cast",
        [g.one("Gather", [g.one("Shape", ["attention_mask"]), g.const("idx1", np.array(1, np.int64))])],
        to=TensorProto.INT32,
    )

    past, present = io_names(c.num_layers)
    extended: dict[str, str] = {}
    residual, normed = (
        h,
        g.one(
            "SimplifiedLayerNormalization",
            [h, g.const("blk.0.attn_norm", t["blk.0.attn_norm.weight"].dequantize().reshape(-1))],
            axis=-1,
            epsilon=c.rms_eps,
        ),
    )
    for i in range(c.num_layers):
        p = f"blk.{i}"
        qkv = g.linear(normed, _fuse([t[f"{p}.attn_{n}.weight"] for n in ("q", "k", "v")]), f"{p}.qkv", extended)
        attn = g.one(
            "GroupQueryAttention",
            [qkv, "", "", past[2 * i], past[2 * i + 1], seqlens, total, cos, sin],
            "com.microsoft",
            num_heads=c.num_heads,
            kv_num_heads=c.num_kv_heads,
            do_rotary=1,
            rotary_interleaved=1,
            scale=float(hd**-0.5),
        )
        g.nodes[-1].output.extend([present[2 * i], present[2 * i + 1]])  # the cache, straight to graph outputs
        o = g.linear(attn, t[f"{p}.attn_output.weight"], f"{p}.o", extended)
        ffn_norm = g.const(f"{p}.ffn_norm", t[f"{p}.ffn_norm.weight"].dequantize().reshape(-1))
        normed, _, _, residual = g.op(
            "SkipSimplifiedLayerNormalization", [o, residual, ffn_norm], 4, "com.microsoft", epsilon=c.rms_eps
        )
        gu = g.linear(normed, _fuse([t[f"{p}.ffn_gate.weight"], t[f"{p}.ffn_up.weight"]]), f"{p}.gate_up", extended)
        gate, up = g.op("Split", [gu, g.const(f"{p}.split", np.array([c.intermediate_size] * 2, np.int64))], 2, axis=-1)
        act = g.one("Mul", [g.one("Mul", [gate, g.one("Sigmoid", [gate])]), up])  # SiLU(gate) * up
        down = g.linear(act, t[f"{p}.ffn_down.weight"], f"{p}.down", extended)
        nxt = f"blk.{i + 1}.attn_norm.weight" if i + 1 < c.num_layers else "output_norm.weight"
        gamma = g.const(nxt.removesuffix(".weight"), t[nxt].dequantize().reshape(-1))
        normed, _, _, residual = g.op(
            "SkipSimplifiedLayerNormalization", [down, residual, gamma], 4, "com.microsoft", epsilon=c.rms_eps
        )

    # Only the last `logits_to_keep` positions reach the vocabulary projection (1 while decoding: 49k x 576 saved).
    start = g.one("Neg", ["logits_to_keep"])
    end = g.const("end", np.array([np.iinfo(np.int64).max], np.int64))
    kept = g.one("Slice", [normed, start, end, axis1])
    if tied:
        assert embed.codes is not None
        logits_src = g.one(
            "MatMulNBits",
            [kept, "embed.q8", "embed.scales"],
            domain="com.microsoft",
            K=c.hidden_size,
            N=c.vocab_size,
            bits=8,
            block_size=embed.codes.shape[-1],
            accuracy_level=accuracy_level,
        )
    else:
        logits_src = g.linear(kept, head, "lm_head", extended)
    g.nodes.append(helper.make_node("Identity", [logits_src], ["logits"]))

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    cache = lambda n, s: helper.make_tensor_value_info(n, f32, ["batch", c.num_kv_heads, s, hd])  # noqa: E731
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", i64, ["batch", "total"]),
        helper.make_tensor_value_info("logits_to_keep", i64, [1]),
        *(cache(n, "past") for n in past),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", f32, ["batch", "keep", c.vocab_size]),
        *(cache(n, "total") for n in present),
    ]
    graph = helper.make_graph(g.nodes, "decoder", inputs, outputs, g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    return model
