"""The half of the TFLite export that runs inside ``.venv-export`` (litert-torch pins an older pydantic).

The main environment calls ``.venv-export/bin/python -m edgeslm.export._tflite_worker COMMAND REQUEST.json``
with the edgeslm source tree on ``PYTHONPATH``. Requests and answers are JSON files (token ids as lists of ints):
nothing is pickled either way. Commands:

- ``convert``: checkpoint -> ``model_float.tflite`` + ``embedding_float.npy`` (+ ``model_int8.tflite`` and
  ``embedding_int8.npy``, calibrated on the given rows). The models take word embeddings ``[1, seq, hidden]`` and
  the int32 mask; the table beside them turns token ids into that input (``_gather``), as the device's C code does.
- ``run``: logits and per-row latency from ai-edge-litert's interpreter (ids in, the row copy included).
- ``micro``: the smallest TFLite Micro arena (bisection, one subprocess per probe) and the logits it gives.
- ``micro-probe``: one probe (internal; a too-small arena segfaults the process, so it runs alone).

Only this venv's packages and ``edgeslm.models`` (torch + transformers, both present here) are imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MASK_BIAS = -30.0  # additive attention bias for padding: exp(-30) ~ 1e-13 hides a pad, yet keeps int8 ranges sane


def _tanh_gelu() -> Any:
    """GELU's tanh form written as x * sigmoid(2z) (the same function), from LOGISTIC/MUL/ADD, which TFLite Micro
    has (it has no GELU kernel); max error against exact GELU ~1e-3. Spelled with tanh, the converter fuses it
    back into one GELU op."""
    import math

    import torch

    class TanhGelu(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x))

    return TanhGelu()


def _wrapper(checkpoint: Path, seq_len: int, micro: bool = False) -> Any:
    """The classifier with word embeddings and an int32 mask in, logits out; token types fixed to 0.

    The word-embedding lookup stays outside the graph: the caller (the host here, the device's C code) copies each
    token's row from the table, so the .tflite holds no EMBEDDING_LOOKUP. TFLite Micro's hybrid int8 lookup (int8
    table, float output) gave garbage (label agreement 0.50 with LiteRT on the student); a row copy from an int8
    table quantized with the input's own scale is exact. Position and token-type rows are one constant (fixed
    length, single sentences). The padding bias is a small constant instead of float32's minimum so that full-int8
    calibration of the attention add keeps resolution for the real scores.
    """
    import torch

    from edgeslm.models import load_checkpoint

    model = load_checkpoint(checkpoint).model
    enc = model.encoder
    enc.config._attn_implementation = "eager"  # explicit matmul + softmax: ops TFLite (Micro) has
    if micro and "gelu" in str(enc.config.hidden_act):
        for layer in enc.encoder.layer:
            layer.intermediate.intermediate_act_fn = _tanh_gelu()  # type: ignore[union-attr]
    emb = enc.embeddings
    with torch.no_grad():
        const = (emb.position_embeddings.weight[:seq_len] + emb.token_type_embeddings.weight[0])[None].clone()

    class Wrapped(torch.nn.Module):
        const: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("const", const)

        def forward(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            mask = attention_mask.to(torch.float32)
            bias = ((1.0 - mask) * MASK_BIAS)[:, None, None, :]  # (b, 1, 1, t) added to attention scores
            hidden = emb.LayerNorm(embeds + self.const)
            for layer in enc.encoder.layer:
                out = layer(hidden, attention_mask=bias)
                hidden = out[0] if isinstance(out, tuple) else out
            m = mask[:, :, None]
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.model.head(pooled)

    table = emb.word_embeddings.weight.detach().numpy().astype(np.float32)
    return Wrapped().eval(), table


def _table(model: Path) -> np.ndarray:
    """The word-embedding table that feeds ``model``: int8 (quantized with the input's scale) or float."""
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=str(model)).get_input_details()
    dtype = next(d["dtype"] for d in detail if len(d["shape"]) == 3)
    name = "embedding_int8.npy" if dtype == np.int8 else "embedding_float.npy"
    return np.load(model.with_name(name), allow_pickle=False)


