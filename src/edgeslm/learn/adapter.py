"""A LoRA adapter on top of a bundle, on the device: read, bind to its base by hash, merge into the graph at load.

The adapter is a folder: ``adapter.safetensors`` (each target's A (r, in) and B (out, r), float32) and
``adapter.json`` (rank, scaling, the sha256 of the base bundle's manifest.json, and for every target where its
weight lies in the base ``model.onnx``: byte offset, shape, dtype, quantization scale and zero point).

Merged at load (W' = W + scaling * A^T B^T, requantized the way the base was) and handed to onnxruntime with
``SessionOptions.add_initializer``: the adapted session runs the base graph unchanged, so it is exactly as fast as
the base bundle. Keeping LoRA separate would add two small matmuls per target to every call and needs a graph with
LoRA inputs (ORT's native adapters), which our bundles do not have; ``benchmarks/federated.py`` measures the cost.

Imports numpy, onnxruntime, tokenizers and safetensors' numpy loader only: no torch, no onnx (a test checks).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..bundle import MANIFEST, Manifest
from ..errors import BundleError
from ..runtime.predictor import Predictor, model_bytes, session_options
from ..runtime.verified_file import VerifiedModel

__all__ = ["ADAPTER_FILE", "ADAPTER_MANIFEST", "AdaptedPredictor", "Adapter", "Target", "load_adapter", "merge"]

ADAPTER_FORMAT = 1  # bump on any change an older reader would misread
ADAPTER_MANIFEST = "adapter.json"
ADAPTER_FILE = "adapter.safetensors"
_DTYPES = {"int8": np.int8, "uint8": np.uint8, "float32": np.float32}


@dataclass(frozen=True)
class Target:
    """One adapted weight: the torch module it came from and where its base weight lies in model.onnx."""

    module: str  # e.g. encoder.encoder.layer.0.attention.self.query
    initializer: str  # the ONNX initializer holding W^T (in, out), quantized or not
    offset: int  # byte offset of its raw data in model.onnx
    shape: tuple[int, int]  # as stored: (in, out), or (out, in) when ``transposed`` (a Gemm with transB)
    dtype: str  # int8 | uint8 | float32
    sha256: str  # of those raw bytes: a second check that the base is the one the adapter was made for
    scale: str | None  # initializer names of the quantization parameters (None for a float32 weight)
    zero_point: str | None
    scale_value: tuple[float, ...]  # one value (per tensor) or one per output column (per channel)
    zero_point_value: tuple[int, ...]
    transposed: bool = False


@dataclass(frozen=True)
class Adapter:
    path: Path
    rank: int
    scaling: float  # lora_alpha / rank
    base_manifest_sha256: str
    targets: tuple[Target, ...]
    tensors: dict[str, np.ndarray]  # "<module>.lora_A" (r, in), "<module>.lora_B" (out, r)
    meta: dict[str, Any]  # adapter.json as read


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_adapter(path: str | Path) -> Adapter:
    """Read and check an adapter folder (its manifest, the safetensors hash, every tensor's shape)."""
    from safetensors.numpy import load as load_safetensors

    path = Path(path)
    try:
        meta = json.loads((path / ADAPTER_MANIFEST).read_text(encoding="utf-8"))
        blob = (path / ADAPTER_FILE).read_bytes()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(
            f"`{path}` is not a readable adapter ({e}); it needs {ADAPTER_MANIFEST} and {ADAPTER_FILE} "
            "from `edgeslm personalize`"
        ) from e
    if not isinstance(meta, dict) or meta.get("format_version") != ADAPTER_FORMAT or meta.get("kind") != "lora":
        raise BundleError(f"`{path / ADAPTER_MANIFEST}` is not a LoRA adapter of format {ADAPTER_FORMAT}")
    expected = meta.get("files", {}).get(ADAPTER_FILE, {}).get("sha256")
    if expected != _sha256(blob):
        raise BundleError(f"`{path / ADAPTER_FILE}` does not match the hash in its manifest; the adapter is damaged")
    try:
        tensors = load_safetensors(blob)
        targets = tuple(
            Target(
                module=t["module"],
                initializer=t["initializer"],
                offset=int(t["offset"]),
                shape=(int(t["shape"][0]), int(t["shape"][1])),
                dtype=t["dtype"],
                sha256=t["sha256"],
                scale=t["scale"],
                zero_point=t["zero_point"],
                scale_value=tuple(float(x) for x in t["scale_value"]),
                zero_point_value=tuple(int(x) for x in t["zero_point_value"]),
                transposed=bool(t.get("transposed", False)),
            )
            for t in meta["targets"]
        )
        rank, scaling, base = int(meta["rank"]), float(meta["scaling"]), str(meta["base"]["manifest_sha256"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise BundleError(f"`{path / ADAPTER_MANIFEST}` is malformed ({e}); personalize again") from e
    for t in targets:
        a, b = tensors.get(f"{t.module}.lora_A"), tensors.get(f"{t.module}.lora_B")
        fan_in, fan_out = t.shape[::-1] if t.transposed else t.shape
        if a is None or b is None or a.shape != (rank, fan_in) or b.shape != (fan_out, rank):
            raise BundleError(f"adapter tensors for `{t.module}` are missing or misshapen; personalize again")
        if t.dtype not in _DTYPES:
            raise BundleError(f"adapter target `{t.module}` has unknown dtype `{t.dtype}`; upgrade edgeslm")
    return Adapter(path, rank, scaling, base, targets, tensors, meta)


def merge(base: np.ndarray, target: Target, delta: np.ndarray) -> dict[str, np.ndarray]:
    """The initializers that replace ``target``'s: W + delta, requantized with the base's scheme.

    ``base`` is the raw weight as stored and ``delta`` scaling * A^T B^T in the same layout. A symmetric int8 base
    (zero point 0) stays symmetric in [-127, 127]; an asymmetric one gets a new zero point. Per-channel scales
    (one per output column) stay per channel.
    """
    if target.dtype == "float32":
        return {target.initializer: (base + delta).astype(np.float32)}
    scale = np.asarray(target.scale_value, dtype=np.float32)
    zero = np.asarray(target.zero_point_value, dtype=np.float32)
    w = (base.astype(np.float32) - zero) * scale + delta  # (in, out), per-channel scales broadcast over columns
    per_channel = scale.size > 1
    axis = 0 if per_channel else None
    out_shape = (scale.size,) if per_channel else ()
    info = np.iinfo(np.int8 if target.dtype == "int8" else np.uint8)
    if target.dtype == "int8" and not zero.any():
        new_scale = np.maximum(np.abs(w).max(axis=axis), 1e-12) / 127.0
        q = np.clip(np.rint(w / new_scale), -127, 127)
        new_zero = np.zeros(out_shape)
    else:
        lo, hi = np.minimum(w.min(axis=axis), 0.0), np.maximum(w.max(axis=axis), 0.0)
        new_scale = np.maximum(hi - lo, 1e-12) / float(info.max - info.min)
        new_zero = np.clip(np.rint(info.min - lo / new_scale), info.min, info.max)
        q = np.clip(np.rint(w / new_scale) + new_zero, info.min, info.max)
    out = {target.initializer: q.astype(_DTYPES[target.dtype])}
    if target.scale:
        out[target.scale] = np.asarray(new_scale, dtype=np.float32).reshape(out_shape)
    if target.zero_point:
        out[target.zero_point] = np.asarray(new_zero).astype(_DTYPES[target.dtype]).reshape(out_shape)
    return out


def merged_initializers(model: bytes, adapter: Adapter) -> dict[str, np.ndarray]:
    """Every initializer the adapter replaces, read from the base graph's bytes at the recorded offsets."""
    out: dict[str, np.ndarray] = {}
    for t in adapter.targets:
        size = t.shape[0] * t.shape[1] * np.dtype(_DTYPES[t.dtype]).itemsize
        raw = model[t.offset : t.offset + size]
        if len(raw) != size or _sha256(raw) != t.sha256:
            raise BundleError(
                f"the base model's weight for `{t.module}` is not where the adapter expects it; "
                "the adapter was made for another base bundle, personalize again on this one"
            )
        base = np.frombuffer(raw, dtype=_DTYPES[t.dtype]).reshape(t.shape)
        a, b = adapter.tensors[f"{t.module}.lora_A"], adapter.tensors[f"{t.module}.lora_B"]
        delta = adapter.scaling * (a.T.astype(np.float32) @ b.T.astype(np.float32))  # (in, out)
        if t.transposed:
            delta = delta.T
        out.update(merge(base, t, delta))
    return out


def check_binding(bundle: Path, adapter: Adapter) -> None:
    """Refuse an adapter made for another base: the sha256 of the bundle's manifest.json must match."""
    try:
        digest = _sha256((bundle / MANIFEST).read_bytes())
    except OSError as e:
        raise BundleError(f"`{bundle}` has no readable {MANIFEST} ({e}); pass the base bundle folder") from e
    if digest != adapter.base_manifest_sha256:
        raise BundleError(
            f"adapter `{adapter.path}` was trained for the base bundle with manifest sha256 "
            f"{adapter.base_manifest_sha256[:12]}…, but `{bundle}` has {digest[:12]}…; "
            "apply it to its own base bundle, or personalize again on this one"
        )


class AdaptedPredictor(Predictor):
    """``Predictor`` on a base bundle with a LoRA adapter merged into its weights at load.

    The bundle is verified (hashes, signature with ``trusted_keys``) exactly as for the base, the adapter is bound
    to it by the sha256 of its manifest, and the merged weights replace the base initializers in one session.
    """

    def __init__(
        self,
        bundle: str | Path,
        adapter: str | Path | Adapter,
        *,
        threads: int | None = None,
        trusted_keys: Sequence[bytes] | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        bundle = Path(bundle)
        self.adapter = adapter if isinstance(adapter, Adapter) else load_adapter(adapter)
        check_binding(bundle, self.adapter)
        super().__init__(bundle, threads=threads, trusted_keys=trusted_keys, providers=providers)

    def _accept(self, manifest: Manifest) -> None:
        _classifier(manifest)

    def _session_input(self, model: VerifiedModel, threads: int | None) -> tuple[str | bytes, ort.SessionOptions]:
        """The hashed bytes (the merge reads the base weights at their offsets) and options carrying the merged
        weights, which replace the base initializers in the one session that is built."""
        data = model_bytes(self.manifest, model.read())
        options = session_options(threads)
        self._overrides = [  # onnxruntime reads these buffers at session build; keep them alive with the session
            (name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value)))
            for name, value in merged_initializers(data, self.adapter).items()
        ]
        for name, value in self._overrides:
            options.add_initializer(name, value)
        return data, options


def _classifier(manifest: Manifest) -> None:
    if manifest.task != "text-classification":
        raise BundleError(
            f"a LoRA adapter applies to a text-classification bundle; this one's task is `{manifest.task}`"
        )
