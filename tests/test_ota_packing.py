"""The shipping form (canonical tar, distrustful unpacker) and binary deltas, as pure functions on bytes."""

from __future__ import annotations

import bz2
import hashlib
import io
import struct
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeslm.errors import BundleError, UpdateError
from edgeslm.ota.delta import apply_delta, make_delta
from edgeslm.ota.packing import MAX_MEMBERS, pack, unpack

FILES = {"manifest.json": b'{"a": 1}', "model.onnx": bytes(range(256)) * 40, "tokenizer.json": b"{}"}
names = st.from_regex(r"[a-z][a-z0-9._-]{0,12}", fullmatch=True)


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(names, st.binary(max_size=2000), min_size=1, max_size=5))
def test_pack_is_canonical_and_round_trips(files: dict[str, bytes]) -> None:
    shuffled = dict(reversed(list(files.items())))
    assert pack(files) == pack(shuffled)  # same files in, same bytes out: a device can rebuild its base
    assert unpack(pack(files), max_bytes=1 << 20) == files


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (_tar(_member("a"), _member("b", tarfile.LNKTYPE, link="a")), "hard link"),
        (_tar(_member("evil", tarfile.SYMTYPE, link="../../etc/passwd")), "symlink"),
        (_tar(_member("fifo", tarfile.FIFOTYPE)), "non-file entry"),
        (_tar(_member("sub", tarfile.DIRTYPE)), "non-file entry"),
        (_tar(_member("sub/file")), "not a plain file name"),
        (_tar(_member("../up")), "not a plain file name"),
        (_tar(_member("/abs")), "not a plain file name"),
        (_tar(_member("a"), _member("a")), "twice"),
        (_tar(*(_member(f"f{i}") for i in range(MAX_MEMBERS + 1))), "more than 64 files"),
        (_tar(_member("big", data=b"y" * 5000)), "more than 4096 bytes"),
        (b"not a tar at all" * 100, "not a valid tar"),
        (_tar(), "empty"),
        (pack(FILES)[:700], "truncated|damaged|not a valid tar"),
    ],
)
def test_unpack_refuses(archive: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        unpack(archive, max_bytes=4096)


def test_delta_round_trip_and_size() -> None:
    base = pack(FILES)
    new_files = {**FILES, "manifest.json": b'{"a": 2}'}
    result = pack(new_files)
    patch = make_delta(base, result)
    assert len(patch) < len(result) // 10
    sha = hashlib.sha256
    out = apply_delta(
        base, patch, base_sha256=sha(base).hexdigest(), result_sha256=sha(result).hexdigest(), result_length=len(result)
    )
    assert out == result


def _args(base: bytes, result: bytes) -> dict:
    return {
        "base_sha256": hashlib.sha256(base).hexdigest(),
        "result_sha256": hashlib.sha256(result).hexdigest(),
        "result_length": len(result),
    }


def test_delta_refusals() -> None:
    base, result = pack(FILES), pack({**FILES, "model.onnx": b"z" * 5000})
    patch = make_delta(base, result)
    with pytest.raises(UpdateError, match="wrong base"):
        apply_delta(base + b"!", patch, **{**_args(base, result)})
    with pytest.raises(UpdateError, match="signed result hash"):
        apply_delta(base, patch, **{**_args(base, result), "result_sha256": "0" * 64})
    with pytest.raises(UpdateError, match="announces a"):
        apply_delta(base, patch, **{**_args(base, result), "result_length": len(result) + 1})
    with pytest.raises(UpdateError, match="not a bsdiff4 patch"):
        apply_delta(base, b"garbage" * 10, **_args(base, result))
    with pytest.raises(UpdateError, match="inconsistent"):
        apply_delta(base, patch[:40], **_args(base, result))


def test_delta_patch_bomb_is_bounded() -> None:
    """A patch whose `extra` block inflates to 20 MB while it announces a 1 KB result: stopped at 1 KB."""
    base, result = b"a" * 1024, b"b" * 1024
    control = bz2.compress(struct.pack("<qqq", 0, 1024, 0))
    diff = bz2.compress(b"")
    bomb = bz2.compress(bytes(20 << 20))
    patch = b"BSDIFF40" + struct.pack("<qqq", len(control), len(diff), 1024) + control + diff + bomb
    with pytest.raises(UpdateError, match="patch bomb"):
        apply_delta(base, patch, **_args(base, result))
