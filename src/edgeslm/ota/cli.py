"""`edgeslm ota ...`: the update repository (init, publish, serve, rotate, refresh) and the device side (update,
status). Thin: every command is one call into repository.py, server.py or updater.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

RepoArg = Annotated[Path, typer.Argument(help="Repository folder (from `edgeslm ota init`).")]


def register(app: typer.Typer) -> None:
    from ..cli import _friendly, console

    ota = typer.Typer(
        name="ota",
        help="Over-the-air updates on TUF: a signed repository, and a device updater with A/B slots and rollback.",
        no_args_is_help=True,
    )
    app.add_typer(ota, name="ota")

    @ota.command()
    @_friendly
    def init(
        repo: RepoArg,
        root_keys: Annotated[int, typer.Option("--root-keys", help="Root keys to create.")] = 3,
        root_threshold: Annotated[int, typer.Option("--root-threshold", help="Root signatures required.")] = 2,
    ) -> None:
        """Create a repository: Ed25519 keys for root (2 of 3), targets, snapshot and timestamp, and metadata."""
        from .config import RepoConfig
        from .repository import Repository

        r = Repository.init(repo, RepoConfig(root_keys=root_keys, root_threshold=root_threshold))
        console.print(
            f"created {repo}; ship [bold]{r.metadata / '1.root.json'}[/bold] read-only with every device "
            f"(--root), and move {r.keys}/root-*.pem offline: they are needed only to rotate keys"
        )

    @ota.command()
    @_friendly
    def publish(
        repo: RepoArg,
        bundle: Annotated[Path, typer.Argument(help="Signed bundle folder (`edgeslm sign`).")],
        device_class: Annotated[
            list[str], typer.Option("--device-class", help="A device class the bundle is for; repeat for several.")
        ],
        channel: Annotated[str, typer.Option("--channel", help="Release channel.")] = "stable",
        release: Annotated[
            int | None, typer.Option("--release", help="Release counter [default: previous + 1].")
        ] = None,
        golden: Annotated[
            Path | None,
            typer.Option(
                "--golden",
                help="JSONL of {text, label} the device must answer [default: 3 sentences "
                "with this bundle's own labels].",
            ),
        ] = None,
        delta: Annotated[
            bool, typer.Option("--delta/--no-delta", help="Also publish a delta from the previous release.")
        ] = True,
    ) -> None:
        """Publish a signed bundle as the channel's new release (targets, snapshot and timestamp re-signed)."""
        from ..errors import ConfigError
        from .repository import Repository

        pairs = None
        if golden is not None:
            try:
                rows = [json.loads(line) for line in golden.read_text().splitlines() if line.strip()]
                pairs = [(str(r["text"]), str(r["label"])) for r in rows]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ConfigError(
                    f"--golden `{golden}` must be JSONL with `text` and `label` on each line ({e})"
                ) from e
        r = Repository(repo).publish(
            bundle, channel=channel, device_classes=device_class, golden=pairs, release=release, delta=delta
        )
        extra = f", delta from the previous release {r.delta_length} bytes" if r.delta_length else ""
        console.print(f"published release {r.release} on `{channel}`: {r.path} ({r.length} bytes{extra})")

    @ota.command()
    @_friendly
    def serve(
        repo: RepoArg,
        port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8765,
        host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = "127.0.0.1",
    ) -> None:
        """Serve the repository's public/ folder as static HTTP (metadata and targets; never the keys)."""
        from .repository import Repository
        from .server import make_server

        server = make_server(Repository(repo).path / "public", host, port)
        console.print(f"serving {repo}/public at http://{host}:{server.server_address[1]} (Ctrl-C stops)")
        try:
            server.serve_forever()
        finally:
            server.server_close()

    @ota.command()
    @_friendly
    def refresh(repo: RepoArg) -> None:
        """Re-sign snapshot and timestamp with fresh expiry dates (run daily: devices refuse stale metadata)."""
        from .repository import Repository

        Repository(repo).refresh()
        console.print(f"re-signed snapshot and timestamp of {repo}")

    @ota.command()
    @_friendly
    def rotate(
        repo: RepoArg,
        role: Annotated[str, typer.Option("--role", help="root, targets, snapshot or timestamp.")],
    ) -> None:
        """Replace a role's key (one root key at a time) and publish a new root signed by old and new keys."""
        from .repository import Repository

        keyid = Repository(repo).rotate(role)
        console.print(f"rotated `{role}`: new key {keyid[:16]}; old key moved to keys/retired/")

    @ota.command()
    @_friendly
    def update(
        repo: Annotated[str, typer.Option("--repo", help="Repository URL, e.g. http://127.0.0.1:8765.")],
        device_dir: Annotated[Path, typer.Option("--device-dir", help="The device's model folder.")],
        root: Annotated[Path, typer.Option("--root", help="Bootstrap root.json shipped with the device.")],
        trusted: Annotated[list[Path], typer.Option("--trusted", help="Trusted bundle key (KEY.pub); repeatable.")],
        device_class: Annotated[str, typer.Option("--device-class", help="This device's class.")],
        channel: Annotated[str, typer.Option("--channel", help="Release channel.")] = "stable",
        deadline: Annotated[float, typer.Option("--deadline", help="Seconds allowed for any one download.")] = 600.0,
        min_rate: Annotated[float, typer.Option("--min-rate", help="Slowest accepted rate, bytes/s.")] = 2048.0,
        lock_wait: Annotated[float, typer.Option("--lock-wait", help="Seconds to wait for another updater.")] = 0.0,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Update this device: verify, fetch (a delta when possible), install into the spare slot, check, switch."""
        import dataclasses

        from ..errors import ConfigError
        from ..secure.signing import load_public_key
        from .config import UpdaterConfig
        from .updater import update as run

        try:
            bootstrap = root.read_bytes()
        except OSError as e:
            raise ConfigError(
                f"cannot read the bootstrap root `{root}` ({e.strerror}); pass the shipped root.json"
            ) from e
        result = run(
            device_dir,
            repo,
            bootstrap_root=bootstrap,
            trusted_keys=[load_public_key(p) for p in trusted],
            device_class=device_class,
            channel=channel,
            config=UpdaterConfig(deadline_s=deadline, min_rate_bps=min_rate, lock_wait_s=lock_wait),
        )
        if as_json:
            print(json.dumps(dataclasses.asdict(result), indent=2))
        else:
            colour = {"installed": "green", "up-to-date": "green"}.get(result.status, "yellow")
            console.print(f"[{colour}]{result.status}[/{colour}]: {result.message} ({result.seconds:.2f} s)")
        if result.status == "rolled-back":
            raise typer.Exit(2)

    @ota.command()
    @_friendly
    def status(device_dir: Annotated[Path, typer.Option("--device-dir", help="The device's model folder.")]) -> None:
        """Show which slot serves, which release, the release counter and any pending install."""
        from .disk import OsDisk
        from .slots import load_state

        print(load_state(OsDisk(), device_dir).to_json().decode(), end="")
