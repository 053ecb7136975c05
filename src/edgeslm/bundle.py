"""The bundle format: a folder with ``model.onnx``, ``tokenizer.json`` and ``manifest.json``.

The manifest lists the sha256 and size of every file, so checking it is pure logic on bytes
(``parse_manifest``, ``check_file``) apart from the one function that reads the folder (``verify_bundle``).
This module imports only the standard library: the device runtime depends on it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._fs import atomic_dir, write_json
from .errors import BundleError, SignatureError

__all__ = [
    "FORMAT_VERSION",
    "Manifest",
    "check_file",
    "parse_manifest",
    "read_manifest",
    "verify_bundle",
    "write_bundle",
]

FORMAT_VERSION = 1  # bump on any change a reader of the previous version would misread
RUNTIME_VERSION = "0.1.0"  # the version of edgeslm.runtime; bundles name the minimum they need
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # Ed25519 signature over the exact bytes of manifest.json (see secure/signing.py)
TASKS = ("text-classification", "embedding", "text-generation")  # only a classifier has labels
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # plain file names: no folders, no `..`


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    format_version: int
    task: str
    labels: tuple[str, ...]
    max_length: int
    inputs: tuple[str, ...]
    model: str  # file name of the ONNX graph
    tokenizer: str  # file name of the tokenizers JSON
    files: dict[str, FileEntry]
    min_runtime_version: str = RUNTIME_VERSION
    target_devices: tuple[str, ...] = ()
    recipe: dict[str, Any] = field(default_factory=dict)  # the recipe that produced the bundle
    metrics: dict[str, Any] = field(default_factory=dict)  # measured at build time
    extra: dict[str, Any] = field(default_factory=dict)  # provenance: versions, export check, creation time

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "task": self.task,
            "labels": list(self.labels),
            "max_length": self.max_length,
            "inputs": list(self.inputs),
            "model": self.model,
            "tokenizer": self.tokenizer,
            "files": {k: {"sha256": v.sha256, "size": v.size} for k, v in sorted(self.files.items())},
            "min_runtime_version": self.min_runtime_version,
            "target_devices": list(self.target_devices),
            "recipe": self.recipe,
            "metrics": self.metrics,
            "extra": self.extra,
        }


def _version(text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(\.\d+)*", text):
        raise BundleError(f"manifest `min_runtime_version` {text!r} is not a version like 0.1.0; rebuild the bundle")
    return tuple(int(p) for p in text.split("."))


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate manifest bytes. Raises BundleError naming the first problem."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(
            f"manifest.json is not valid JSON ({e}); the bundle is damaged, rebuild or re-download it"
        ) from e
    if not isinstance(raw, dict):
        raise BundleError("manifest.json is not a JSON object; the bundle is damaged, rebuild or re-download it")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(
            "manifest.json has no integer `format_version`; the bundle is damaged or not an edgeslm bundle"
        )
    if version > FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {version} is newer than this runtime understands ({FORMAT_VERSION}); "
            "upgrade edgeslm to load it"
        )
    if version < 1:
        raise BundleError(f"bundle format version {version} is unknown; rebuild the bundle")

    def need(key: str, kind: type | tuple[type, ...]) -> Any:
        value = raw.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BundleError(f"manifest.json field `{key}` is missing or has the wrong type; rebuild the bundle")
        return value

    task = need("task", str)
    if task not in TASKS:
        raise BundleError(f"bundle task `{task}` is not one this runtime runs ({', '.join(TASKS)}); upgrade edgeslm")
    labels = need("labels", list)
    inputs = need("inputs", list)
    if (not labels and task == "text-classification") or not all(isinstance(x, str) for x in labels):
        raise BundleError("manifest.json `labels` must be a non-empty list of strings; rebuild the bundle")
    if not inputs or not all(isinstance(x, str) for x in inputs):
        raise BundleError("manifest.json `inputs` must be a non-empty list of strings; rebuild the bundle")
    files: dict[str, FileEntry] = {}
    for name, entry in need("files", dict).items():
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
            and isinstance(entry.get("size"), int)
        )
        if not _SAFE_NAME.match(name) or name == MANIFEST or not ok:
            raise BundleError(f"manifest.json lists a bad file entry `{name}`; rebuild the bundle")
        files[name] = FileEntry(entry["sha256"], entry["size"])
    model, tokenizer = need("model", str), need("tokenizer", str)
    for name in (model, tokenizer):
        if name not in files:
            raise BundleError(f"manifest.json names `{name}` but does not list its hash; rebuild the bundle")
    max_length = need("max_length", int)
    if max_length <= 0:
        raise BundleError(f"manifest.json `max_length` must be > 0, got {max_length}; rebuild the bundle")
    min_runtime = raw.get("min_runtime_version", RUNTIME_VERSION)
    if not isinstance(min_runtime, str):
        raise BundleError("manifest.json `min_runtime_version` must be a string; rebuild the bundle")
    if _version(min_runtime) > _version(RUNTIME_VERSION):
        raise BundleError(f"bundle needs runtime {min_runtime}, this is {RUNTIME_VERSION}; upgrade edgeslm to load it")
    return Manifest(
        format_version=version,
        task=task,
        labels=tuple(labels),
        max_length=max_length,
        inputs=tuple(inputs),
        model=model,
        tokenizer=tokenizer,
        files=files,
        min_runtime_version=min_runtime,
        target_devices=tuple(raw.get("target_devices") or ()),
        recipe=raw.get("recipe") or {},
        metrics=raw.get("metrics") or {},
        extra=raw.get("extra") or {},
    )


def check_file(name: str, data: bytes, entry: FileEntry) -> None:
    """Raise BundleError unless ``data`` has the size and sha256 the manifest lists for ``name``."""
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise BundleError(
            f"bundle file `{name}` does not match its hash in manifest.json (changed or truncated); "
            "re-download or rebuild the bundle"
        )


def read_manifest(path: Path, trusted_keys: Sequence[bytes] | None = None) -> Manifest:
    """The bundle folder's manifest, its signature checked first when ``trusted_keys`` are given (no file hashes)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle `{path}` is not a folder; pass the bundle/ folder that `edgeslm build` wrote")
    try:
        manifest_bytes = (path / MANIFEST).read_bytes()
    except FileNotFoundError as e:
        raise BundleError(f"bundle `{path}` has no manifest.json; it is incomplete, rebuild or re-download it") from e
    if trusted_keys is not None:
        from .secure.signing import verify_signature  # cryptography is needed only for signed bundles

        try:
            signature = (path / SIGNATURE).read_bytes()
        except FileNotFoundError as e:
            raise SignatureError(
                f"bundle `{path}` is not signed (no {SIGNATURE}) and trusted keys were given; "
                "sign it with `edgeslm sign`"
            ) from e
        verify_signature(manifest_bytes, signature, trusted_keys)
    return parse_manifest(manifest_bytes)


