"""The microcontroller model (issue 7): build a nano recipe, convert it for TFLite Micro, measure it, fit it.

    python benchmarks/nano.py benchmarks/nano_sst2.toml [--micro-rows 200] [--work out/nano]

Needs .venv-export. Steps (each cached under --work, so a re-run only measures):
1. the nano student from its recipe (the teacher comes from the teacher recipe's cached build steps);
2. its ONNX FP32 export (the reference) and accuracy on the whole dev/test set;
3. `convert --format tflite --micro`: LiteRT float and full INT8 on the whole eval set (agreement with ONNX,
   accuracy, latency at one thread), then TensorFlow Lite Micro's Python interpreter on --micro-rows sentences:
   its smallest arena (bisection) and its agreement with LiteRT;
4. `convert --format c-array`, compiled with the host g++ (object size of the model + table + vocabulary);
5. `edgeslm fit` on the ESP32-S3 and STM32H7 profiles.
Writes benchmarks/results/nano_<recipe name>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import subprocess
import time
from pathlib import Path

from edgeslm.export.nano import NanoConfig, build_nano, load_nano_recipe, param_count
from edgeslm.export.tflite import TFLiteConfig, export_tflite
from edgeslm.fit import fit
from edgeslm.recipe import DataConfig, ExportConfig

HERE = Path(__file__).parent


def _object_size(c_dir: Path) -> dict[str, int] | None:
    """Section sizes of model_data.o (g++ -Os), what the firmware's flash holds for the model."""
    if shutil.which("g++") is None or shutil.which("size") is None:
        return None
    obj = c_dir / "model_data.o"
    subprocess.run(["g++", "-std=c++17", "-Os", "-c", str(c_dir / "model_data.cc"), "-o", str(obj)], check=True)
    text, data, bss, *_ = (
        subprocess.run(["size", str(obj)], capture_output=True, text=True).stdout.splitlines()[1].split()
    )
    return {"text": int(text), "data": int(data), "bss": int(bss)}


def _onnx_accuracy(onnx: Path, data: DataConfig) -> dict[str, float]:
    """Accuracy of the FP32 ONNX export on the whole eval set; on CLINC150 also in-scope accuracy (the 150
    intents alone, the metric compress_clinc150.json reports) and out-of-scope recall."""
    import numpy as np

    from edgeslm.data import load_dataset
    from edgeslm.export.tflite import _onnx_logits

    ds = load_dataset(data)
    tok = (onnx / "tokenizer.json").read_text()
    logits, _ = _onnx_logits(onnx, tok, 64, list(ds.eval.texts))
    pred, gold = logits.argmax(1), np.asarray(ds.eval.labels)
    out = {"rows": len(gold), "accuracy": float((pred == gold).mean())}
    if "oos" in ds.label_names:
        oos = ds.label_names.index("oos")
        out["in_scope_accuracy"] = float((pred == gold)[gold != oos].mean())
        out["oos_recall"] = float((pred == gold)[gold == oos].mean())
    return out


def _stale(ckpt: Path, config: NanoConfig) -> bool:
    """No checkpoint yet, or one built from another [nano] table."""
    if not (ckpt / "edgeslm.json").is_file():
        return True
    saved = dict(json.loads((ckpt / "edgeslm.json").read_text())["config"])
    saved.pop("data", None)
    return bool(saved != dataclasses.asdict(config))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--work", type=Path, default=Path("out/nano"), help="Kept between runs (a cache).")
    ap.add_argument("--cache", type=Path, default=Path("out/.edgeslm-cache"), help="The build steps' cache.")
    ap.add_argument("--calibration-rows", type=int, default=200)
    ap.add_argument("--check-rows", type=int, default=100_000, help="Eval sentences for ONNX / LiteRT (all).")
    ap.add_argument("--micro-rows", type=int, default=200, help="Eval sentences run in TFLite Micro.")
    args = ap.parse_args()
    from edgeslm.export.onnx import export_onnx

    teacher_recipe, config = load_nano_recipe(args.recipe)
    work = args.work / args.recipe.stem
    ckpt = work / "ckpt"
    if _stale(ckpt, config):
        for step in ("onnx", "tflite", "c"):  # made from the old checkpoint
            shutil.rmtree(work / step, ignore_errors=True)
        build_nano(teacher_recipe, ckpt, config, cache=args.cache, force=True)
    meta = json.loads((ckpt / "edgeslm.json").read_text())
    data = DataConfig(**meta["config"]["data"])
    onnx = work / "onnx"
    if not (onnx / "model.onnx").is_file():
        export_onnx(ckpt, onnx, ExportConfig(data=data, check_rows=64))
    folder = work / "tflite"
    if not (folder / "tflite.json").is_file():
        tfl = TFLiteConfig(
            calibration_rows=args.calibration_rows, check_rows=args.check_rows, micro=True, micro_rows=args.micro_rows
        )
        t0 = time.perf_counter()
        export_tflite(ckpt, folder, tfl, data=data, onnx=onnx)
        print(f"converted and checked in {time.perf_counter() - t0:.0f} s")
    report = json.loads((folder / "tflite.json").read_text())
    c_dir = work / "c"
    if not (c_dir / "model_data.cc").is_file():
        cmd = [".venv/bin/edgeslm", "convert", str(folder), "--format", "c-array", "--out", str(c_dir), "--force"]
        subprocess.run(cmd, check=True)
    result = {
        "onnx_fp32": _onnx_accuracy(onnx, data),
        "recipe": str(args.recipe),
        "host": platform.processor() or platform.machine(),
        "threads": 1,
        "checkpoint": str(ckpt),
        "params": param_count(ckpt),
        "nano": meta["config"],
        "vocab": meta["trim"],
        "train": meta["train"],
        "teacher": meta["teacher"],
        "tflite": report,
        "c_array": {
            "files": {p.name: p.stat().st_size for p in sorted(c_dir.iterdir())},
            "object": _object_size(c_dir),
        },
        "fit": {d: [dataclasses.asdict(line) for line in fit(folder, d)[1]] for d in ("esp32-s3", "stm32h7")},
    }
    out = HERE / "results" / f"nano_{args.recipe.stem.removeprefix('nano_')}.json"
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print("params", result["params"], "files", report["files"])
    for name, run in report["check"]["runs"].items():
        print(f"{name:14s}", {k: round(v, 4) for k, v in run.items()})
    print("tflm", report["tflm"])
    for device, lines in result["fit"].items():
        print(device, [(ln["check"], ln["need"], ln["budget"], ln["margin"], ln["ok"]) for ln in lines])
    print("wrote", out)


if __name__ == "__main__":
    main()
