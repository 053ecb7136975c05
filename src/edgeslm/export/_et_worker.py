"""The half of the ExecuTorch / Core ML export that runs inside ``.venv-export`` (beside litert-torch).

Reached through ``_tflite_worker`` (same process model: JSON request and answer files, nothing pickled), with the
commands ``executorch``, ``run-pte`` and ``coreml``. Unlike the .tflite models, these take token ids: the
word-embedding lookup is inside the graph (ExecuTorch's portable kernels and Core ML both have a gather that is
exact in float), so the .pte / .mlpackage is self-contained. Everything after the lookup is
``_tflite_worker._wrapper``'s model: the same eager-attention encoder, additive padding bias, mean pooling; but the
.pte takes any length from 2 to ``seq_len`` (a .tflite is frozen): each sentence runs at its own length, as in ONNX
Runtime. At the frozen 64 the float .pte did 2.2x the work of the median SST-2 dev sentence (24 tokens).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ._tflite_worker import MASK_BIAS, _wrapper


def _ids_model(checkpoint: Path, seq_len: int, int8_table: bool = False, dynamic: bool = True) -> Any:
    """The classifier with int32 ids and mask ``(1, t)`` in: the table lookup is the graph's first op; the rest is
    ``_wrapper``'s forward (kept in step with it), with the position rows sliced to ``t <= seq_len`` when
    ``dynamic`` (else ``t == seq_len``: coremltools cannot convert the no-op slice, an `alias` node).

    With ``int8_table`` the table is stored as int8 with one symmetric scale per row and looked up with
    ``quantized_decomposed::embedding_byte`` (ExecuTorch's quantized kernel library): the float table is three
    quarters of the student's bytes (30,522 x 384 x 4 = 46.9 MB of 61.2) and XNNPACK's quantizer leaves it float.
    """
    import torch

    inner, table = _wrapper(checkpoint, seq_len)
    enc = inner.model.encoder
    weight = torch.from_numpy(table)

    class IdsIn(torch.nn.Module):
        scales: torch.Tensor | None

        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            if int8_table:
                _quantized_kernels()
                scales = weight.abs().amax(1).clamp(min=1e-12) / 127.0  # (vocab,): one scale per token row
                self.register_buffer("scales", scales)
                self.register_buffer("table", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8))
            else:
                self.scales = None
                self.table = torch.nn.Parameter(weight, requires_grad=False)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            ids = input_ids.to(torch.long)
            if self.scales is None:
                embeds = torch.nn.functional.embedding(ids, self.table)
            else:
                embeds = torch.ops.quantized_decomposed.embedding_byte.default(
                    self.table, self.scales, None, -127, 127, ids
                )
            mask = attention_mask.to(torch.float32)
            bias = ((1.0 - mask) * MASK_BIAS)[:, None, None, :]  # (b, 1, 1, t) added to attention scores
            const = self.inner.const[:, : ids.shape[1]] if dynamic else self.inner.const
            hidden = enc.embeddings.LayerNorm(embeds + const)
            for layer in enc.encoder.layer:
                out = layer(hidden, attention_mask=bias)
                hidden = out[0] if isinstance(out, tuple) else out
            m = mask[:, :, None]
            return self.inner.model.head((hidden * m).sum(1) / m.sum(1).clamp(min=1.0))

    return IdsIn().eval()


def _export(model: Any, sample: tuple[Any, Any], dynamic: bool) -> Any:
    """torch.export at the sample's shape; ``dynamic``: the length is a symbol in [2, sample length] (torch.export
    specializes lengths 0 and 1, and a sentence always has [CLS] and [SEP])."""
    import torch

    seq = torch.export.Dim("seq", min=2, max=int(sample[0].shape[1])) if dynamic else None
    shapes = ({1: seq}, {1: seq}) if dynamic else None
    with torch.no_grad():
        return torch.export.export(model, sample, dynamic_shapes=shapes)


def _row(ids: list[int], mask: list[int]) -> tuple[Any, Any]:
    """One sentence as the (1, t) int32 tensors a program takes (rows may differ in length)."""
    import torch

    return torch.tensor([ids], dtype=torch.int32), torch.tensor([mask], dtype=torch.int32)


def _quantized_kernels() -> None:
    """Register ExecuTorch's quantized ops: the ``embedding_byte`` schema for export, its kernel for the runtime."""
    import importlib

    importlib.import_module("executorch.exir.passes._quant_patterns_and_replacements")
    importlib.import_module("executorch.kernels.quantized")