def _gather(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """What the device does before each inference: one table row per token id, (b, t) -> (b, t, hidden)."""
    return table[ids]


def quantize_table(table: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """The float table in the int8 model's input quantization (rounded, clipped to int8), as the device stores it."""
    return np.clip(np.round(table / scale) + zero_point, -128, 127).astype(np.int8)


def _rows(req: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(req["input_ids"], dtype=np.int32), np.asarray(req["attention_mask"], dtype=np.int32)


def _ops(path: Path) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    return sorted({d["op_name"] for d in interp._get_ops_details()})


def _calibrate(qt: Any, model: Path, rows: list[dict[str, np.ndarray]]) -> Any:
    """Activation ranges as the true min/max over all rows.

    ``Quantizer.calibrate`` keeps a moving average (0.95) of each row's min/max, which on the student clipped the
    logits to +-1.4 while real ones reach +-3.5 (agreement with ONNX 93%); the plain min/max keeps every range.
    It is only reachable through the Calibrator, which wants the quantizer's recipe manager (pinned 0.10.0).
    """
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    calib = calibrator.Calibrator(model.read_bytes(), num_threads=1, qsv_update_func=qsv_utils.min_max_update)
    calib.calibrate({"serving_default": rows}, qt._recipe_manager)
    return calib.get_model_qsvs()


def inline_buffers(path: Path) -> int:
    """Rewrite ``path`` with every constant buffer inside the flatbuffer, 16-byte aligned; returns how many moved.

    ai-edge-quantizer stores the larger constants of a model past ~0.5 MB after the flatbuffer (``Buffer.offset``,
    the >2 GB format). LiteRT reads them; TensorFlow Lite Micro does not, and silently computes with zeros: the
    nano and student INT8 models agreed with LiteRT on 0-50% of labels. Inline (and aligned by TFLM's own tool,
    which honours the schema's ``force_align: 16``), TFLM and LiteRT run the same bytes.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    from tflite_micro.tensorflow.lite.micro.tools import tflite_flatbuffer_align_wrapper

    data = path.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    moved = 0
    for buffer in model.buffers or []:
        if buffer.offset:
            buffer.data = np.frombuffer(data, np.uint8, buffer.size, buffer.offset).copy()
            buffer.offset, buffer.size = 0, 0
            moved += 1
    if moved:
        builder = flatbuffers.Builder(len(data) + (1 << 16))
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        path.write_bytes(bytes(builder.Output()))
        tflite_flatbuffer_align_wrapper.align_tflite_model(str(path), str(path))
    return moved


def _extremes_row(table: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A calibration row whose padding holds the table's min and max entries, so the int8 input scale covers
    every row of the table (rare words included), not only the words of the calibration sentences."""
    lo, hi = np.unravel_index(table.argmin(), table.shape)[0], np.unravel_index(table.argmax(), table.shape)[0]
    row, pads = ids[:1].copy(), np.flatnonzero(mask[0] == 0)
    if len(pads) >= 2:
        row[0, pads[-2:]] = (lo, hi)
    return row, mask[:1]


def convert(req: dict[str, Any]) -> dict[str, Any]:
    import litert_torch
    import torch

    out = Path(req["out"])
    ids, mask = _rows(req)
    model, table = _wrapper(Path(req["checkpoint"]), ids.shape[1], micro=bool(req.get("micro", False)))
    np.save(out / "embedding_float.npy", table, allow_pickle=False)
    embeds = _gather(table, ids)
    sample = (torch.from_numpy(embeds[:1]), torch.from_numpy(mask[:1]))
    t0 = time.perf_counter()
    litert_torch.convert(model, sample).export(str(out / "model_float.tflite"))
    answer: dict[str, Any] = {"float_seconds": round(time.perf_counter() - t0, 2), "hidden": int(table.shape[1])}
    answer["ops_float"] = _ops(out / "model_float.tflite")
    if req.get("int8", True):
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_quantizer import quantizer, recipe

        t0 = time.perf_counter()
        qt = quantizer.Quantizer(str(out / "model_float.tflite"))
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        names = _input_names(out / "model_float.tflite")
        x_ids, x_mask = _extremes_row(table, ids, mask)
        rows = [(ids[i : i + 1], mask[i : i + 1]) for i in range(len(ids))] + [(x_ids, x_mask)]
        calib = [{names[0]: _gather(table, r), names[1]: m} for r, m in rows]
        result = qt.quantize(_calibrate(qt, out / "model_float.tflite", calib))
        result.export_model(str(out / "model_int8.tflite"), overwrite=True)
        answer["inlined_buffers"] = inline_buffers(out / "model_int8.tflite")
        answer["int8_seconds"] = round(time.perf_counter() - t0, 2)
        answer["ops_int8"] = _ops(out / "model_int8.tflite")
        detail = next(
            d for d in Interpreter(str(out / "model_int8.tflite")).get_input_details() if len(d["shape"]) == 3
        )
        scale, zero = detail["quantization"]
        if detail["dtype"] != np.int8:
            raise SystemExit(f"the int8 model's embedding input is {detail['dtype']}, not int8")
        np.save(out / "embedding_int8.npy", quantize_table(table, scale, zero), allow_pickle=False)
        answer["input_quantization"] = {"scale": float(scale), "zero_point": int(zero)}
    return answer


def _input_names(path: Path) -> list[str]:
    """Signature input names in the order of the wrapper's arguments (ids, mask)."""
    from ai_edge_litert.interpreter import Interpreter

    inputs = Interpreter(model_path=str(path)).get_signature_list()["serving_default"]["inputs"]
    return sorted(inputs, key=lambda n: int(n.rsplit("_", 1)[-1]))  # litert-torch names them args_0, args_1


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def run(req: dict[str, Any]) -> dict[str, Any]:
    from ai_edge_litert.interpreter import Interpreter

    ids, mask = _rows(req)
    model = Path(req["model"])
    table = _table(model)
    interp = Interpreter(model_path=str(model), num_threads=int(req.get("threads", 1)))
    interp.allocate_tensors()
    runner = interp.get_signature_runner("serving_default")
    names = _input_names(model)
    out_name = next(iter(interp.get_signature_list()["serving_default"]["outputs"]))
    out_detail = runner.get_output_details()[out_name]
    logits, times = [], []
    for i in range(-int(req.get("warmup", 1)), len(ids)):
        row = max(i, 0)
        t0 = time.perf_counter()  # the row copy is timed too: the device does it on every call
        feed = {names[0]: _gather(table, ids[row : row + 1]), names[1]: mask[row : row + 1]}
        got = runner(**feed)[out_name]
        if i >= 0:
            times.append((time.perf_counter() - t0) * 1000)
            logits.append(_dequantize(got, out_detail)[0].tolist())
    return {"logits": logits, "latency_ms": times}


def _micro_run(model: Path, arena: int, ids: np.ndarray, mask: np.ndarray) -> tuple[list[list[float]], list[float]]:
    """TFLM's logits per row, and the milliseconds of each row's copy + invoke (imports and setup not counted)."""
    from tflite_micro.python.tflite_micro import runtime

    table = _table(model)
    interp = runtime.Interpreter.from_bytes(model.read_bytes(), arena_size=arena)
    details = [interp.get_input_details(i) for i in range(2)]
    x, m = (0, 1) if len(details[0]["shape"]) == 3 else (1, 0)  # by shape, not by position
    out0 = interp.get_output_details(0)
    out: list[list[float]] = []
    times: list[float] = []
    for row in range(len(ids)):
        t0 = time.perf_counter()
        interp.set_input(_gather(table, ids[row : row + 1]).astype(details[x]["dtype"]), x)
        interp.set_input(mask[row : row + 1].astype(details[m]["dtype"]), m)
        interp.invoke()
        got = interp.get_output(0)
        times.append((time.perf_counter() - t0) * 1000)
        scale, zero = (out0["quantization_parameters"]["scales"], out0["quantization_parameters"]["zero_points"])
        if len(scale) and out0["dtype"] in (np.int8, np.uint8):
            got = (got.astype(np.float32) - zero[0]) * scale[0]
        out.append(np.asarray(got, dtype=np.float32)[0].tolist())
        interp.reset()
    return out, times


def micro_probe(req: dict[str, Any]) -> dict[str, Any]:
    ids, mask = _rows(req)
    logits, _ = _micro_run(Path(req["model"]), int(req["arena"]), ids, mask)
    return {"logits": logits}


def _probe(req_path: Path, arena: int) -> tuple[bool, str]:
    req = json.loads(req_path.read_text())
    probe = req_path.with_name(f"probe-{arena}.json")
    rows = {"input_ids": req["input_ids"][:1], "attention_mask": req["attention_mask"][:1]}
    probe.write_text(json.dumps({**req, **rows, "arena": arena, "answer": str(probe) + ".out"}))
    done = subprocess.run(
        [sys.executable, "-m", "edgeslm.export._tflite_worker", "micro-probe", str(probe)],
        capture_output=True,
        timeout=300,
    )
    lines = [ln for ln in done.stderr.decode(errors="replace").splitlines() if ln.strip()]
    missing = [ln for ln in lines if "Didn't find op" in ln]
    tflm = [ln for ln in lines if not ln.startswith((" ", "Traceback", "WARNING")) and "Warning" not in ln]
    return done.returncode == 0, (missing[0] if missing else " | ".join(tflm[:2] + tflm[-1:]))


def micro(req: dict[str, Any], req_path: Path) -> dict[str, Any]:
    """Smallest arena (to 256 B) that lets TFLite Micro run the model, then the logits with that arena + margin."""
    low, high = 1024, int(req.get("max_arena", 8 << 20))
    ok, missing = _probe(req_path, high)
    if not ok:
        why = f"it does not run with a {high} B arena ({missing or 'no message'})"
        return {"error": why if "Didn't find op" not in missing else missing, "missing_op": "Didn't find op" in missing}
    while high - low > 256:
        mid = (low + high) // 2 // 16 * 16
        if _probe(req_path, mid)[0]:
            high = mid
        else:
            low = mid
    ids, mask = _rows(req)
    arena = high + 1024  # the margin keeps the final run off the segfault edge
    logits, times = _micro_run(Path(req["model"]), arena, ids, mask)
    return {"arena_bytes": high, "logits": logits, "ms_per_row": float(np.median(times))}


def main(argv: list[str]) -> int:
    command, req_path = argv[0], Path(argv[1])
    req = json.loads(req_path.read_text(encoding="utf-8"))
    if command == "convert":
        answer = convert(req)
    elif command == "run":
        answer = run(req)
    elif command == "micro":
        answer = micro(req, req_path)
    elif command == "micro-probe":
        answer = micro_probe(req)
    elif command in ("executorch", "run-pte", "coreml"):
        from edgeslm.export._et_worker import COMMANDS  # ExecuTorch / Core ML share this venv and protocol

        answer = COMMANDS[command](req)
    else:
        print(f"unknown worker command {command}", file=sys.stderr)
        return 2
    Path(req["answer"]).write_text(json.dumps(answer), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
