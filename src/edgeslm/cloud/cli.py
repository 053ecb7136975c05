"""CLI: ``edgeslm cloud serve|profiles|check``, ``edgeslm compare`` and ``edgeslm label``.

Heavy imports (torch, fastapi, matplotlib, onnxruntime) happen inside the commands, so ``edgeslm --help`` stays fast.
No ``from __future__ import annotations`` here: typer evaluates the option annotations, some of them local names.
"""

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    from rich.table import Table

    from ..cli import DataDirOpt, _friendly, console, err

    cloud = typer.Typer(
        name="cloud",
        help="The cloud side: a local stand-in API, emulated networks, and checks of the emulation.",
        no_args_is_help=True,
    )
    app.add_typer(cloud)

    @cloud.command()
    @_friendly
    def serve(
        model: Annotated[Path, typer.Argument(help="A teacher checkpoint folder (torch, FP32) or a bundle folder.")],
        port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8800,
        network: Annotated[
            str, typer.Option("--network", help="Profile to emulate (see `edgeslm cloud profiles`) or a .toml.")
        ] = "loopback",
        tls: Annotated[bool, typer.Option("--tls", help="Serve HTTPS with a self-signed certificate.")] = False,
        cert_dir: Annotated[
            Path | None, typer.Option("--cert-dir", help="Where --tls writes cert.pem/key.pem [default: MODEL/../].")
        ] = None,
        threads: Annotated[int, typer.Option("--threads", help="Inference threads.")] = 1,
    ) -> None:
        """Serve a model in Hugging Face text-classification and OpenAI /v1/embeddings shapes on 127.0.0.1."""
        import threading

        from .network import load_profile
        from .proxy import DelayProxy, LinkModel
        from .server import StandIn, load_model
        from .tls import self_signed

        profile = load_profile(network)
        emulate = network != "loopback"
        if emulate:
            LinkModel(profile)  # refuses a profile with a gap in its RTT before the model loads
        cert = key = None
        if tls:
            cert, key = self_signed(cert_dir or Path(model).resolve().parent / "stand-in-tls")
        console.print(f"loading {model} …")
        loaded = load_model(model, threads=threads)
        with StandIn(loaded, port=0 if emulate else port, certfile=cert, keyfile=key) as server:
            scheme = "https" if tls else "http"
            front = server.port
            proxy = DelayProxy(profile, ("127.0.0.1", server.port), port=port).start() if emulate else None
            if proxy is not None:
                front = proxy.port
            console.print(
                f"serving [bold]{loaded.name}[/bold] ({loaded.task}, labels {', '.join(loaded.labels)}) at "
                f"{scheme}://127.0.0.1:{front}/models/{loaded.name} and /v1/embeddings, network {profile.name}"
                + (f", certificate {cert} (pass it as --cacert)" if cert else "")
            )
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
            finally:
                if proxy is not None:
                    proxy.stop()

    @cloud.command("profiles")
    @_friendly
    def profiles() -> None:
        """List the network profiles, their numbers and sources (empty = a gap: no source found)."""
        from .network import known_profiles

        table = Table(title="network profiles (blank = no source found; such an effect is not emulated)")
        for col in ("name", "RTT ms", "down Mbps", "up Mbps", "loss", "sources"):
            table.add_column(col)
        for name, p in known_profiles().items():
            cells = [("" if v != v else f"{v:g}") for v in (p.rtt_ms, p.down_mbps, p.up_mbps, p.loss)]
            table.add_row(name, *cells, "\n".join(p.sources))
        console.print(table)

    @cloud.command("check")
    @_friendly
    def check(
        network: Annotated[str, typer.Option("--network", help="Profile name or .toml file.")] = "4g",
        pings: Annotated[int, typer.Option("--pings", help="Round trips to time.")] = 15,
    ) -> None:
        """Measure the emulated link (RTT, set-up, bandwidth) and print it next to the profile's numbers."""
        from .linkcheck import measure_link
        from .network import load_profile

        profile = load_profile(network)
        r = measure_link(profile, pings=pings)
        console.print(
            f"{profile.name}: RTT p50 {r['rtt_ms_p50']:.1f} ms (profile {profile.rtt_ms:g}), new connection + first "
            f"reply {r['setup_ms']:.1f} ms (2 RTT = {2 * profile.rtt_ms:g}), up {r['up_mbps']:.2f} Mbps (profile "
            f"{profile.up_mbps:g}), down {r['down_mbps']:.2f} Mbps (profile {profile.down_mbps:g})"
        )

    @app.command("compare")
    @_friendly
    def compare_cmd(
        bundle: Annotated[Path, typer.Argument(help="Bundle folder (from `edgeslm build`).")],
        cloud_url: Annotated[str, typer.Option("--cloud", help="Text-classification URL, e.g. from `cloud serve`.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Folder for compare.json and report.html.")],
        data: Annotated[str, typer.Option("--data", help="sst2, clinc150 or a .csv/.jsonl file.")] = "sst2",
        data_dir: DataDirOpt = None,
        network: Annotated[
            str, typer.Option("--network", help="Comma-separated profiles to emulate in front of the URL.")
        ] = "loopback,wifi,4g,satellite,flaky",
        rows: Annotated[int, typer.Option("--rows", help="Dev sentences per warm run.")] = 200,
        cold_rows: Annotated[int, typer.Option("--cold-rows", help="New-connection calls per profile.")] = 30,
        price: Annotated[str, typer.Option("--price", help="Price list in cloud/prices.toml.")] = "google-nl-sentiment",
        cacert: Annotated[Path | None, typer.Option("--cacert", help="PEM certificate to trust for https.")] = None,
        timeout: Annotated[float, typer.Option("--timeout", help="Seconds per cloud call.")] = 10.0,
        force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False,
    ) -> None:
        """Device vs cloud on the same sentences: latency, bytes, answers, energy, cost, availability."""
        from .._fs import atomic_dir
        from ..recipe import DataConfig
        from .compare import CompareConfig, compare
        from .report import summary, write_compare_report

        config = CompareConfig(
            rows=rows,
            cold_rows=cold_rows,
            networks=tuple(n.strip() for n in network.split(",") if n.strip()),
            price=price,
            timeout_s=timeout,
        )
        data_config = DataConfig(name=data, data_dir=str(data_dir) if data_dir else None)
        if out.exists() and not force:
            raise typer.BadParameter(f"output `{out}` already exists; choose another path or pass --force")
        result = compare(bundle, cloud_url, data_config, config, cafile=cacert, log=console.print)
        with atomic_dir(out, force=force) as tmp:
            write_compare_report(result, tmp)
        for line in summary(result):
            console.print(f"• {line}", highlight=False)
        console.print(f"wrote {out / 'compare.json'}, {out / 'report.html'}")

    @app.command("label")
    @_friendly
    def label_cmd(
        cloud_url: Annotated[str, typer.Option("--cloud", help="Text-classification URL used as the teacher.")],
        unlabeled: Annotated[Path, typer.Option("--unlabeled", help=".txt (one per line), .jsonl or .csv texts.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Labelled .jsonl (text, label, scores).")],
        budget: Annotated[int, typer.Option("--budget", help="Most HTTP requests this run, retries included.")],
        cache: Annotated[
            Path | None,
            typer.Option("--cache", help="SQLite answer cache [default: OUT's folder/.label-cache.sqlite]."),
        ] = None,
        rate: Annotated[float, typer.Option("--rate", help="Requests per second at most.")] = 5.0,
        retries: Annotated[int, typer.Option("--retries", help="Retries per text on retryable failures.")] = 4,
        labels: Annotated[
            str | None, typer.Option("--labels", help="Comma-separated label set the cloud must answer with.")
        ] = None,
        text_column: Annotated[str, typer.Option("--text-column", help="Text column of .jsonl/.csv.")] = "text",
        cacert: Annotated[Path | None, typer.Option("--cacert", help="PEM certificate to trust for https.")] = None,
        timeout: Annotated[float, typer.Option("--timeout", help="Seconds per request.")] = 10.0,
        force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
    ) -> None:
        """Label unlabelled text through a cloud endpoint (cached, rate-limited, retried, within a hard budget)."""
        from .label import LabelConfig, label_texts, read_unlabeled

        config = LabelConfig(
            budget=budget,
            rate_per_s=rate,
            retries=retries,
            timeout_s=timeout,
            labels=tuple(x.strip() for x in labels.split(",")) if labels else None,
            text_column=text_column,
        )
        texts = read_unlabeled(unlabeled, text_column)
        r = label_texts(
            cloud_url,
            texts,
            out,
            cache or out.parent / ".label-cache.sqlite",
            config,
            cafile=cacert,
            force=force,
            log=console.print,
        )
        console.print(
            f"wrote {r.out}: {r.labelled}/{r.texts} texts labelled, {r.from_cache} from the cache, "
            f"{r.requests} requests ({r.retries} retries) of a budget of {budget}"
        )
        if r.left:
            err.print(
                f"[yellow]budget reached: {r.left} texts left unlabelled; re-run with a larger --budget "
                "(cached answers cost nothing)[/yellow]"
            )
