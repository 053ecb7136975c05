"""`edgeslm convert SRC --format tflite|c-array|executorch|coreml --out DIR`: the student for other runtimes.

(`edgeslm export` is the ONNX step; `convert` makes the other runtimes' files from the same checkpoint.)
Heavy imports happen inside the command, so `edgeslm --help` stays fast.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from .executorch import ETConfig

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
        int8: Annotated[
            bool,
            typer.Option(
                "--int8/--no-int8",
                help="Also write the INT8 model: tflite full-integer; executorch int8 linears and matmuls (XNNPACK "
                "PT2E); coreml int8 weights.",
            ),
        ] = True,
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
                help="SRC a bundle (tflite, executorch, coreml): also write that bundle + the converted model (the "
                "INT8 one when written; an .mlpackage as a stored .zip), its manifest's extra.runtimes listing each "
                "runtime's files and checks (unsigned: sign it again).",
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
        if bundle_out is not None and format == "c-array":
            raise ConfigError("--bundle-out takes tflite, executorch or coreml; a C array is compiled in, not carried")
        if bundle_out is not None and not (src / "manifest.json").is_file():
            raise ConfigError(f"--bundle-out needs a bundle as SRC; `{src}` has no manifest.json")
        if format == "tflite":
            config = TFLiteConfig(
                int8=int8, calibration_rows=calibration_rows, check_rows=check_rows, micro=micro, micro_rows=micro_rows
            )
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
            from .executorch import ETConfig

            et = ETConfig(check_rows=check_rows, int8=int8, calibration_rows=calibration_rows)
            folder = _executorch_or_coreml(src, out, format, onnx, et, force)
            if bundle_out is not None:
                from .carry import bundle_with_coreml, bundle_with_executorch

                carry = bundle_with_coreml if format == "coreml" else bundle_with_executorch
                console.print(f"wrote {carry(src, folder, bundle_out, force=force)} (unsigned)")
            return
        _c_array(src, out, int8, calibration_rows, micro_rows, force)

    def _executorch_or_coreml(
        src: Path, out: Path, format: str, onnx: Path | None, config: ETConfig, force: bool
    ) -> Path:
        from .executorch import export_coreml, export_executorch

        if format == "coreml":
            folder = export_coreml(src, out, config, force=force)
            report = json.loads((folder / "coreml.json").read_text())
            for side in ("inputs", "outputs"):
                console.print(
                    f"{side}: " + ", ".join(f"{f['name']} {f.get('shape')} {f.get('dtype')}" for f in report[side])
                )
            for name, size in report["files"].items():
                console.print(f"{name}: {size / 1e6:.2f} MB")
            console.print(report["prediction"])
        else:
            folder = export_executorch(src, out, config, onnx=onnx, force=force)
            report = json.loads((folder / "executorch.json").read_text())
            for name, size in report["files"].items():
                console.print(f"{name}: {size / 1e6:.2f} MB")
            for name, run in ((report.get("check") or {}).get("runs") or {}).items():
                console.print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in run.items()))
        console.print(f"wrote {folder}")
        return folder

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
