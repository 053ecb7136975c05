"""The demo student as LiteRT float / full INT8 and in TensorFlow Lite Micro, against the ONNX files it ships as.

    python benchmarks/export_tflite.py [--report out/demo/report.json] [--rows 872] [--micro-rows 20]

Needs .venv-export (see edgeslm.export.tflite.EXPORT_VENV_HELP). On the SST-2 dev set, one thread, batch 1:
ONNX FP32 (the export step), the ONNX bundle (dynamic INT8), TFLite float, TFLite INT8; then the TFLM-ready
variant (GELU in its tanh form), its INT8 model in TFLite Micro with the smallest arena, and `edgeslm fit` of that
folder on the MCU profiles. The .tflite models take embedding rows (the lookup is the caller's row copy, timed
with the model). Writes benchmarks/results/export_tflite.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path

import numpy as np

from edgeslm.data import load_dataset
from edgeslm.errors import ModelError
from edgeslm.export.tflite import TFLiteConfig, _onnx_logits, export_tflite
from edgeslm.fit import fit
from edgeslm.recipe import DataConfig

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", type=Path, default=Path("out/demo/report.json"))
    ap.add_argument("--rows", type=int, default=872)
    ap.add_argument("--calibration-rows", type=int, default=200)
    ap.add_argument("--micro-rows", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("out/bench-export"), help="Kept between runs (a cache).")
    args = ap.parse_args()
    artifacts = json.loads(args.report.read_text())["artifacts"]
    student, onnx_fp32 = Path(artifacts["student"]), Path(artifacts["student_onnx"])
    bundle = args.report.parent / "bundle"
    result: dict = {"host": platform.processor() or platform.machine(), "threads": 1, "student": str(student)}
    work = args.work
    plain = work / "tflite"
    if not (plain / "tflite.json").is_file():
        config = TFLiteConfig(calibration_rows=args.calibration_rows, check_rows=args.rows)
        export_tflite(student, plain, config, onnx=onnx_fp32)
    report = json.loads((plain / "tflite.json").read_text())
    meta = json.loads((student / "edgeslm.json").read_text())
    ds = load_dataset(DataConfig(**meta["config"]["data"]))
    texts, labels = list(ds.eval.texts[: args.rows]), np.asarray(ds.eval.labels[: args.rows])
    tok = (student / "tokenizer.json").read_text()
    logits, times = _onnx_logits(bundle, tok, report["seq_len"], texts)
    ref, _ = _onnx_logits(onnx_fp32, tok, report["seq_len"], texts)
    report["check"]["runs"]["onnx_bundle_int8"] = {
        "accuracy": float((logits.argmax(1) == labels).mean()),
        "label_agreement_vs_onnx": float((logits.argmax(1) == ref.argmax(1)).mean()),
        "max_abs_logit_diff_vs_onnx": float(np.abs(logits - ref).max()),
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
    }
    result["litert"] = report
    micro = work / "micro"
    if not (micro / "tflite.json").is_file():
        config = TFLiteConfig(
            calibration_rows=args.calibration_rows, check_rows=args.rows, micro=True, micro_rows=args.micro_rows
        )
        try:
            export_tflite(student, micro, config, onnx=onnx_fp32)
        except ModelError as e:  # recorded, not fatal: the LiteRT numbers above stand on their own
            result["tflm"] = {"error": str(e)}
    if (micro / "tflite.json").is_file():
        result["micro_variant"] = json.loads((micro / "tflite.json").read_text())
        result["tflm"] = result["micro_variant"]["tflm"]["int8"]
        result["mcu_fit"] = {
            d: [dataclasses.asdict(line) for line in fit(micro, d)[1]] for d in ("esp32-s3", "stm32h7")
        }
    out = HERE / "results" / "export_tflite.json"
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    for name, run in result["litert"]["check"]["runs"].items():
        print(f"{name:18s}", {k: round(v, 4) for k, v in run.items()})
    print("files", result["litert"]["files"])
    print("tflm", result["tflm"])
    for device, lines in result.get("mcu_fit", {}).items():
        print(device, [(ln["check"], ln["need"], ln["budget"], ln["margin"], ln["ok"]) for ln in lines])


if __name__ == "__main__":
    main()
