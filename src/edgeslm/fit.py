"""`edgeslm fit BUNDLE --device NAME`: does this bundle fit the device? Flash, RAM, runtime, data types, latency.

RAM is computed from the graph, not guessed: the weights' bytes plus the peak of live activation tensors over the
graph's node order, at batch 1 and a given sequence length (shapes from ONNX shape inference). The runtime's own
code and heap are not included; the report says so.

A folder from `edgeslm convert --format tflite --micro` is checked as TensorFlow Lite Micro firmware instead: flash
holds the .tflite, the int8 embedding table and the vocabulary (what `--format c-array` compiles in), and on-chip
SRAM holds the tensor arena that TFLite Micro itself measured (smallest arena that runs, found by bisection).
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


_MCU_HINT = "convert: edgeslm convert CHECKPOINT --format tflite --micro, then fit that folder"


def _kb(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def _vocab_bytes(tokenizer: Path) -> int:
    """The C vocabulary's bytes on a 32-bit MCU: each piece's characters + NUL, and a 4-byte pointer per piece."""
    import json

    vocab = json.loads(tokenizer.read_text(encoding="utf-8"))["model"]["vocab"]
    return sum(len(t.encode("utf-8")) + 1 + 4 for t in vocab)


def _fit_tflm(folder: Path, profile: dict[str, Any]) -> list[FitLine]:
    """A converted TFLite folder as TensorFlow Lite Micro firmware: flash for the data, SRAM for the arena."""
    import json

    import numpy as np

    report = json.loads((folder / "tflite.json").read_text(encoding="utf-8"))
    name = "int8" if (folder / "model_int8.tflite").is_file() else "float"
    measured = (report.get("tflm") or {}).get(name)
    if not measured:
        raise ConfigError(
            f"`{folder}` has no TensorFlow Lite Micro arena measured for model_{name}.tflite; re-convert with "
            "`edgeslm convert CHECKPOINT --format tflite --micro` (it runs TFLite Micro and records the arena)"
        )
    model = (folder / f"model_{name}.tflite").stat().st_size
    table = np.load(folder / f"embedding_{name}.npy", mmap_mode="r", allow_pickle=False).nbytes
    vocab = _vocab_bytes(folder / "tokenizer.json")
    flash_need, arena = model + table + vocab, int(measured["arena_bytes"])
    flash = profile["storage_mb"] * 1e6
    sram = profile.get("sram_kb", profile["ram_mb"] * 1000) * 1024
    what = "on-chip SRAM" if "sram_kb" in profile else "RAM"
    return [
        FitLine(
            f"flash (model {_mb(model)} + embedding table {_mb(table)} + vocabulary {_mb(vocab)})",
            _mb(flash_need),
            _mb(flash),
            _mb(flash - flash_need),
            flash_need <= flash,
        ),
        FitLine(
            f"{what} (TFLite Micro arena, measured at {report['seq_len']} tokens)",
            _kb(arena),
            _kb(sram),
            _kb(sram - arena),
            arena <= sram,
        ),
        FitLine("runtime", "tflite-micro", ", ".join(profile["runtimes"]), "", "tflite-micro" in profile["runtimes"]),
        FitLine("data type", name, ", ".join(profile["dtypes"]), "", name in profile["dtypes"]),
        FitLine(
            "TFLite Micro vs LiteRT",
            f"agreement {measured['label_agreement_vs_litert']:.3f}",
            "",
            f"{measured['rows']} dev rows, max |dlogit| {measured['max_abs_logit_diff_vs_litert']:.3g}",
            None,
        ),
        FitLine("latency p50 (estimate)", "n/a", "", "not estimated: no sourced MCU speed factor (profile gap)", None),
    ]


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def fit(bundle: Path, device: str, seq_len: int = 128) -> tuple[dict[str, Any], list[FitLine]]:
    """Check ``bundle`` against the device profile ``device``; return the profile and one line per check."""
    if seq_len <= 0:
        raise ConfigError(f"`seq_len` must be > 0, got {seq_len}")
    profile = check_device(device)
    if (Path(bundle) / "tflite.json").is_file():
        return profile, _fit_tflm(Path(bundle), profile)
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
        FitLine(
            "runtime",
            fmt,
            ", ".join(profile["runtimes"]),
            "" if fmt in profile["runtimes"] else _MCU_HINT if "tflite-micro" in profile["runtimes"] else "",
            fmt in profile["runtimes"],
        ),
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
