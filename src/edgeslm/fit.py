"""`edgeslm fit BUNDLE --device NAME`: does this bundle fit the device? Flash, RAM, runtime, data types, latency.

RAM is computed from the graph, not guessed: the weights' bytes plus the peak of live activation tensors over the
graph's node order, at batch 1 and a given sequence length (shapes from ONNX shape inference). The runtime's own
code and heap are not included; the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bundle import verify_bundle
from .devices import check_device
from .errors import ConfigError
from .runtime.predictor import model_bytes

__all__ = ["FitLine", "fit", "graph_memory"]

_DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2, 21: 1, 22: 1}  # onnx TensorProto


@dataclass(frozen=True)
class FitLine:
    check: str
    need: str
    budget: str
    margin: str
    ok: bool | None  # None: cannot be decided (a gap in the device profile), shown as "n/a"


def graph_memory(onnx_bytes: bytes, seq_len: int) -> dict[str, int]:
    """Weight bytes and peak live activation bytes of an ONNX graph at batch 1 and ``seq_len`` tokens."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        for d, value in zip(dims, (1, seq_len), strict=False):
            d.ClearField("dim_param")
            d.dim_value = value
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    weights = {t.name: math.prod(t.dims) * _DTYPE_BYTES.get(t.data_type, 4) for t in graph.initializer}
    sizes: dict[str, int] = {}
    for vi in [*graph.value_info, *graph.input, *graph.output]:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        sizes[vi.name] = math.prod(dims) * _DTYPE_BYTES.get(t.elem_type, 4)
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = i
    outputs = {o.name for o in graph.output}
    live: dict[str, int] = {i.name: sizes.get(i.name, 0) for i in graph.input}
    peak = sum(live.values())
    for i, node in enumerate(graph.node):
        for name in node.output:
            if name and name not in weights:
                live[name] = sizes.get(name, 0)
        peak = max(peak, sum(live.values()))
        for name in list(live):
            if last_use.get(name, -1) <= i and name not in outputs:
                del live[name]
    return {"weights": sum(weights.values()), "activations_peak": peak}


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def fit(bundle: Path, device: str, seq_len: int = 128) -> tuple[dict[str, Any], list[FitLine]]:
    """Check ``bundle`` against the device profile ``device``; return the profile and one line per check."""
    if seq_len <= 0:
        raise ConfigError(f"`seq_len` must be > 0, got {seq_len}")
    profile = check_device(device)
    manifest, blobs = verify_bundle(Path(bundle))
    stored = sum(len(b) for b in blobs.values()) + len((Path(bundle) / "manifest.json").read_bytes())
    mem = graph_memory(model_bytes(manifest, blobs), min(seq_len, manifest.max_length))
    ram_need = mem["weights"] + mem["activations_peak"]
    flash, ram = profile["storage_mb"] * 1e6, profile["ram_mb"] * 1e6
    fmt = "onnxruntime"
    quant = (manifest.extra.get("quantize") or {}).get("method", "")
    dtype = "int4" if "Int4" in quant else "int8" if "Int8" in quant else "fp32"
    lines = [
        FitLine("storage (bundle files)", _mb(stored), _mb(flash), _mb(flash - stored), stored <= flash),
        FitLine(
            f"RAM (weights {_mb(mem['weights'])} + activations {_mb(mem['activations_peak'])} at {seq_len} tokens)",
            _mb(ram_need),
            _mb(ram),
            _mb(ram - ram_need),
            ram_need <= ram,
        ),
        FitLine("runtime", fmt, ", ".join(profile["runtimes"]), "", fmt in profile["runtimes"]),
        FitLine("data type", dtype, ", ".join(profile["dtypes"]), "", dtype in profile["dtypes"]),
    ]
    host_ms = manifest.metrics.get("p50_ms")
    speed = profile.get("speed_factor", math.nan)
    if host_ms is None or speed != speed:
        why = "no build-time latency in the manifest" if host_ms is None else "no sourced speed factor for this device"
        lines.append(FitLine("latency p50 (estimate)", "n/a", "", why, None))
    else:
        lines.append(
            FitLine(
                "latency p50 (estimate)", f"{host_ms * speed:.2f} ms", "", f"host {host_ms:.2f} ms x {speed:g}", None
            )
        )
    return profile, lines
