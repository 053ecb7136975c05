"""`edgeslm serve`, `edgeslm doctor` and `edgeslm telemetry`: the device runtime's commands.

Heavy imports (fastapi, uvicorn, onnxruntime) happen inside the commands, so `edgeslm --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]

ProviderOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--provider",
        help="Execution provider to try, in order (repeatable): auto, cuda, coreml, nnapi, qnn, xnnpack, cpu, ... "
        "The CPU is always the last resort; the reason for each fallback is shown.",
    ),
]


def _keys(paths: list[Path] | None) -> tuple[bytes, ...] | None:
    """Raw 32-byte Ed25519 public keys (or their 64-character hex) from files."""
    from ..errors import ConfigError

    if not paths:
        return None
    keys = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read trusted key `{path}` ({e.strerror})") from e
        text = data.strip()
        keys.append(bytes.fromhex(text.decode()) if len(text) == 64 else data)
    return tuple(keys)


def register(app: typer.Typer) -> None:
    from ..cli import _friendly, console

    @app.command()
    @_friendly
    def serve(
        bundles: Annotated[
            list[str], typer.Argument(help="Bundle folders to serve, as PATH or NAME=PATH; the first answers POST /.")
        ],
        host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the models.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
        max_body_bytes: Annotated[int, typer.Option(help="Largest request body; larger gets 413.")] = 1_000_000,
        max_texts: Annotated[int, typer.Option(help="Most texts in one request; more gets 422.")] = 64,
        max_text_chars: Annotated[int, typer.Option(help="Longest text in characters; longer gets 422.")] = 10_000,
        threads: Annotated[int, typer.Option(help="Intra-op threads per call (requests run side by side).")] = 1,
        provider: ProviderOpt = None,
        trusted_key: Annotated[
            list[Path] | None, typer.Option("--trusted-key", help="Ed25519 public key file; bundles must be signed.")
        ] = None,
        watch: Annotated[
            float, typer.Option(help="Seconds between checks for an updated bundle on disk (0: off; SIGHUP too).")
        ] = 2.0,
        telemetry: Annotated[
            Path | None, typer.Option(help="SQLite file for local telemetry (no raw text is stored).")
        ] = None,
        fallback: Annotated[
            str | None, typer.Option(help="Cloud endpoint (HF inference shape) for unsure or overlong texts.")
        ] = None,
        threshold: Annotated[float, typer.Option(help="With --fallback: ask the cloud below this score.")] = 0.7,
        fallback_timeout: Annotated[
            float, typer.Option(help="With --fallback: seconds before the device answers.")
        ] = 2.0,
    ) -> None:
        """Serve bundles over HTTP with the cloud's API shapes (Hugging Face inference, OpenAI embeddings)."""
        from .app import Limits
        from .registry import parse_bundle_arg
        from .routing import RoutingConfig
        from .serve import ServeConfig, Server

        config = ServeConfig(
            host=host,
            port=port,
            limits=Limits(max_body_bytes=max_body_bytes, max_texts=max_texts, max_text_chars=max_text_chars),
            threads=threads,
            providers=tuple(provider or ("auto",)),
            trusted_keys=_keys(trusted_key),
            watch_s=watch,
            telemetry=telemetry,
            routing=RoutingConfig(url=fallback, threshold=threshold, timeout_s=fallback_timeout) if fallback else None,
        )
        Server(
            [parse_bundle_arg(b) for b in bundles], config, log=lambda line: console.print(line, highlight=False)
        ).run()

    @app.command()
    @_friendly
    def doctor(
        bundle: Annotated[Path | None, typer.Argument(help="A bundle to load and time on this machine.")] = None,
        provider: ProviderOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """What this machine offers (providers, CPU features, cores) and what a bundle will run on."""
        from .doctor import bundle_report, machine_report

        report: dict[str, Any] = {"machine": machine_report()}
        if bundle is not None:
            report["bundle"] = bundle_report(bundle, provider)
        if as_json:
            print(json.dumps(report, indent=2))
            return
        for section, values in report.items():
            console.print(f"[bold]{section}[/bold]")
            for key, value in values.items():
                if key == "fallbacks":
                    for f in value:
                        console.print(f"  fallback             {f['provider']}: {f['reason']}", highlight=False)
                    continue
                shown = ", ".join(map(str, value)) if isinstance(value, list) else value
                console.print(f"  {key:<20} {shown}", highlight=False)

    @app.command()
    @_friendly
    def embed(
        bundle: Annotated[Path, typer.Argument(help="An embedding bundle (task `embedding`).")],
        texts: Annotated[list[str], typer.Argument(help="One or more texts.")],
    ) -> None:
        """Print unit-length sentence vectors as JSON, one list per text, from an embedding bundle."""
        from .predictor import Predictor

        print(json.dumps(Predictor(bundle).embed(texts).round(6).tolist()))

    @app.command("telemetry")
    @_friendly
    def telemetry_(
        db: Annotated[Path, typer.Argument(help="The --telemetry file of a server.")],
        bundle: Annotated[
            Path | None, typer.Option(help="Compare labels with this bundle's build-time distribution.")
        ] = None,
        export: Annotated[
            Path | None, typer.Option(help="Write the aggregates (never any text) to this JSON file to share.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    ) -> None:
        """Summarise local telemetry (latency, errors, labels, routing) and flag drift."""
        from .._fs import write_json
        from ..bundle import verify_bundle
        from .drift import summarize

        manifest = verify_bundle(bundle)[0] if bundle else None
        summary = summarize(db, manifest)
        if export is not None:
            write_json(export, summary)
        if as_json:
            print(json.dumps(summary, indent=2))
            return
        lat = summary["latency_ms"]
        p50 = f"{lat['p50']:.2f}" if lat["p50"] is not None else "-"
        p95 = f"{lat['p95']:.2f}" if lat["p95"] is not None else "-"
        console.print(
            f"{summary['requests']} requests, errors {summary['errors'] or 'none'}, p50 {p50} ms, p95 {p95} ms"
        )
        for name, m in summary["models"].items():
            dist = ", ".join(f"{k} {v:.1%}" for k, v in m["label_distribution"].items())
            console.print(f"[bold]{name}[/bold]: {m['predictions']} predictions ({dist}); routed {m['routed']}")
            note = m.get("note") or f"PSI {m['psi']} against the {m['reference']}"
            console.print(f"  {note}", highlight=False)
        if summary["drift"]:
            for flag in summary["drift"]:
                console.print(f"[yellow]drift:[/yellow] {flag}", highlight=False)
        else:
            console.print("no drift flagged")
        if export is not None:
            console.print(f"wrote aggregates to {export}")
