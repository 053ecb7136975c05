"""LoRA on the student, build side: wrap it with peft, read the trained A/B, and write the adapter artifact.

Shared by ``personalize`` (one user) and ``federate`` (a fleet): both train the same peft-wrapped student and ship
the same adapter format, which ``learn.adapter`` merges into the base bundle on the device.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._fs import atomic_dir
from ..bundle import MANIFEST, verify_bundle
from ..errors import ConfigError, ModelError
from ..models import Checkpoint, TextClassifier, load_checkpoint
from .adapter import ADAPTER_FILE, ADAPTER_FORMAT, ADAPTER_MANIFEST, Target

__all__ = ["LoraSpec", "Student", "lora_arrays", "resolve_student", "set_lora_arrays", "wrap", "write_adapter"]


@dataclass(frozen=True)
class LoraSpec:
    """Which weights get a low-rank update, and how large."""

    rank: int = 8  # r: 8 is the usual default; the adapter grows linearly with it
    alpha: int = 16  # the update is scaled by alpha / rank (peft's lora_alpha)
    targets: tuple[str, ...] = ("query", "value", "head")  # module name suffixes; the head lets the label prior move
    dropout: float = 0.05  # LoRA dropout while training

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ConfigError(f"`rank` must be > 0, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"`alpha` must be > 0, got {self.alpha}")
        if not self.targets:
            raise ConfigError("`targets` must name at least one module (e.g. query, value, head), got none")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"`dropout` must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class Student:
    """The torch student and the bundle built from it (the adapter binds to the bundle)."""

    checkpoint: Checkpoint
    bundle: Path
    manifest_sha256: str


def resolve_student(source: Path, checkpoint: Path | None = None) -> Student:
    """``source``: a build folder (report.json + bundle/) or a bundle folder with ``checkpoint`` naming the student."""
    source = Path(source)
    bundle = source / "bundle" if (source / "bundle" / MANIFEST).is_file() else source
    if not (bundle / MANIFEST).is_file():
        raise ModelError(f"`{source}` is neither a build folder nor a bundle; pass the folder `edgeslm build` wrote")
    if checkpoint is None:
        report = source / "report.json"
        if not report.is_file():
            raise ModelError(
                f"`{source}` is a bundle without its build report; pass --checkpoint with the student checkpoint "
                "folder (report.json `artifacts.student` of its build)"
            )
        checkpoint = _student_in_report(source, json.loads(report.read_text(encoding="utf-8")))
    verify_bundle(bundle)
    ckpt = load_checkpoint(checkpoint)
    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    if tuple(manifest["labels"]) != ckpt.labels:
        raise ModelError(f"checkpoint `{checkpoint}` and bundle `{bundle}` have different labels; they are not a pair")
    digest = hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()
    return Student(ckpt, bundle, digest)


def _student_in_report(build: Path, report: dict[str, Any]) -> Path:
    """The student checkpoint a build report names: absolute, relative to the build folder, relative to where the
    build ran (reports written before paths were made absolute), or in the cache beside the build folder."""
    try:
        named = Path(report["artifacts"]["student"])
    except (KeyError, TypeError) as e:
        raise ModelError(f"`{build / 'report.json'}` names no student checkpoint; pass --checkpoint") from e
    candidates = (
        [named] if named.is_absolute() else [build / named, named, build.parent / ".edgeslm-cache" / named.name]
    )
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelError(
        f"the student checkpoint `{named}` named by `{build / 'report.json'}` is not at "
        f"{', '.join(f'`{c}`' for c in candidates)}; pass --checkpoint with its folder"
    )


def wrap(model: TextClassifier, spec: LoraSpec, seed: int = 0) -> Any:
    """A peft model around ``model`` with LoRA on ``spec.targets``; only the A/B matrices train."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=list(spec.targets)
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # peft: "Target modules ... not found in the base model"
        raise ConfigError(f"LoRA targets {list(spec.targets)} do not fit the student ({e})") from e


def _lora_layers(peft_model: Any) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    inner = peft_model.base_model.model
    return {name: m for name, m in inner.named_modules() if isinstance(m, LoraLayer)}


def lora_arrays(peft_model: Any) -> dict[str, np.ndarray]:
    """``{"<module>.lora_A": (r, in), "<module>.lora_B": (out, r)}`` as float32 numpy, in module order."""
    out: dict[str, np.ndarray] = {}
    for name, layer in _lora_layers(peft_model).items():
        out[f"{name}.lora_A"] = layer.lora_A["default"].weight.detach().cpu().numpy().astype(np.float32)
        out[f"{name}.lora_B"] = layer.lora_B["default"].weight.detach().cpu().numpy().astype(np.float32)
    return out


def set_lora_arrays(peft_model: Any, arrays: dict[str, np.ndarray]) -> None:
    """Load A/B matrices (as ``lora_arrays`` returns them) into the peft model."""
    with torch.no_grad():
        for name, layer in _lora_layers(peft_model).items():
            layer.lora_A["default"].weight.copy_(torch.from_numpy(arrays[f"{name}.lora_A"]))
            layer.lora_B["default"].weight.copy_(torch.from_numpy(arrays[f"{name}.lora_B"]))


