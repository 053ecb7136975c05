"""The device runtime's commands: predict, serve, doctor, telemetry, embed, embed-build, index, search, summarize.

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


def _read_text(path: Path) -> str:
    from ..errors import DataError

    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"`{path}` does not exist; pass a UTF-8 text file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read `{path}` as UTF-8 text ({e}); pass a UTF-8 text file") from e


def _read_collection(path: Path) -> list[str]:
    """Texts from a .jsonl file (a `text` field per line) or any other text file (one text per non-empty line)."""
    from ..errors import DataError

    raw = _read_text(path)
    if path.suffix != ".jsonl":
        return [line.strip() for line in raw.splitlines() if line.strip()]
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number} is not JSON ({e.msg}); one JSON object per line") from e
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(f'{path}:{number} has no string `text` field; write {{"text": "..."}} per line')
        texts.append(row["text"])
    return texts


def register(app: typer.Typer) -> None:
    from ..cli import _friendly, console

    @app.command()
    @_friendly
    def predict(
        bundle: Annotated[Path, typer.Argument(help="Bundle folder (from `edgeslm build`).")],
        texts: Annotated[list[str], typer.Argument(help="One or more texts to classify.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print labels and every score as JSON.")] = False,
        trusted: Annotated[
            list[Path] | None, typer.Option("--trusted", help="Public key (from `edgeslm keygen`); repeat for several.")
        ] = None,
    ) -> None:
        """Step 6: classify texts with the torch-free runtime (the bundle is verified before it loads).

        With --trusted, the bundle must also carry a manifest.sig by one of those keys.
        """
        from .predictor import Predictor

        keys = None
        if trusted:
            from ..secure.signing import load_public_key

            keys = [load_public_key(k) for k in trusted]
        preds = Predictor(bundle, trusted_keys=keys).predict(texts)
        if as_json:
            print(
                json.dumps(
                    [
                        {"text": t, "label": p.label, "score": p.score, "scores": p.scores}
                        for t, p in zip(texts, preds, strict=True)
                    ],
                    indent=2,
                )
            )
            return
        for text, p in zip(texts, preds, strict=True):
            console.print(f"[bold]{p.label}[/bold] {p.score:.3f}  {text}", highlight=False)

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
        """Serve bundles over HTTP with the cloud's API shapes (Hugging Face inference; OpenAI embeddings and chat
        completions, streamed with "stream": true, for text-generation bundles)."""
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
        server = Server(
            [parse_bundle_arg(b) for b in bundles], config, log=lambda line: console.print(line, highlight=False)
        )
        try:
            server.run()
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C or SIGTERM it stopped on: for a server, a clean stop
            console.print("stopped")

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

    @app.command("embed-build")
    @_friendly
    def embed_build(
        out: Annotated[Path, typer.Argument(help="Folder to write the embedding bundle to.")],
        base: Annotated[str, typer.Option(help="minilm (bundled all-MiniLM-L6-v2) or a local BERT folder.")] = "minilm",
        max_length: Annotated[int, typer.Option(help="Tokens per text; longer texts are truncated.")] = 128,
        fp32: Annotated[bool, typer.Option("--fp32", help="Keep FP32 weights (4x larger) instead of INT8.")] = False,
        min_cosine: Annotated[
            float, typer.Option(help="Refuse the bundle if a check sentence's cosine to the teacher is lower.")
        ] = 0.95,
        force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    ) -> None:
        """Build a `task = embedding` bundle (mean pooled, unit length) from a base model; needs the build extra."""
        from ..errors import MissingExtraError

        try:
            from ..embedding import EmbeddingConfig, build_embedding_bundle
        except ImportError as e:
            raise MissingExtraError(f"building needs {e.name}; fix: pip install 'edgeslm[build]'") from e
        config = EmbeddingConfig(max_length=max_length, quantize=not fp32, min_cosine=min_cosine)
        manifest = build_embedding_bundle(base, out, config, force=force)
        check = manifest.extra["export_check"]
        console.print(
            f"wrote {out}: {manifest.metrics['precision']}, {manifest.metrics['dim']}-d vectors, cosine to the "
            f"teacher min {check['min_cosine']:.3f} / mean {check['mean_cosine']:.3f} over {check['rows']} sentences",
            highlight=False,
        )

    @app.command()
    @_friendly
    def index(
        bundle: Annotated[Path, typer.Argument(help="An embedding bundle (task `embedding`).")],
        collection: Annotated[
            Path, typer.Argument(help="Texts to index: a .txt file (one per line) or .jsonl (a `text` field).")
        ],
        out: Annotated[Path, typer.Argument(help="Folder to write the index to.")],
        backend: Annotated[
            str, typer.Option(help="auto (numpy below the measured crossover, HNSW above), exact or hnsw.")
        ] = "auto",
        threads: Annotated[int | None, typer.Option(help="Intra-op threads for embedding.")] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    ) -> None:
        """Embed a local collection of texts and write a search index (atomic; no pickle)."""
        from .predictor import Predictor
        from .search import IndexConfig, build_index

        config = IndexConfig(backend=backend)
        texts = _read_collection(collection)
        built = build_index(Predictor(bundle, threads=threads), texts, out, config, bundle=bundle, force=force)
        console.print(f"indexed {len(texts)} texts into {out} ({built.index.backend}, {built.index.dim}-d)")

    @app.command()
    @_friendly
    def search(
        index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="A folder written by `edgeslm index`.")],
        queries: Annotated[list[str], typer.Argument(help="One or more queries.")],
        k: Annotated[int, typer.Option("-k", help="Results per query.")] = 5,
        bundle: Annotated[
            Path | None, typer.Option(help="The embedding bundle [default: the one the index was built with].")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    ) -> None:
        """The texts of an index most similar in meaning to each query (cosine of bundle embeddings)."""
        from ..errors import ConfigError
        from .predictor import Predictor
        from .search import SemanticIndex

        if k < 1:
            raise ConfigError(f"-k must be at least 1, got {k}")
        loaded = SemanticIndex.load(index_dir)
        source = bundle or loaded.meta.get("bundle")
        if not source:
            raise ConfigError("this index does not record its bundle; pass --bundle")
        results = loaded.search(Predictor(source), queries, k)
        if as_json:
            out = [
                {"query": q, "hits": [{"index": h.index, "score": round(h.score, 6), "text": h.text} for h in hits]}
                for q, hits in zip(queries, results, strict=True)
            ]
            print(json.dumps(out, ensure_ascii=False, indent=2))
            return
        for q, hits in zip(queries, results, strict=True):
            console.print(f"[bold]{q}[/bold]", highlight=False)
            for h in hits:
                console.print(f"  {h.score:.3f}  {h.text}", highlight=False, markup=False)

    @app.command()
    @_friendly
    def summarize(
        bundle: Annotated[
            Path, typer.Argument(help="An embedding bundle (extractive) or a text-generation bundle (abstractive).")
        ],
        document: Annotated[Path, typer.Argument(help="A text file to summarise, or - for standard input.")],
        sentences: Annotated[int, typer.Option("-n", "--sentences", help="Sentences to keep (extractive).")] = 3,
        as_json: Annotated[bool, typer.Option("--json", help="Print sentences, positions and scores as JSON.")] = False,
    ) -> None:
        """Summarise a document on the device. An embedding bundle keeps its most central sentences, in order
        (extractive; nothing invented); a text-generation bundle writes a summary (greedy, up to 128 tokens; see
        `edgeslm generate-summary` for sampling options)."""
        import sys

        from ..bundle import read_manifest
        from .predictor import Predictor
        from .summarize import SummaryConfig
        from .summarize import summarize as run

        text = sys.stdin.read() if str(document) == "-" else _read_text(document)
        if read_manifest(bundle).task == "text-generation":
            from ..generate.cli import summarize_abstractive
            from .generate import Generator, Sampling

            generator = Generator(bundle)  # up to 128 new tokens, leaving most of the context to the document
            summarize_abstractive(generator, text, Sampling(max_new_tokens=min(128, generator.context // 4)))
            return
        summary = run(Predictor(bundle), text, SummaryConfig(sentences=sentences))
        if as_json:
            body = {"summary": list(summary.sentences), "indices": list(summary.indices)}
            print(json.dumps(body, ensure_ascii=False, indent=2))
            return
        print(summary.text)

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
