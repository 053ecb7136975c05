"""`edgeslm keygen`, `edgeslm sign`, `edgeslm verify`: Ed25519 keys and bundle signatures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from ..cli import _friendly, console

    @app.command()
    @_friendly
    def keygen(
        out: Annotated[Path, typer.Option("--out", "-o", help="Private key path; the public key goes to OUT.pub.")],
        force: Annotated[bool, typer.Option("--force", help="Replace an existing key (cannot be undone).")] = False,
    ) -> None:
        """Create an Ed25519 signing key (mode 0600) and its public key OUT.pub (give that to devices)."""
        from .signing import generate_keypair, load_public_key, public_key_id

        private, public = generate_keypair(out, force=force)
        console.print(
            f"wrote {private} (private, keep it secret) and {public} (key id {public_key_id(load_public_key(public))})"
        )

    @app.command()
    @_friendly
    def sign(
        bundle: Annotated[Path, typer.Argument(help="Bundle folder to sign.")],
        key: Annotated[Path, typer.Option("--key", help="Private key from `edgeslm keygen`.")],
    ) -> None:
        """Sign a bundle: an Ed25519 signature over the exact bytes of manifest.json, written to manifest.sig."""
        from .signing import sign_bundle

        console.print(f"wrote {sign_bundle(bundle, key)}")

    @app.command()
    @_friendly
    def verify(
        bundle: Annotated[Path, typer.Argument(help="Bundle folder to check.")],
        trusted: Annotated[
            list[Path], typer.Option("--trusted", help="A trusted public key (KEY.pub); repeat for several.")
        ],
    ) -> None:
        """Check a bundle's signature against trusted keys and every file against its hash."""
        from .signing import check_signed, load_public_key

        key_id = check_signed(bundle, [load_public_key(p) for p in trusted])
        console.print(f"[green]ok[/green]: {bundle} is intact and signed by trusted key {key_id}")
