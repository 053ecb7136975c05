"""Binary deltas between two bundle tars (bsdiff4), applied only to the right base and checked after.

The policy, signed in the delta's TUF custom metadata: ``base_sha256`` (the tar the device must hold),
``result_sha256`` and ``result_length`` (the full tar the patch must produce; equal to the full target's hash).
The device applies a delta only when its rebuilt base tar hashes to ``base_sha256``; it refuses a patch whose
header announces another output length, bounds every decompressed block by that length (a patch bomb is
"endless data"), and checks the result's hash before anything is installed. Any failure falls back to the full
bundle.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import struct

from ..errors import UpdateError

__all__ = ["apply_delta", "make_delta"]

_MAGIC = b"BSDIFF40"


def make_delta(base: bytes, result: bytes) -> bytes:
    """A bsdiff4 patch that turns ``base`` into ``result``. Memory is about 17x ``base``: run it on the publisher."""
    import bsdiff4

    return bytes(bsdiff4.diff(base, result))


def _int64(raw: bytes) -> int:
    # bsdiff's sign-magnitude little-endian int64 (bsdiff4.core.decode_int64), read here without the C module.
    (value,) = struct.unpack("<Q", raw)
    return -(value & ~(1 << 63)) if value >> 63 else value


def _bounded_bz2(data: bytes, limit: int, what: str) -> bytes:
    out = bz2.BZ2Decompressor().decompress(data, max_length=limit + 1) if data else b""
    if len(out) > limit:
        raise UpdateError(f"delta {what} block expands beyond {limit} bytes (a patch bomb); using the full bundle")
    return out


def apply_delta(base: bytes, patch: bytes, *, base_sha256: str, result_sha256: str, result_length: int) -> bytes:
    """Apply a bsdiff4 ``patch`` to ``base`` after checking the base, and return the verified result.

    Hand-rolls the 32-byte header read (bsdiff4's own reader decompresses without a bound) and then hands the
    bounded blocks to bsdiff4's C core. Raises UpdateError naming the failed check.
    """
    import bsdiff4.core

    if hashlib.sha256(base).hexdigest() != base_sha256:
        raise UpdateError("delta base does not match the installed bundle (wrong base); using the full bundle")
    if len(patch) < 32 or patch[:8] != _MAGIC:
        raise UpdateError("delta is not a bsdiff4 patch; using the full bundle")
    len_control, len_diff, len_result = (_int64(patch[i : i + 8]) for i in (8, 16, 24))
    if len_result != result_length:
        raise UpdateError(
            f"delta announces a {len_result}-byte result, the signed result is {result_length} bytes; "
            "using the full bundle"
        )
    if len_control < 0 or len_diff < 0 or 32 + len_control + len_diff > len(patch):
        raise UpdateError("delta header is inconsistent (truncated or crafted patch); using the full bundle")
    blocks = io.BytesIO(patch[32:])
    control = _bounded_bz2(blocks.read(len_control), 24 * (result_length + 1), "control")
    diff = _bounded_bz2(blocks.read(len_diff), result_length, "diff")
    extra = _bounded_bz2(blocks.read(), result_length, "extra")
    if len(control) % 24:
        raise UpdateError("delta control block is malformed; using the full bundle")
    try:
        result = bytes(bsdiff4.core.patch(base, len_result, control, diff, extra))
    except (ValueError, MemoryError) as e:
        raise UpdateError(f"delta does not apply ({e}); using the full bundle") from e
    if len(result) != result_length or hashlib.sha256(result).hexdigest() != result_sha256:
        raise UpdateError("delta result does not match the signed result hash; using the full bundle")
    return result