def scaling(peft_model: Any) -> float:
    layers = _lora_layers(peft_model)
    return float(next(iter(layers.values())).scaling["default"])


def locate(model_bytes: bytes, weights: dict[str, np.ndarray]) -> list[Target]:
    """Find each module's weight in the base graph: the (quantized) MatMul whose node path names the module.

    ``weights`` maps module name to its torch weight (out, in). The torch exporter names nodes after the modules
    that called them (``/layer.0/attention/self/query/MatMul``; ``/encoder/encoder/layer.0/...`` in graphs
    exported before ``ExportConfig.padding_bias``), so the match is by name or name suffix, then checked by value:
    the stored weight, dequantized, must equal W^T within one quantization step, or the checkpoint is not the one
    the bundle was built from.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_model_from_string(model_bytes).graph
    inits = {t.name: t for t in graph.initializer}
    found: dict[str, Target] = {}
    for node in graph.node:
        if node.op_type not in ("MatMul", "MatMulInteger", "Gemm") or len(node.input) < 2:
            continue
        if node.input[1] not in inits:
            continue
        # the node's path names the module; the head's quantized MatMul is named after its output, its weight not
        path = ".".join(node.output[0].lstrip("/").split("/")[:-1])
        by_weight = node.input[1].split(".weight")[0]
        module = next((w for w in weights if path and (w == path or w.endswith("." + path))), by_weight)
        if module not in weights or module in found:
            continue
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute)
        tensor = inits[node.input[1]]
        stored = numpy_helper.to_array(tensor)
        expect = weights[module] if transposed else weights[module].T  # as stored: (out, in) or (in, out)
        if node.op_type == "MatMulInteger":
            scale_name = node.input[1].removesuffix("_quantized") + "_scale"
            zero_name = node.input[3] if len(node.input) > 3 and node.input[3] in inits else None
            if scale_name not in inits:
                raise ModelError(f"no quantization scale `{scale_name}` for `{module}` in the bundle's graph")
            scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32).reshape(-1)
            zero = (
                numpy_helper.to_array(inits[zero_name]).astype(np.int64).reshape(-1)
                if zero_name
                else np.zeros(1, dtype=np.int64)
            )
            tolerance = float(scale.max())
            value = (stored.astype(np.float32) - zero) * scale
        else:
            scale_name, zero_name, tolerance = None, None, 1e-5
            scale, zero = np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
            value = stored
        if value.shape != expect.shape or float(np.abs(value - expect).max()) > tolerance:
            raise ModelError(
                f"the bundle's weight for `{module}` does not match the checkpoint; pass the student checkpoint "
                "the bundle was built from"
            )
        raw = tensor.raw_data
        offset = model_bytes.find(raw)
        if not raw or offset < 0 or model_bytes.find(raw, offset + 1) >= 0:
            raise ModelError(f"the raw weight of `{module}` is not uniquely locatable in model.onnx")
        found[module] = Target(
            module=module,
            initializer=node.input[1],
            offset=offset,
            shape=(int(stored.shape[0]), int(stored.shape[1])),
            dtype=str(stored.dtype),
            sha256=hashlib.sha256(raw).hexdigest(),
            transposed=transposed,
            scale=scale_name,
            zero_point=zero_name,
            scale_value=tuple(float(x) for x in scale),
            zero_point_value=tuple(int(x) for x in zero),
        )
    missing = sorted(set(weights) - set(found))
    if missing:
        raise ModelError(f"LoRA targets {missing[:3]} have no MatMul in the bundle's graph; target other modules")
    return [found[m] for m in weights]


def write_adapter(
    peft_model: Any, student: Student, out: Path, info: dict[str, Any], *, force: bool = False
) -> dict[str, Any]:
    """Write ``adapter.safetensors`` + ``adapter.json`` (bound to ``student.bundle`` by hash) atomically."""
    from safetensors.numpy import save

    arrays = lora_arrays(peft_model)
    layers = _lora_layers(peft_model)
    weights = {name: layer.get_base_layer().weight.detach().cpu().numpy() for name, layer in layers.items()}
    manifest = json.loads((student.bundle / MANIFEST).read_text(encoding="utf-8"))
    targets = locate((student.bundle / manifest["model"]).read_bytes(), weights)
    blob = save(arrays)
    rank = next(iter(arrays.values())).shape[0]
    meta = {
        "format_version": ADAPTER_FORMAT,
        "kind": "lora",
        "rank": int(rank),
        "scaling": scaling(peft_model),
        "base": {
            "manifest_sha256": student.manifest_sha256,
            "model_sha256": manifest["files"][manifest["model"]]["sha256"],
            "labels": manifest["labels"],
        },
        "targets": [
            {
                **t.__dict__,
                "shape": list(t.shape),
                "scale_value": list(t.scale_value),
                "zero_point_value": list(t.zero_point_value),
            }
            for t in targets
        ],
        "files": {ADAPTER_FILE: {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}},
        **info,
    }
    from .._fs import write_bytes, write_json

    with atomic_dir(Path(out), force=force) as tmp:
        write_bytes(tmp / ADAPTER_FILE, blob)
        write_json(tmp / ADAPTER_MANIFEST, meta)
    return meta
