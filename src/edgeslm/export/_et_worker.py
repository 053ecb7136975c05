"""The half of the ExecuTorch / Core ML export that runs inside ``.venv-export`` (beside litert-torch).

Reached through ``_tflite_worker`` (same process model: JSON request and answer files, nothing pickled), with the
commands ``executorch``, ``run-pte`` and ``coreml``. Unlike the .tflite models, these take token ids: the
word-embedding lookup is inside the graph (ExecuTorch's portable kernels and Core ML both have a gather that is
exact in float), so the .pte / .mlpackage is self-contained. Everything after the lookup is
``_tflite_worker._wrapper``: the same eager-attention encoder, fixed length, additive padding bias, mean pooling.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ._tflite_worker import _rows, _wrapper


def _ids_model(checkpoint: Path, seq_len: int) -> Any:
    """``_wrapper``'s classifier with int32 ids in: the table lookup becomes the graph's first op."""
    import torch

    inner, table = _wrapper(checkpoint, seq_len)

    class IdsIn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            self.table = torch.nn.Parameter(torch.from_numpy(table), requires_grad=False)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            embeds = torch.nn.functional.embedding(input_ids.to(torch.long), self.table)
            return self.inner(embeds, attention_mask)

    return IdsIn().eval()


def _sample(req: dict[str, Any]) -> tuple[Any, Any]:
    import torch

    ids, mask = _rows(req)
    return torch.from_numpy(ids[:1]), torch.from_numpy(mask[:1])


def executorch(req: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint -> ``model.pte``: torch.export, XNNPACK partitioner, ExecuTorch program; op counts per side."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    sample = _sample(req)
    model = _ids_model(Path(req["checkpoint"]), int(sample[0].shape[1]))
    t0 = time.perf_counter()
    with torch.no_grad():
        exported = torch.export.export(model, sample)
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    graph = edge.exported_program().graph_module.graph
    delegated = sum(1 for n in graph.nodes if n.op == "call_function" and "executorch_call_delegate" in str(n.target))
    portable = sorted(
        {
            str(n.target).split("(")[0].split("::")[-1].split(".")[0]  # an edge op prints as its schema
            for n in graph.nodes
            if n.op == "call_function" and not any(k in str(n.target) for k in ("call_delegate", "getitem"))
        }
    )
    program = edge.to_executorch()
    path = Path(req["out"]) / "model.pte"
    path.write_bytes(program.buffer)
    with torch.no_grad():
        eager = model(*sample)[0].tolist()
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "xnnpack_subgraphs": delegated,
        "portable_ops": portable,  # ops left outside XNNPACK, run by ExecuTorch's portable kernels
        "eager_logits_row0": eager,
    }


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
    """Logits and per-row latency (batch 1) from ExecuTorch's Python runtime (the C++ runtime + XNNPACK)."""
    import torch
    from executorch.runtime import Runtime

    ids, mask = _rows(req)
    threads_set = _set_threads(int(req.get("threads", 1)))
    method = Runtime.get().load_program(Path(req["model"])).load_method("forward")
    logits, times = [], []
    for i in range(-int(req.get("warmup", 2)), len(ids)):
        row = max(i, 0)
        feed = (torch.from_numpy(ids[row : row + 1]), torch.from_numpy(mask[row : row + 1]))
        t0 = time.perf_counter()
        (got,) = method.execute(feed)
        if i >= 0:
            times.append((time.perf_counter() - t0) * 1000)
            logits.append(got[0].tolist())
    return {"logits": logits, "latency_ms": times, "threads_set": threads_set}


def _feature(f: Any) -> dict[str, Any]:
    kind = f.type.WhichOneof("Type")
    entry: dict[str, Any] = {"name": f.name, "type": kind}
    if kind == "multiArrayType":
        arr = f.type.multiArrayType
        entry["shape"] = [int(d) for d in arr.shape]
        entry["dtype"] = type(arr).ArrayDataType.Name(arr.dataType)
    return entry


def coreml(req: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint -> ``model.mlpackage`` (ML program, float32), then its spec read back from disk.

    Core ML prediction needs macOS; on Linux the package is reloaded with ``skip_model_load`` and its inputs,
    outputs and MIL ops are reported instead.
    """
    import coremltools as ct
    import torch

    sample = _sample(req)
    model = _ids_model(Path(req["checkpoint"]), int(sample[0].shape[1]))
    t0 = time.perf_counter()
    with torch.no_grad():
        exported = torch.export.export(model, sample).run_decompositions({})
    mlmodel = ct.convert(
        exported,
        convert_to="mlprogram",
        outputs=[ct.TensorType(name="logits")],
        compute_precision=ct.precision.FLOAT32,  # the ONNX bundle's precision; FLOAT16 halves the size
        minimum_deployment_target=ct.target.iOS16,
    )
    path = Path(req["out"]) / "model.mlpackage"
    mlmodel.save(str(path))
    seconds = round(time.perf_counter() - t0, 2)
    ops = sorted({op.op_type for fn in mlmodel._mil_program.functions.values() for op in fn.operations})
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    return {
        "seconds": seconds,
        "inputs": [_feature(f) for f in spec.description.input],
        "outputs": [_feature(f) for f in spec.description.output],
        "spec_version": int(spec.specificationVersion),
        "mil_ops": ops,
        "coremltools": ct.__version__,
    }


COMMANDS = {"executorch": executorch, "run-pte": run_pte, "coreml": coreml}
