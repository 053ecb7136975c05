"""Ed25519 signatures over the exact bytes of a bundle's manifest.json.

What is signed (the canonical bytes): the bytes of ``manifest.json`` exactly as they lie on disk, with no
re-serialisation. The manifest lists the sha256 and size of every other file, so one signature covers the whole
bundle, and a verifier never has to agree with the signer on a JSON canonical form: it hashes what it read.
The signature is the raw 64-byte Ed25519 signature (RFC 8032), written to ``manifest.sig``.

Key files (written by :func:`generate_keypair`):

- ``KEY``      the private key, PKCS#8 PEM, unencrypted, mode 0600 (keep it off the devices and out of git);
- ``KEY.pub``  the public key, SubjectPublicKeyInfo PEM (``openssl pkey -pubin -in KEY.pub -text`` reads it).

:func:`load_public_key` also accepts a raw 32-byte key, the form :func:`verify_signature` takes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._fs import write_bytes
from ..errors import ConfigError, SignatureError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "check_signed",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "public_key_id",
    "sign_bundle",
    "sign_manifest",
    "verify_signature",
]

PUBLIC_SUFFIX = ".pub"


def verify_signature(message: bytes, signature: bytes, trusted_keys: Sequence[bytes]) -> None:
    """Raise SignatureError unless ``signature`` over ``message`` verifies with one of ``trusted_keys``.

    Keys are raw 32-byte Ed25519 public keys.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    for key in trusted_keys:
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
            return
        except (InvalidSignature, ValueError):
            continue
    raise SignatureError(
        "manifest.sig does not verify against any trusted key; the bundle was changed or signed by "
        "an untrusted key — re-download it or add the signer's public key with --trusted"
    )


def generate_keypair(out: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 private key to ``out`` (mode 0600) and its public key to ``out.pub``.

    Refuses to overwrite an existing key unless ``force``: losing a signing key cannot be undone.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out)
    pub = out.with_name(out.name + PUBLIC_SUFFIX)
    for path in (out, pub):
        if path.exists() and not force:
            raise ConfigError(f"`{path}` already exists; choose another --out or pass --force to replace the key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    old_umask = os.umask(0o077)  # the temp file is created 0600, so the key is never readable by others
    try:
        write_bytes(out, private_pem)
    finally:
        os.umask(old_umask)
    os.chmod(out, 0o600)
    write_bytes(pub, public_pem)
    return out, pub


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PKCS#8 PEM Ed25519 private key written by :func:`generate_keypair`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError as e:
        raise ConfigError(f"signing key `{path}` does not exist; create one with `edgeslm keygen --out {path}`") from e
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"`{path}` is not an unencrypted PEM private key ({e}); pass the file `edgeslm keygen` wrote"
        ) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"`{path}` is not an Ed25519 key; bundles are signed with Ed25519 (`edgeslm keygen`)")
    return key


def load_public_key(path: Path) -> bytes:
    """Read a public key (PEM from :func:`generate_keypair`, or raw 32 bytes) and return its raw 32 bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"trusted key `{path}` does not exist; pass the KEY.pub that `edgeslm keygen` wrote") from e
    if len(data) == 32:
        return data
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise ConfigError(f"`{path}` is not a PEM public key; pass the KEY.pub that `edgeslm keygen` wrote") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"`{path}` is not an Ed25519 public key; bundles are signed with Ed25519")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_id(raw: bytes) -> str:
    """A short, stable name for a public key (first 16 hex digits of its sha256), for logs and messages."""
    import hashlib

    return hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The raw Ed25519 signature over the exact manifest bytes."""
    return key.sign(manifest_bytes)


def sign_bundle(bundle: Path, key_path: Path) -> Path:
    """Check the bundle, then write ``manifest.sig`` (Ed25519 over the exact bytes of manifest.json) atomically.

    The bundle is verified first (every file against its hash) so a signature is never put on a damaged bundle.
    """
    from ..bundle import MANIFEST, SIGNATURE, verify_bundle

    key = load_private_key(key_path)
    bundle = Path(bundle)
    verify_bundle(bundle)
    manifest_bytes = (bundle / MANIFEST).read_bytes()
    signature = sign_manifest(manifest_bytes, key)
    write_bytes(bundle / SIGNATURE, signature)
    return bundle / SIGNATURE


def check_signed(bundle: Path, trusted_keys: Sequence[bytes]) -> str:
    """Verify a bundle against ``trusted_keys``; return the id of the key that signed it. Raises SignatureError."""
    from ..bundle import MANIFEST, SIGNATURE, verify_bundle

    if not trusted_keys:
        raise SignatureError("no trusted keys given; pass at least one --trusted KEY.pub")
    verify_bundle(Path(bundle), trusted_keys)
    manifest_bytes = (Path(bundle) / MANIFEST).read_bytes()
    signature = (Path(bundle) / SIGNATURE).read_bytes()
    for key in trusted_keys:
        try:
            verify_signature(manifest_bytes, signature, [key])
            return public_key_id(key)
        except SignatureError:
            continue
    raise SignatureError("manifest.sig verified and then did not; the bundle changed while it was read")  # a race
