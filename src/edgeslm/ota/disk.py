"""The seven file-system operations an install is made of, behind one small interface.

Production uses :class:`OsDisk` (plain ``os`` calls). The crash-consistency tests use
:class:`edgeslm.ota.simdisk.SimDisk`, which records the same calls and can "lose power" after any one of them,
keeping, dropping or tearing the writes that were not yet synced. Routing every write of the slot manager through
this seam is what lets a test try a power cut at every operation (``_fs`` does the same protocol, but as one call).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Protocol

__all__ = ["Disk", "OsDisk", "atomic_write"]


class Disk(Protocol):
    def read(self, path: Path) -> bytes: ...  # FileNotFoundError when absent
    def listdir(self, path: Path) -> list[str]: ...  # [] when the folder is absent
    def write(self, path: Path, data: bytes) -> None: ...  # create or truncate; not durable until fsync
    def fsync(self, path: Path) -> None: ...  # the file's data reaches the disk
    def rename(self, src: Path, dst: Path) -> None: ...  # atomic replace, same folder
    def unlink(self, path: Path) -> None: ...  # no error when absent
    def mkdir(self, path: Path) -> None: ...  # no error when present
    def fsync_dir(self, path: Path) -> None: ...  # the folder's entries (creates, renames, unlinks) reach the disk


def atomic_write(disk: Disk, path: Path, data: bytes) -> None:
    """write temp -> fsync -> rename -> fsync(folder): after a power cut, ``path`` is the old or the new bytes."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        disk.write(tmp, data)
        disk.fsync(tmp)
        disk.rename(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            disk.unlink(tmp)
        raise
    disk.fsync_dir(path.parent)


class OsDisk:
    """The real file system."""

    def read(self, path: Path) -> bytes:
        return Path(path).read_bytes()

    def listdir(self, path: Path) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def write(self, path: Path, data: bytes) -> None:
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError:
            Path(path).unlink(missing_ok=True)  # a partial file after ENOSPC is garbage; leave none
            raise

    def fsync(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        Path(path).unlink(missing_ok=True)

    def mkdir(self, path: Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
