"""The half of the TFLite export that runs inside ``.venv-export`` (litert-torch pins an older pydantic).

The main environment calls ``.venv-export/bin/python -m edgeslm.export._tflite_worker COMMAND REQUEST.json``
with the edgeslm source tree on ``PYTHONPATH``. Requests and answers are JSON files (token ids as lists of ints):
nothing is pickled either way. Commands:

- ``convert``: checkpoint -> ``model_float.tflite`` (+ ``model_int8.tflite``, calibrated on the given rows).
- ``run``: logits and per-row latency from ai-edge-litert's interpreter.
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


def _wrapper(checkpoint: Path, micro: bool = False) -> Any:
    """The classifier with int32 ids and mask in, logits out; token types fixed to 0 (single sentences).

    The padding bias is a small constant instead of float32's minimum so that full-int8 calibration of the
    attention add keeps resolution for the real scores (with -3.4e38 every score quantizes to the same bucket).
    """
    import torch

    from edgeslm.models import load_checkpoint

    model = load_checkpoint(checkpoint).model
    model.encoder.config._attn_implementation = "eager"  # explicit matmul + softmax: ops TFLite (Micro) has
    if micro:
        for layer in model.encoder.encoder.layer:
            layer.intermediate.intermediate_act_fn = _tanh_gelu()  # type: ignore[union-attr]

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            mask = attention_mask.to(torch.float32)
            bias = ((1.0 - mask) * MASK_BIAS)[:, None, None, :]  # (b, 1, 1, t) added to attention scores
            enc = self.model.encoder
            hidden = enc.embeddings(input_ids=input_ids.long(), token_type_ids=torch.zeros_like(input_ids).long())
            for layer in enc.encoder.layer:
                out = layer(hidden, attention_mask=bias)
                hidden = out[0] if isinstance(out, tuple) else out
            m = mask[:, :, None]
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.model.head(pooled)

    return Wrapped().eval()


def _rows(req: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(req["input_ids"], dtype=np.int32), np.asarray(req["attention_mask"], dtype=np.int32)


def _ops(path: Path) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    return sorted({d["op_name"] for d in interp._get_ops_details()})


def _int8_recipe() -> list[dict[str, Any]]:
    """static_wi8_ai8 (int8 weights and activations everywhere) plus int8 weights for the embedding table.

    static_wi8_ai8 leaves EMBEDDING_LOOKUP's table float (47 MB of the 51 MB student); the dynamic rule stores it
    int8 and the lookup's output is quantized right after, so every compute op stays int8 (61 -> 16 MB here).
    """
    from ai_edge_quantizer import recipe

    return [*recipe.static_wi8_ai8(), {**recipe.dynamic_wi8_afp32()[0], "operation": "EMBEDDING_LOOKUP"}]


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


def convert(req: dict[str, Any]) -> dict[str, Any]:
    import litert_torch
    import torch

    out = Path(req["out"])
    ids, mask = _rows(req)
    model = _wrapper(Path(req["checkpoint"]), micro=bool(req.get("micro", False)))
    sample = (torch.from_numpy(ids[:1]), torch.from_numpy(mask[:1]))
    t0 = time.perf_counter()
    litert_torch.convert(model, sample).export(str(out / "model_float.tflite"))
    answer: dict[str, Any] = {"float_seconds": round(time.perf_counter() - t0, 2)}
    with torch.no_grad():
        answer["torch_logits"] = model(torch.from_numpy(ids), torch.from_numpy(mask)).tolist()
    answer["ops_float"] = _ops(out / "model_float.tflite")
    if req.get("int8", True):
        from ai_edge_quantizer import quantizer

        t0 = time.perf_counter()
        qt = quantizer.Quantizer(str(out / "model_float.tflite"))
        qt.load_quantization_recipe(_int8_recipe())
        names = _input_names(out / "model_float.tflite")
        calib = [{names[0]: ids[i : i + 1], names[1]: mask[i : i + 1]} for i in range(len(ids))]
        result = qt.quantize(_calibrate(qt, out / "model_float.tflite", calib))
        result.export_model(str(out / "model_int8.tflite"), overwrite=True)
        answer["int8_seconds"] = round(time.perf_counter() - t0, 2)
        answer["ops_int8"] = _ops(out / "model_int8.tflite")
    return answer


def _input_names(path: Path) -> list[str]:
    """Signature input names in the order of the wrapper's arguments (ids, mask)."""
    from ai_edge_litert.interpreter import Interpreter

    inputs = Interpreter(model_path=str(path)).get_signature_list()["serving_default"]["inputs"]
    return sorted(inputs, key=lambda n: int(n.rsplit("_", 1)[-1]))  # litert-torch names them args_0, args_1


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        return np.round(x / scale + zero).astype(detail["dtype"])
    return x.astype(detail["dtype"])


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def run(req: dict[str, Any]) -> dict[str, Any]:
    from ai_edge_litert.interpreter import Interpreter

    ids, mask = _rows(req)
    interp = Interpreter(model_path=req["model"], num_threads=int(req.get("threads", 1)))
    interp.allocate_tensors()
    runner = interp.get_signature_runner("serving_default")
    names = _input_names(Path(req["model"]))
    out_name = next(iter(interp.get_signature_list()["serving_default"]["outputs"]))
    out_detail = runner.get_output_details()[out_name]
    logits, times = [], []
    for i in range(-int(req.get("warmup", 1)), len(ids)):
        row = max(i, 0)
        t0 = time.perf_counter()
        got = runner(**{names[0]: ids[row : row + 1], names[1]: mask[row : row + 1]})[out_name]
        if i >= 0:
            times.append((time.perf_counter() - t0) * 1000)
            logits.append(_dequantize(got, out_detail)[0].tolist())
    return {"logits": logits, "latency_ms": times}


def _micro_run(model: bytes, arena: int, ids: np.ndarray, mask: np.ndarray) -> list[list[float]]:
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(model, arena_size=arena)
    in0, out0 = interp.get_input_details(0), interp.get_output_details(0)
    out: list[list[float]] = []
    for row in range(len(ids)):
        interp.set_input(ids[row : row + 1].astype(in0["dtype"]), 0)
        interp.set_input(mask[row : row + 1].astype(interp.get_input_details(1)["dtype"]), 1)
        interp.invoke()
        got = interp.get_output(0)
        scale, zero = (out0["quantization_parameters"]["scales"], out0["quantization_parameters"]["zero_points"])
        if len(scale) and out0["dtype"] in (np.int8, np.uint8):
            got = (got.astype(np.float32) - zero[0]) * scale[0]
        out.append(np.asarray(got, dtype=np.float32)[0].tolist())
        interp.reset()
    return out


def micro_probe(req: dict[str, Any]) -> dict[str, Any]:
    ids, mask = _rows(req)
    logits = _micro_run(Path(req["model"]).read_bytes(), int(req["arena"]), ids, mask)
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
    t0 = time.perf_counter()
    logits = _micro_run(Path(req["model"]).read_bytes(), arena, ids, mask)
    per_row = (time.perf_counter() - t0) * 1000 / max(len(ids), 1)
    return {"arena_bytes": high, "logits": logits, "ms_per_row": per_row}


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
    else:
        print(f"unknown worker command {command}", file=sys.stderr)
        return 2
    Path(req["answer"]).write_text(json.dumps(answer), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
