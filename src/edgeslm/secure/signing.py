"""Ed25519 signatures over the exact bytes of a bundle's manifest.json."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import SignatureError


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