def verify_bundle(path: Path, trusted_keys: Sequence[bytes] | None = None) -> tuple[Manifest, dict[str, bytes]]:
    """Read a bundle folder, check the manifest and every listed file; return the manifest and the file bytes.

    With ``trusted_keys`` (raw Ed25519 public keys), ``manifest.sig`` must verify against one of them first; the
    manifest holds every file's sha256, so the signature covers the whole bundle. The caller loads from the returned
    bytes, so what was checked is exactly what is used.
    """
    path = Path(path)
    manifest = read_manifest(path, trusted_keys)
    blobs: dict[str, bytes] = {}
    for name, entry in manifest.files.items():
        try:
            data = (path / name).read_bytes()
        except FileNotFoundError as e:
            raise BundleError(
                f"bundle file `{name}` is missing from `{path}`; re-download or rebuild the bundle"
            ) from e
        check_file(name, data, entry)
        blobs[name] = data
    return manifest, blobs


def _entry(path: Path) -> FileEntry:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return FileEntry(h.hexdigest(), size)


def write_bundle(
    files: dict[str, Path], out: Path, manifest_fields: dict[str, Any], *, force: bool = False
) -> Manifest:
    """Copy ``files`` (bundle name -> source path) into a new bundle folder ``out`` with its manifest, atomically."""
    with atomic_dir(out, force=force) as tmp:
        for name, src in files.items():
            if not _SAFE_NAME.match(name):
                raise BundleError(f"`{name}` is not a plain file name; bundle files cannot live in subfolders")
            shutil.copyfile(src, tmp / name)
        entries = {name: _entry(tmp / name) for name in files}
        manifest = Manifest(format_version=FORMAT_VERSION, files=entries, **manifest_fields)
        write_json(tmp / MANIFEST, manifest.to_dict())
    return manifest