def _sample(req: dict[str, Any]) -> tuple[Any, Any]:
    """The first request row at the full length: the export's sample and, when dynamic, its longest shape."""
    return _row(req["input_ids"][0], req["attention_mask"][0])


def _int8(model: Any, sample: tuple[Any, Any], req: dict[str, Any]) -> Any:
    """PT2E static INT8 for XNNPACK: symmetric per-channel int8 weights, int8 activations whose ranges come from the
    calibration rows (real sentences), then re-exported so the XNNPACK partitioner sees quantize/dequantize pairs.
    The quantizer annotates linears, matmuls and adds; layer norm, softmax and GELU stay float between them (and
    the int8 table of ``_ids_model(int8_table=True)`` is dequantized row by row by its lookup)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dynamic = bool(req.get("dynamic"))
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(_export(model, sample, dynamic).module(), quantizer)
    with torch.no_grad():
        for ids, mask in zip(req["calibration_ids"], req["calibration_mask"], strict=True):
            prepared(*_row(ids, mask))
    return _export(convert_pt2e(prepared), sample, dynamic)


def _op_name(target: Any) -> str:
    """``aten::native_layer_norm`` from an edge op (it prints as its schema), ``sym_size`` from ``aten.sym_size.int``
    (a length read by a dynamic-shape program)."""
    text = str(target).split("(")[0]
    if "::" in text:
        return text.split("::")[-1].split(".")[0]
    parts = text.split(".")
    return parts[1] if len(parts) > 2 else text


def _lower(exported: Any, path: Path) -> dict[str, Any]:
    """An exported program -> ``path`` (.pte): XNNPACK takes what it can, the rest runs on portable kernels."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    graph = edge.exported_program().graph_module.graph
    delegated = sum(1 for n in graph.nodes if n.op == "call_function" and "executorch_call_delegate" in str(n.target))
    portable = sorted(
        {
            _op_name(n.target)
            for n in graph.nodes
            if n.op == "call_function" and not any(k in str(n.target) for k in ("call_delegate", "getitem"))
        }
    )
    path.write_bytes(edge.to_executorch().buffer)
    return {"xnnpack_subgraphs": delegated, "portable_ops": portable}  # portable: ops left outside XNNPACK


