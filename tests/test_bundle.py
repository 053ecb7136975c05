"""The manifest checks are pure functions on bytes; verify_bundle reads a folder and applies them."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeslm.bundle import FORMAT_VERSION, FileEntry, check_file, parse_manifest, verify_bundle, write_bundle
from edgeslm.errors import BundleError


def _fields() -> dict:
    return {
        "task": "text-classification",
        "labels": ("neg", "pos"),
        "max_length": 64,
        "inputs": ("input_ids", "attention_mask", "token_type_ids"),
        "model": "model.onnx",
        "tokenizer": "tokenizer.json",
    }


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m").write_bytes(b"onnx-bytes" * 100)
    (tmp_path / "src" / "t").write_text("{}")
    write_bundle(
        {"model.onnx": tmp_path / "src" / "m", "tokenizer.json": tmp_path / "src" / "t"}, tmp_path / "b", _fields()
    )
    return tmp_path / "b"


def test_round_trip(bundle: Path) -> None:
    manifest, blobs = verify_bundle(bundle)
    assert manifest.format_version == FORMAT_VERSION and manifest.labels == ("neg", "pos")
    assert blobs["model.onnx"] == b"onnx-bytes" * 100
    assert manifest.files["model.onnx"].sha256 == hashlib.sha256(b"onnx-bytes" * 100).hexdigest()
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_existing_output_is_refused(bundle: Path) -> None:
    with pytest.raises(Exception, match="already exists"):
        write_bundle({}, bundle, _fields())


def test_missing_file(bundle: Path) -> None:
    (bundle / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="`tokenizer.json` is missing"):
        verify_bundle(bundle)


def test_changed_byte(bundle: Path) -> None:
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[10] ^= 1
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its hash"):
        verify_bundle(bundle)


def test_missing_manifest(bundle: Path) -> None:
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="has no manifest.json"):
        verify_bundle(bundle)


def _mutate(bundle: Path, **changes: object) -> bytes:
    raw = json.loads((bundle / "manifest.json").read_text())
    raw.update(changes)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": FORMAT_VERSION + 1}, "newer than this runtime understands"),
        ({"format_version": "1"}, "no integer `format_version`"),
        ({"task": "translation"}, "is not one this runtime runs"),
        ({"labels": []}, "`labels` must be a non-empty list"),
        ({"model": "other.onnx"}, "does not list its hash"),
        ({"files": {"../evil": {"sha256": "0" * 64, "size": 1}}}, "bad file entry"),
        ({"min_runtime_version": "99.0.0"}, "upgrade edgeslm"),
        ({"max_length": 0}, "`max_length` must be > 0"),
    ],
)
def test_bad_manifests(bundle: Path, changes: dict, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        parse_manifest(_mutate(bundle, **changes))


def test_malformed_manifest_file(bundle: Path) -> None:
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        verify_bundle(bundle)


@given(st.binary(max_size=200))
def test_parse_manifest_never_crashes_on_garbage(data: bytes) -> None:
    with contextlib.suppress(BundleError):
        parse_manifest(data)


def test_check_file_is_pure() -> None:
    entry = FileEntry(hashlib.sha256(b"abc").hexdigest(), 3)
    check_file("x", b"abc", entry)
    with pytest.raises(BundleError):
        check_file("x", b"abd", entry)
