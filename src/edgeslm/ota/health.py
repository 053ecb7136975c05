"""Is this bundle fit to serve? The byte checks (signature, hashes, no stray files) and the golden-input check.

The golden inputs are ``[{"text": ..., "label": ...}]`` signed with the release in its TUF custom metadata
(``ota publish`` records what the bundle answers on the publisher's runtime), plus any ``golden`` list the bundle's
own manifest carries in ``extra``. The device loads the installed slot exactly as a server would and must give the
same labels: a model that does not load, or loads and answers differently on this device, is rolled back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..bundle import MANIFEST, SIGNATURE, Manifest, check_file, parse_manifest
from ..errors import BundleError, SignatureError, UpdateError

__all__ = ["check_golden", "golden_pairs", "verify_files"]


def verify_files(files: Mapping[str, bytes], trusted_keys: Sequence[bytes]) -> Manifest:
    """Check a bundle held as bytes: signed by a trusted key, every listed file intact, nothing unlisted."""
    from ..secure.signing import verify_signature

    if MANIFEST not in files:
        raise BundleError("the update has no manifest.json; it is not an edgeslm bundle")
    if SIGNATURE not in files:
        raise SignatureError("the update is not signed (no manifest.sig); sign the bundle with `edgeslm sign`")
    verify_signature(files[MANIFEST], files[SIGNATURE], trusted_keys)
    manifest = parse_manifest(files[MANIFEST])
    for name, entry in manifest.files.items():
        if name not in files:
            raise BundleError(f"the update lacks `{name}`, which its manifest lists; re-publish the bundle")
        check_file(name, files[name], entry)
    stray = set(files) - set(manifest.files) - {MANIFEST, SIGNATURE}
    if stray:
        raise BundleError(f"the update holds files its signed manifest does not list: {sorted(stray)}")
    return manifest


def golden_pairs(raw: Any) -> list[tuple[str, str]]:
    """Validate a ``[{"text", "label"}]`` list from metadata; raise UpdateError on any other shape."""
    if not isinstance(raw, list) or not all(
        isinstance(x, dict) and isinstance(x.get("text"), str) and isinstance(x.get("label"), str) for x in raw
    ):
        raise UpdateError("the release's golden inputs are malformed; re-publish it with `edgeslm ota publish`")
    return [(x["text"], x["label"]) for x in raw]


def check_golden(folder: Path, trusted_keys: Sequence[bytes], golden: Sequence[tuple[str, str]]) -> None:
    """Load the bundle in ``folder`` with the runtime and require the expected label for every golden input."""
    from ..runtime import Predictor

    predictor = Predictor(folder, threads=1, trusted_keys=trusted_keys)
    pairs = list(golden) + golden_pairs(predictor.manifest.extra.get("golden", []))
    if not pairs:
        raise UpdateError("the release has no golden inputs, so its health cannot be checked; re-publish it")
    for text, expected in pairs:
        got = predictor.predict(text).label  # one text per call: bit-exact with the publisher's answer
        if got != expected:
            raise UpdateError(
                f"health check failed: the new model answers {got!r} for golden input {text!r}, expected "
                f"{expected!r}; rolled back to the previous model"
            )
