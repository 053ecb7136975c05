"""`edgeslm personalize`, `edgeslm federate` and `edgeslm split`: thin wrappers over ``learn.personalize``,
``learn.federate`` and ``learn.split_export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

SourceArg = Annotated[
    Path, typer.Argument(help="Build folder (from `edgeslm build`), or a bundle folder together with --checkpoint.")
]
CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", help="Student checkpoint folder, when SOURCE is a bare bundle.")
]
RankOpt = Annotated[int, typer.Option("--rank", help="LoRA rank r (> 0).")]
TargetsOpt = Annotated[
    str, typer.Option("--targets", help="Comma-separated module suffixes that get LoRA (e.g. query,value,head).")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")]


def register(app: typer.Typer) -> None:
    from ..cli import _friendly, console

    @app.command()
    @_friendly
    def personalize(
        source: SourceArg,
        data: Annotated[str, typer.Option("--data", help="The user's .csv/.tsv/.jsonl file (text, label).")],
        out: Annotated[Path, typer.Option("--out", help="Adapter folder to write.")],
        rank: RankOpt = 8,
        targets: TargetsOpt = "query,value,head",
        epochs: Annotated[float, typer.Option("--epochs", help="Passes over the user's rows.")] = 3.0,
        max_minutes: Annotated[float | None, typer.Option("--max-minutes", help="Wall-time budget.")] = None,
        dev_file: Annotated[
            str | None, typer.Option("--dev-file", help="Held-out rows [default: 10% of --data].")
        ] = None,
        text_column: Annotated[str, typer.Option("--text-column")] = "text",
        label_column: Annotated[str, typer.Option("--label-column")] = "label",
        checkpoint: CheckpointOpt = None,
        force: ForceOpt = False,
    ) -> None:
        """Train a LoRA adapter on a user's own rows, on the CPU; write adapter.safetensors + adapter.json.

        The adapter names its base bundle by the sha256 of its manifest and is refused on any other bundle;
        the runtime merges it into the base at load (`edgeslm.learn.adapter.AdaptedPredictor`).
        """
        from ..recipe import DataConfig
        from .lora import LoraSpec
        from .personalize import PersonalizeConfig
        from .personalize import personalize as run

        config = PersonalizeConfig(
            data=DataConfig(name=data, dev_path=dev_file, text_column=text_column, label_column=label_column),
            lora=LoraSpec(rank=rank, targets=tuple(t.strip() for t in targets.split(",") if t.strip())),
            epochs=epochs,
            max_minutes=max_minutes,
        )
        result = run(source, out, config, checkpoint=checkpoint, force=force)
        m = result.meta
        acc, train = m["held_out_accuracy"], m["train"]
        console.print(
            f"wrote {out}: {m['files']['adapter.safetensors']['size'] / 1024:.0f} KiB, "
            f"{m['trainable_parameters']:,} trainable parameters, {train['seconds']:.1f} s, "
            f"peak RSS {train['peak_rss_mb']:.0f} MB; held-out accuracy {acc['base']:.4f} -> {acc['adapted']:.4f} "
            f"({acc['rows']} rows)"
        )

    @app.command()
    @_friendly
    def federate(
        source: SourceArg,
        out: Annotated[Path, typer.Option("--out", help="Folder for the new bundle and federate.json.")],
        data: Annotated[str, typer.Option("--data", help="sst2, clinc150 or a file; split across the clients.")],
        clients: Annotated[
            int, typer.Option("--clients", help="Simulated clients; with --superlink, the SuperNodes to wait for.")
        ] = 100,
        per_round: Annotated[int, typer.Option("--per-round", help="Clients sampled per round.")] = 10,
        rounds: Annotated[int, typer.Option("--rounds", help="Federated rounds.")] = 5,
        alpha: Annotated[
            float | None, typer.Option("--alpha", help="Dirichlet alpha over labels (non-IID); omit for IID.")
        ] = 0.5,
        strategy: Annotated[
            str, typer.Option("--strategy", help="fedavg, fedprox, trimmed-mean, krum or median.")
        ] = "fedavg",
        mode: Annotated[str, typer.Option("--mode", help="lora (A/B only) or full (the whole student).")] = "lora",
        rank: RankOpt = 8,
        poisoned: Annotated[
            float, typer.Option("--poisoned", help="Share of clients that send label-flipped updates.")
        ] = 0.0,
        dp_noise: Annotated[
            float | None, typer.Option("--dp-noise", help="DP noise multiplier (client-side clipping + noise).")
        ] = None,
        dp_clip: Annotated[float, typer.Option("--dp-clip", help="DP clipping norm of each update.")] = 1.0,
        secagg: Annotated[
            bool, typer.Option("--secagg", help="Secure aggregation (Flower SecAgg+): the server sees only the sum.")
        ] = False,
        superlink: Annotated[
            str | None,
            typer.Option(
                "--superlink",
                help="HOST:PORT of a Flower SuperLink: train on real SuperNodes instead of simulating (run this "
                "on the SuperLink's host; --data is then only the central evaluation set).",
            ),
        ] = None,
        superlink_ca: Annotated[
            Path | None,
            typer.Option("--superlink-ca", help="CA certificate (PEM) of the SuperLink; needed off this machine."),
        ] = None,
        checkpoint: CheckpointOpt = None,
        force: ForceOpt = False,
    ) -> None:
        """Federated fine-tuning of the student on Flower; the result becomes a new bundle in OUT.

        Simulated clients train on Dirichlet non-IID splits of --data; updates with NaN or the wrong shapes are
        rejected and counted; with --dp-noise, updates are clipped on the client and noised on the server, and ε is
        reported; with --secagg (FedAvg only, not with DP), SecAgg+ masks every update so that the server learns
        only their sum.

        With --superlink, real devices take part: each runs Flower's `flower-supernode --superlink HOST:PORT
        --node-config "data='rows.csv' student='build/'"` with its own rows and its copy of the build, and the
        run starts once --clients of them are connected.
        """
        from ..recipe import DataConfig
        from .deploy import SuperLink
        from .federate import FederateConfig
        from .federate import federate as run
        from .lora import LoraSpec

        config = FederateConfig(
            data=DataConfig(name=data),
            clients=clients,
            per_round=per_round,
            rounds=rounds,
            alpha=alpha,
            strategy=strategy,
            mode=mode,
            lora=LoraSpec(rank=rank),
            poisoned=poisoned,
            dp_noise=dp_noise,
            dp_clip=dp_clip,
            secagg=secagg,
        )
        link = SuperLink(superlink, superlink_ca) if superlink else None
        result = run(source, out, config, checkpoint=checkpoint, force=force, superlink=link)
        s = result.summary
        console.print(
            f"wrote {result.bundle}: accuracy {s['accuracy'][0]:.4f} -> {s['accuracy'][-1]:.4f} over {rounds} rounds, "
            f"{s['upload_bytes_per_client_round']:,} bytes per client per round, {s['rejected_updates']} updates "
            f"rejected, {s['seconds']:.0f} s"
            + (f", ε = {s['epsilon']:.2f} (δ = {s['delta']:g})" if s["epsilon"] else "")
        )

    @app.command()
    @_friendly
    def split(
        source: SourceArg,
        out: Annotated[Path, typer.Option("--out", help="Folder for device/ and server/.")],
        layers: Annotated[int, typer.Option("--layers", "-k", help="Encoder layers on the device (0 = embeddings).")],
        fp32: Annotated[bool, typer.Option("--fp32", help="Keep both halves' weights FP32 (default: INT8).")] = False,
        checkpoint: CheckpointOpt = None,
        force: ForceOpt = False,
    ) -> None:
        """Cut the student after layer K for split inference: OUT/device (front.onnx, tokenizer) runs on the device
        and sends activations; OUT/server (back.onnx) finishes on the server.

        The activations are not private: the server can read the input tokens back from them
        (benchmarks/split_learning.py measures how well, per K).
        """
        from .split_export import export_split

        folder = export_split(source, out, layers, checkpoint=checkpoint, int8=not fp32, force=force)
        front = (folder / "device" / "front.onnx").stat().st_size
        back = (folder / "server" / "back.onnx").stat().st_size
        console.print(
            f"wrote {folder}: device half {front:,} bytes, server half {back:,} bytes (cut after layer {layers})"
        )