def executorch(req: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint -> ``model.pte`` (float32) and, with calibration rows, ``model_int8.pte``; op counts per side.
    With a ``check`` request (``run_pte``'s, minus the models), both programs are run on its rows in this process
    too (one torch + executorch start-up instead of two)."""
    sample, dynamic = _sample(req), bool(req.get("dynamic"))
    model = _ids_model(Path(req["checkpoint"]), int(sample[0].shape[1]), dynamic=dynamic)
    out, answer = Path(req["out"]), {}
    t0 = time.perf_counter()
    answer["float"] = _lower(_export(model, sample, dynamic), out / "model.pte")
    answer["float"]["seconds"] = round(time.perf_counter() - t0, 2)
    if req.get("calibration_ids"):
        t0 = time.perf_counter()
        int8_model = _ids_model(Path(req["checkpoint"]), int(sample[0].shape[1]), int8_table=True, dynamic=dynamic)
        answer["int8"] = _lower(_int8(int8_model, sample, req), out / "model_int8.pte")
        answer["int8"]["seconds"] = round(time.perf_counter() - t0, 2)
    if req.get("check"):
        names = {"executorch_xnnpack": "model.pte", "executorch_xnnpack_int8": "model_int8.pte"}
        models = {name: str(out / file) for name, file in names.items() if (out / file).is_file()}
        answer["check"] = run_pte({**req["check"], "models": models})
    return answer


def _set_threads(threads: int) -> bool:
    """ExecuTorch's pybindings size the XNNPACK threadpool only through ``_unsafe_reset_threadpool`` (safe here:
    nothing runs yet); True when the pool then reports that many threads."""
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return False
    if not hasattr(portable_lib, "_unsafe_reset_threadpool"):
        return False
    portable_lib._unsafe_reset_threadpool(threads)
    return bool(portable_lib._threadpool_get_thread_count() == threads)


def run_pte(req: dict[str, Any]) -> dict[str, Any]:
    """Logits and per-row latency (batch 1) from ExecuTorch's Python runtime (the C++ runtime + XNNPACK) for each
    program in ``models`` (name -> .pte), one after the other in this one process."""
    from executorch.runtime import Runtime

    _quantized_kernels()  # an INT8 program looks its table up with embedding_byte
    rows = [_row(ids, mask) for ids, mask in zip(req["input_ids"], req["attention_mask"], strict=True)]
    threads_set = _set_threads(int(req.get("threads", 1)))
    runs = {}
    for name, model in req["models"].items():
        method = Runtime.get().load_program(Path(model)).load_method("forward")
        logits, times = [], []
        for i in range(-int(req.get("warmup", 2)), len(rows)):
            t0 = time.perf_counter()
            (got,) = method.execute(rows[max(i, 0)])
            if i >= 0:
                times.append((time.perf_counter() - t0) * 1000)
                logits.append(got[0].tolist())
        runs[name] = {"logits": logits, "latency_ms": times}
    return {"runs": runs, "threads_set": threads_set}


def _feature(f: Any) -> dict[str, Any]:
    kind = f.type.WhichOneof("Type")
    entry: dict[str, Any] = {"name": f.name, "type": kind}
    if kind == "multiArrayType":
        arr = f.type.multiArrayType
        entry["shape"] = [int(d) for d in arr.shape]
        entry["dtype"] = type(arr).ArrayDataType.Name(arr.dataType)
    return entry


def _spec(mlmodel: Any, path: Path) -> dict[str, Any]:
    """What can be checked off macOS: the package saved, read back from disk, its inputs, outputs and MIL ops."""
    import coremltools as ct

    mlmodel.save(str(path))
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    return {
        "inputs": [_feature(f) for f in spec.description.input],
        "outputs": [_feature(f) for f in spec.description.output],
        "spec_version": int(spec.specificationVersion),
        "mil_ops": sorted({op.op_type for fn in mlmodel._mil_program.functions.values() for op in fn.operations}),
    }


def coreml(req: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint -> ``model.mlpackage`` (ML program, float32) and, with ``int8``, ``model_int8.mlpackage`` (the
    same program with int8 weights: coremltools' one-call ``linear_quantize_weights``, symmetric per-channel;
    activations and compute stay float), each with its spec read back from disk.

    Core ML prediction needs macOS; on Linux the package is reloaded with ``skip_model_load`` and its inputs,
    outputs and MIL ops are reported instead.
    """
    import coremltools as ct

    sample = _sample(req)
    model = _ids_model(Path(req["checkpoint"]), int(sample[0].shape[1]), dynamic=False)
    t0 = time.perf_counter()
    exported = _export(model, sample, dynamic=False).run_decompositions({})  # Core ML: the frozen length
    mlmodel = ct.convert(
        exported,
        convert_to="mlprogram",
        outputs=[ct.TensorType(name="logits")],
        compute_precision=ct.precision.FLOAT32,  # the ONNX bundle's precision; FLOAT16 halves the size
        minimum_deployment_target=ct.target.iOS16,
    )
    answer: dict[str, Any] = {**_spec(mlmodel, Path(req["out"]) / "model.mlpackage"), "coremltools": ct.__version__}
    answer["seconds"] = round(time.perf_counter() - t0, 2)
    if req.get("int8"):
        t0 = time.perf_counter()
        config = ct.optimize.coreml.OptimizationConfig(
            global_config=ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
        )
        quantized = ct.optimize.coreml.linear_quantize_weights(mlmodel, config)
        answer["int8"] = _spec(quantized, Path(req["out"]) / "model_int8.mlpackage")
        answer["int8"]["seconds"] = round(time.perf_counter() - t0, 2)
    return answer


COMMANDS = {"executorch": executorch, "run-pte": run_pte, "coreml": coreml}
