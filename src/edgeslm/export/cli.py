"""`edgeslm convert SRC --format tflite|c-array|executorch|coreml --out DIR`: the student for other runtimes.

(`edgeslm export` is the ONNX step; `convert` makes the other runtimes' files from the same checkpoint.)
Heavy imports happen inside the command, so `edgeslm --help` stays fast.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["FORMATS", "register"]

FORMATS = ("tflite", "c-array", "executorch", "coreml")


def register(app: typer.Typer) -> None:
    from ..cli import _friendly, console

    @app.command()
    @_friendly
    def convert(
        src: Annotated[
            Path,
            typer.Argument(
                help="Student checkpoint folder, a built bundle (its report.json names the student), "
                "or for c-array a folder written by `convert --format tflite`."
            ),
        ],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (refused if it exists, unless --force).")],
        format: Annotated[str, typer.Option("--format", "-f", help=f"One of: {', '.join(FORMATS)}.")] = "tflite",
        onnx: Annotated[
            Path | None, typer.Option("--onnx", help="Folder with model.onnx to compare with [default: the bundle].")
        ] = None,
        int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Also write the full-integer INT8 model.")] = True,
        calibration_rows: Annotated[int, typer.Option(help="Train sentences that calibrate INT8.")] = 200,
        check_rows: Annotated[int, typer.Option(help="Dev sentences for agreement and latency (0: skip).")] = 200,
        micro_rows: Annotated[
            int,
            typer.Option(help="Dev sentences run in TFLite Micro (--micro, c-array) for the arena (0: skip)."),
        ] = 5,
        micro: Annotated[
            bool, typer.Option("--micro", help="tflite: GELU as its tanh form, so TFLite Micro can run the model.")
        ] = False,
        bundle_out: Annotated[
            Path | None,
            typer.Option(
                "--bundle-out",
                help="tflite from a bundle: also write that bundle + the .tflite and its table, its manifest's "
                "extra.runtimes listing each runtime's files (unsigned: sign it again).",
            ),
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False,
    ) -> None:
        """Convert the student to .tflite (float + full INT8), a C array for TFLM, an ExecuTorch .pte (XNNPACK)
        or a Core ML .mlpackage; each but Core ML is checked against ONNX on dev sentences."""
        from ..errors import ConfigError
        from .tflite import TFLiteConfig, export_tflite

        if format not in FORMATS:
            raise ConfigError(f"unknown --format `{format}`; choose one of: {', '.join(FORMATS)}")
        if format == "tflite":
            config = TFLiteConfig(
                int8=int8, calibration_rows=calibration_rows, check_rows=check_rows, micro=micro, micro_rows=micro_rows
            )
            if bundle_out is not None and not (src / "manifest.json").is_file():
                raise ConfigError(f"--bundle-out needs a bundle as SRC; `{src}` has no manifest.json")
            folder = export_tflite(src, out, config, onnx=onnx, force=force)
            if bundle_out is not None:
                from .carry import bundle_with_tflite

                console.print(f"wrote {bundle_with_tflite(src, folder, bundle_out, force=force)} (unsigned)")
            report = json.loads((folder / "tflite.json").read_text())
            for name, size in report["files"].items():
                console.print(f"{name}: {size / 1e6:.2f} MB")
            for name, run in ((report.get("check") or {}).get("runs") or {}).items():
                console.print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in run.items()))
            console.print(f"wrote {folder}")
            return
        if format in ("executorch", "coreml"):
            _executorch_or_coreml(src, out, format, onnx, check_rows, force)
            return
        _c_array(src, out, int8, calibration_rows, micro_rows, force)

    def _executorch_or_coreml(
        src: Path, out: Path, format: str, onnx: Path | None, check_rows: int, force: bool
    ) -> None:
        from .executorch import ETConfig, export_coreml, export_executorch

        config = ETConfig(check_rows=check_rows)
        if format == "coreml":
            folder = export_coreml(src, out, config, force=force)
            report = json.loads((folder / "coreml.json").read_text())
            for side in ("inputs", "outputs"):
                console.print(
                    f"{side}: " + ", ".join(f"{f['name']} {f.get('shape')} {f.get('dtype')}" for f in report[side])
                )
            console.print(f"model.mlpackage: {report['files']['model.mlpackage'] / 1e6:.2f} MB; {report['prediction']}")
        else:
            folder = export_executorch(src, out, config, onnx=onnx, force=force)
            report = json.loads((folder / "executorch.json").read_text())
            console.print(f"model.pte: {report['files']['model.pte'] / 1e6:.2f} MB")
            for name, run in ((report.get("check") or {}).get("runs") or {}).items():
                console.print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in run.items()))
        console.print(f"wrote {folder}")

    def _c_array(src: Path, out: Path, int8: bool, calibration_rows: int, micro_rows: int, force: bool) -> None:
        import numpy as np

        from .carray import write_c_array
        from .tflite import TFLiteConfig, export_tflite, micro_check

        with tempfile.TemporaryDirectory(prefix="edgeslm-carray-") as tmp:
            folder = Path(src)
            if not (folder / "tflite.json").is_file():
                config = TFLiteConfig(
                    int8=int8, calibration_rows=calibration_rows, check_rows=0, micro=True, micro_rows=micro_rows
                )
                folder = export_tflite(src, Path(tmp) / "tflite", config)
            report = json.loads((folder / "tflite.json").read_text())
            name = "int8" if int8 and (folder / "model_int8.tflite").is_file() else "float"
            measured = (report.get("tflm") or {}).get(name)
            if measured is None and micro_rows:
                measured = micro_check(folder, micro_rows, name)
            arena = measured["arena_bytes"] if measured else None
            tokenizer = (folder / "tokenizer.json").read_text(encoding="utf-8")
            written = write_c_array(
                folder / f"model_{name}.tflite",
                out,
                list(report["labels"]),
                tokenizer,
                int(report["seq_len"]),
                np.load(folder / f"embedding_{name}.npy", allow_pickle=False),
                list(report["ops"][name]),
                arena,
                force=force,
            )
        console.print(
            f"model_{name}.tflite -> {written} (" + (f"arena {arena} B" if arena else "arena not measured") + ")"
        )
