"""A power cut at every file-system operation of an install, in memory: the crash-consistency harness.

:class:`SimDisk` implements :class:`edgeslm.ota.disk.Disk` over two images: what the program sees (volatile)
and what would survive a power cut (durable). Every mutating call is also queued as *pending* until an ``fsync``
(file data) or ``fsync_dir`` (that folder's creates, renames and unlinks) makes it durable. ``crash_after=k``
raises :class:`PowerCut` instead of running operation k+1. :meth:`SimDisk.reboot` then builds the disk a
restarted device would find: the durable image plus any chosen subset of the pending operations, in order, the
last data write optionally torn in half. A linked file whose data never reached the disk reads as empty, ext4's
classic outcome. The method is SQLite's crash VFS and MCUboot's "fail at operation i" loop, after
shared/research/security_ota_fl.md §8; :func:`crash_matrix` runs it over a whole install.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import EdgeSLMError, UpdateError
from . import slots
from .health import verify_files
from .packing import pack

__all__ = ["CrashReport", "PowerCut", "SimDisk", "crash_matrix"]


class PowerCut(Exception):
    """The simulated power failed before the next file-system operation."""


@dataclass(frozen=True)
class _Op:
    kind: str  # link | data | rename | unlink | mkdir
    path: str
    inode: int = -1
    data: bytes = b""
    dst: str = ""


def _parent(path: str) -> str:
    return str(PurePosixPath(path).parent)


class SimDisk:
    """An in-memory file system with power-cut semantics (see the module docstring)."""

    def __init__(self, crash_after: int | None = None, *, honour_sync: bool = True) -> None:
        self.crash_after = crash_after
        self.honour_sync = honour_sync  # False models a program whose fsyncs do nothing (to prove the harness bites)
        self.ops = 0  # mutating operations run so far
        self.names: dict[str, int] = {}  # volatile: path -> inode
        self.dirs: set[str] = {"/"}
        self.data: dict[int, bytes] = {}
        self.d_names: dict[str, int] = {}  # durable image
        self.d_dirs: set[str] = {"/"}
        self.d_data: dict[int, bytes] = {}
        self.pending: list[_Op] = []
        self._next_inode = 0

    # ---- the Disk protocol ------------------------------------------------------------------------------------
    def _tick(self) -> None:
        if self.crash_after is not None and self.ops >= self.crash_after:
            raise PowerCut(f"power cut after {self.ops} operations")
        self.ops += 1

    def read(self, path: Path) -> bytes:
        p = str(path)
        if p not in self.names or _parent(p) not in self.dirs:
            raise FileNotFoundError(p)
        return self.data[self.names[p]]

    def listdir(self, path: Path) -> list[str]:
        d = str(path)
        return sorted(PurePosixPath(p).name for p in [*self.names, *self.dirs] if p != d and _parent(p) == d)

    def write(self, path: Path, data: bytes) -> None:
        self._tick()
        p = str(path)
        if _parent(p) not in self.dirs:
            raise FileNotFoundError(p)
        if p not in self.names:
            self.names[p] = self._next_inode
            self._next_inode += 1
            self.pending.append(_Op("link", p, self.names[p]))
        self.data[self.names[p]] = bytes(data)
        self.pending.append(_Op("data", p, self.names[p], bytes(data)))

    def fsync(self, path: Path) -> None:
        self._tick()
        inode = self.names[str(path)]
        self._flush(lambda op: op.kind == "data" and op.inode == inode)

    def rename(self, src: Path, dst: Path) -> None:
        self._tick()
        self.names[str(dst)] = self.names.pop(str(src))
        self.pending.append(_Op("rename", str(src), dst=str(dst)))

    def unlink(self, path: Path) -> None:
        self._tick()
        if self.names.pop(str(path), None) is not None:
            self.pending.append(_Op("unlink", str(path)))

    def mkdir(self, path: Path) -> None:
        self._tick()
        for p in reversed([str(path), *(str(a) for a in PurePosixPath(path).parents)]):
            if p not in self.dirs:
                self.dirs.add(p)
                self.pending.append(_Op("mkdir", p))

    def fsync_dir(self, path: Path) -> None:
        self._tick()
        d = str(path)
        self._flush(lambda op: op.kind != "data" and d in (_parent(op.path), _parent(op.dst or op.path)))

    # ---- durability ---------------------------------------------------------------------------------------------
    def _flush(self, match: Callable[[_Op], bool]) -> None:
        if not self.honour_sync:
            return
        keep = []
        for op in self.pending:
            if match(op):
                self._apply(op)
            else:
                keep.append(op)
        self.pending = keep

    def _apply(self, op: _Op, *, torn: bool = False) -> None:
        if op.kind == "link":
            self.d_names[op.path] = op.inode
            self.d_data.setdefault(op.inode, b"")  # linked before its data: an empty file
        elif op.kind == "data":
            self.d_data[op.inode] = op.data[: len(op.data) // 2] if torn else op.data
        elif op.kind == "rename" and op.path in self.d_names:
            self.d_names[op.dst] = self.d_names.pop(op.path)
        elif op.kind == "unlink":
            self.d_names.pop(op.path, None)
        elif op.kind == "mkdir":
            self.d_dirs.add(op.path)

    def reboot(self, keep: Sequence[int] = (), torn: int | None = None) -> SimDisk:
        """The disk after a power cut: the durable image plus pending ops ``keep`` (indices, applied in order);
        ``torn``: the index of a kept data op that reaches the disk half-written."""
        image = SimDisk(honour_sync=self.honour_sync)
        image.d_names, image.d_dirs, image.d_data = dict(self.d_names), set(self.d_dirs), dict(self.d_data)
        image._next_inode = self._next_inode
        for i in sorted(keep):
            image._apply(self.pending[i], torn=i == torn)
        image.names, image.dirs, image.data = dict(image.d_names), set(image.d_dirs), dict(image.d_data)
        return image

    def crash_states(
        self, rng: random.Random, random_subsets: int
    ) -> Iterator[tuple[str, tuple[int, ...], int | None]]:
        """The after-crash variants tried at one crash point: (label, kept pending ops, torn op)."""
        n = len(self.pending)
        yield "drop all unsynced", (), None
        yield "keep all unsynced", tuple(range(n)), None
        for i in range(1, n):
            yield f"keep first {i}", tuple(range(i)), None
        for i in range(n):
            yield f"keep only op {i}", (i,), None
            if self.pending[i].kind == "data":
                yield f"tear op {i}", tuple(range(i + 1)), i
        for _ in range(random_subsets if n > 1 else 0):
            yield "random subset", tuple(i for i in range(n) if rng.random() < 0.5), None


@dataclass
class CrashReport:
    operations: int = 0  # file-system operations of one uninterrupted install + start + commit
    crash_points: int = 0  # points at which power was cut (every operation, and after the last)
    states: int = 0  # after-crash disk images checked (crash points x variants of unsynced writes)
    broken: int = 0  # images after which the device could not serve old-or-new or the counter went back
    examples: list[str] = field(default_factory=list)  # the first few broken states, for people


def _serving(disk: SimDisk, root: Path, trusted: Sequence[bytes]) -> tuple[str, int]:
    """What a device would serve from this disk: (bundle tar sha256, counter). Raises on a broken state."""
    state = slots.load_state(disk, root)
    if state.active is None:
        raise UpdateError("no active slot")
    info = state.slots[state.active]
    if info is None:
        raise UpdateError("active slot records nothing")
    folder = slots.slot_dir(root, state.active)
    files = {name: disk.read(folder / name) for name in disk.listdir(folder)}
    verify_files(files, trusted)
    if hashlib.sha256(pack(files)).hexdigest() != info.sha256:
        raise UpdateError("active slot does not hold the release its state names")
    return info.sha256, state.counter


def crash_matrix(
    old: Mapping[str, bytes],
    new: Mapping[str, bytes],
    trusted: Sequence[bytes],
    *,
    new_is_healthy: bool = True,
    random_subsets: int = 8,
    seed: int = 0,
    honour_sync: bool = True,
) -> CrashReport:
    """Cut power at every operation of installing ``new`` over a device serving ``old``; check every reboot.

    After each reboot the device must serve a complete, signed bundle that is ``old`` or ``new`` (only ``old``
    when ``new`` fails its health check), both before and after the next start resolves the pending install,
    and the release counter must never fall below what was durable at the crash. ``honour_sync=False`` runs the
    same install on a disk whose fsyncs do nothing: the harness must then find broken states.
    """
    root = Path("/device")
    old_sha, new_sha = (hashlib.sha256(pack(f)).hexdigest() for f in (old, new))
    allowed = {old_sha, new_sha} if new_is_healthy else {old_sha}

    def health(folder: Path, info: slots.SlotInfo, disk: SimDisk) -> None:
        files = {name: disk.read(folder / name) for name in disk.listdir(folder)}
        verify_files(files, trusted)
        if not new_is_healthy and hashlib.sha256(pack(files)).hexdigest() == new_sha:
            raise UpdateError("golden inputs answered wrongly")

    def run(disk: SimDisk) -> None:
        slots.install(disk, root, new, slots.SlotInfo(2, new_sha), tries=2)
        slots.boot(disk, root, lambda f, i: health(f, i, disk))

    def fresh(crash_after: int | None) -> SimDisk:
        disk = SimDisk(honour_sync=honour_sync)
        slots.install(disk, root, old, slots.SlotInfo(1, old_sha), tries=1)
        slots.boot(disk, root, lambda f, i: health(f, i, disk))
        disk.pending.clear()
        disk.d_names, disk.d_dirs, disk.d_data = dict(disk.names), set(disk.dirs), dict(disk.data)  # all synced
        disk.ops, disk.crash_after = 0, crash_after
        return disk

    report = CrashReport()
    clean = fresh(None)
    run(clean)
    report.operations = clean.ops
    rng = random.Random(seed)
    for k in range(report.operations + 1):
        disk = fresh(k)
        with contextlib.suppress(PowerCut):
            run(disk)
        report.crash_points += 1
        durable_counter = slots.State.from_json(disk.d_data[disk.d_names[str(root / slots.STATE)]]).counter
        for label, keep, torn in disk.crash_states(rng, random_subsets):
            report.states += 1
            image = disk.reboot(keep, torn)
            try:
                before, _ = _serving(image, root, trusted)
                slots.boot(image, root, lambda f, i, d=image: health(f, i, d))  # type: ignore[misc]
                after, counter = _serving(image, root, trusted)
                if before not in allowed or after not in allowed:
                    raise UpdateError("serves a bundle that is neither the old nor the new one")
                if counter < durable_counter:
                    raise UpdateError(f"release counter went back from {durable_counter} to {counter}")
                if slots.load_state(image, root).pending is not None:
                    raise UpdateError("an install is still pending after the start resolved it")
            except (EdgeSLMError, FileNotFoundError, KeyError) as e:
                report.broken += 1
                if len(report.examples) < 5:
                    report.examples.append(f"cut after op {k}, {label}: {e}")
    return report
