"""`edgeslm devices` and `edgeslm fit`: the device profiles, and whether a bundle fits one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    from rich.table import Table

    from ..cli import _friendly, console, err

    @app.command()
    @_friendly
    def devices() -> None:
        """List the device profiles `--device` accepts."""
        from . import known_devices

        table = Table(title="device profiles (budgets for the model; `nan` speed = no published source)")
        for col in ("name", "class", "description", "RAM MB", "storage MB", "runtimes", "speed vs host", "sources"):
            table.add_column(col)
        for name, d in known_devices().items():
            speed = "no source" if d["speed_factor"] != d["speed_factor"] else f"{d['speed_factor']:g}x"  # nan: a gap
            table.add_row(
                name,
                d["class"],
                d["description"],
                f"{d['ram_mb']:g}",
                f"{d['storage_mb']:g}",
                ", ".join(d["runtimes"]),
                speed,
                str(len(d["sources"])),
            )
        console.print(table)

    @app.command()
    @_friendly
    def fit(
        bundle: Annotated[Path, typer.Argument(help="Bundle folder (from `edgeslm build`).")],
        device: Annotated[str, typer.Option("--device", help="Device profile name (see `edgeslm devices`).")],
        seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per text for the activation memory.")] = 128,
    ) -> None:
        """Does the bundle fit the device? Storage, RAM (weights + activation peak from the graph), runtime, dtype."""
        from ..fit import fit as run_fit

        profile, lines = run_fit(bundle, device, seq_len)
        table = Table(title=f"{bundle} on {device}: {profile['description']}")
        for col in ("check", "need", "budget", "margin", "result"):
            table.add_column(col)
        for line in lines:
            result = "[green]pass[/green]" if line.ok else "n/a" if line.ok is None else "[red]FAIL[/red]"
            table.add_row(line.check, line.need, line.budget, line.margin, result)
        console.print(table)
        if (bundle / "tflite.json").is_file():
            console.print("Flash and arena exclude TFLite Micro's own code and the firmware's other RAM.")
        else:
            console.print(
                "RAM excludes the runtime's own code and heap (onnxruntime itself needs tens of MB on a CPU)."
            )
        failed = [line.check for line in lines if line.ok is False]
        if failed:
            err.print(f"[red]does not fit {device}:[/red] {'; '.join(failed)}", highlight=False)
            raise typer.Exit(1)
