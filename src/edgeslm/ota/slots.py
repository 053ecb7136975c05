"""Two model slots, one durable pointer file, and the rules that keep a device serving through any power cut.

Layout of a device folder::

    state.json       which slot is active, which one is being tried, tries left, the release counter
    slots/a/  slots/b/   bundle files (manifest.json, manifest.sig, model.onnx, tokenizer.json)

The Android A/B scheme at file level. An install writes only the slot that ``state.json`` does not point to,
after first recording durably that this slot holds nothing (so a half-written slot is never anyone's fallback);
then it points ``pending`` at the new slot with ``tries_left`` starts. Each start decrements ``tries_left``
*before* the health check, so a model that crashes the process is abandoned after N starts. A passing health
check commits: ``active`` moves to the new slot and the release ``counter`` rises, in one atomic write of
``state.json``. Every write is temp file -> fsync -> rename -> fsync(folder) (:func:`disk.atomic_write`).
The counter lives in the same file as the pointer, so they can never disagree after a crash.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import EdgeSLMError, UpdateError
from .disk import Disk, OsDisk, atomic_write

__all__ = ["SLOTS", "SlotInfo", "State", "abandon", "active_bundle", "boot", "install", "load_state", "slot_dir"]

SLOTS = ("a", "b")
STATE = "state.json"
MAX_REJECTED = 32  # remembered bad releases; older ones drop off (they are also below the counter by then)


@dataclass(frozen=True)
class SlotInfo:
    release: int  # the release counter signed in the TUF target
    sha256: str  # sha256 of the bundle's canonical tar (the TUF target hash)
    golden: tuple[tuple[str, str], ...] = ()  # (text, expected label) pairs signed with the release

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.release, "sha256": self.sha256, "golden": [list(p) for p in self.golden]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SlotInfo:
        golden = tuple((str(t), str(label)) for t, label in raw.get("golden", []))
        return cls(release=int(raw["release"]), sha256=str(raw["sha256"]), golden=golden)


@dataclass(frozen=True)
class State:
    active: str | None = None  # the committed slot a server loads; None on a fresh device
    pending: str | None = None  # a newly installed slot not yet committed
    tries_left: int = 0  # starts the pending slot still gets
    counter: int = 0  # highest committed release; never decreases
    slots: dict[str, SlotInfo | None] = field(default_factory=lambda: dict.fromkeys(SLOTS))
    rejected: tuple[str, ...] = ()  # tar hashes that failed their health check

    def to_json(self) -> bytes:
        slots = {k: (None if v is None else v.to_dict()) for k, v in self.slots.items()}
        body = {
            "format": 1,
            "active": self.active,
            "pending": self.pending,
            "tries_left": self.tries_left,
            "counter": self.counter,
            "slots": slots,
            "rejected": list(self.rejected),
        }
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> State:
        try:
            raw: dict[str, Any] = json.loads(data)
            slots = {k: (None if raw["slots"][k] is None else SlotInfo.from_dict(raw["slots"][k])) for k in SLOTS}
            state = cls(
                active=raw["active"],
                pending=raw["pending"],
                tries_left=int(raw["tries_left"]),
                counter=int(raw["counter"]),
                slots=slots,
                rejected=tuple(raw["rejected"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise UpdateError(
                f"device {STATE} is unreadable ({e}); it is only written atomically, so the device folder was "
                "edited by hand — restore it or re-provision the device"
            ) from e
        if state.active not in (None, *SLOTS) or state.pending not in (None, *SLOTS):
            raise UpdateError(f"device {STATE} names an unknown slot; restore it or re-provision the device")
        return state

    def inactive(self) -> str:
        return "b" if self.active == "a" else "a"


def slot_dir(root: Path, slot: str) -> Path:
    return Path(root) / "slots" / slot


def active_bundle(root: Path, disk: Disk | None = None) -> Path | None:
    """The folder a server should load: the committed slot, or None on a device that never installed one."""
    state = load_state(disk or OsDisk(), root)
    return None if state.active is None else slot_dir(root, state.active)


def load_state(disk: Disk, root: Path) -> State:
    try:
        return State.from_json(disk.read(Path(root) / STATE))
    except FileNotFoundError:
        return State()


def _save(disk: Disk, root: Path, state: State) -> State:
    atomic_write(disk, Path(root) / STATE, state.to_json())
    return state


def _clear(disk: Disk, root: Path, slot: str) -> None:
    folder = slot_dir(root, slot)
    names = disk.listdir(folder)
    for name in names:
        disk.unlink(folder / name)
    if names:
        disk.fsync_dir(folder)


def install(disk: Disk, root: Path, files: Mapping[str, bytes], info: SlotInfo, *, tries: int) -> str:
    """Write ``files`` into the inactive slot and make it ``pending``; the active slot is never touched.

    On an OSError (a full disk) the half-written slot is removed and the error re-raised: the state still says
    the slot is empty, so the device keeps serving the active slot.
    """
    root = Path(root)
    state = load_state(disk, root)
    if state.pending is not None:
        raise UpdateError("a previous update is still pending; run boot() (the updater does) before installing")
    slot = state.inactive()
    if state.slots[slot] is not None:  # first, durably forget what the slot held: it is about to be overwritten
        state = _save(disk, root, replace(state, slots={**state.slots, slot: None}))
    disk.mkdir(slot_dir(root, slot))
    disk.fsync_dir(slot_dir(root, slot).parent)
    _clear(disk, root, slot)
    try:
        for name in sorted(files):
            disk.write(slot_dir(root, slot) / name, files[name])
            disk.fsync(slot_dir(root, slot) / name)
        disk.fsync_dir(slot_dir(root, slot))
        _save(disk, root, replace(state, pending=slot, tries_left=tries, slots={**state.slots, slot: info}))
    except OSError:
        with contextlib.suppress(OSError):
            if load_state(disk, root).pending != slot:  # the switch to pending did not happen: remove the garbage
                _clear(disk, root, slot)
        raise
    return slot


def abandon(disk: Disk, root: Path) -> State:
    """Drop a pending install without blaming the release (the disk filled up, not the model was bad)."""
    state = load_state(disk, root)
    if state.pending is None:
        return state
    return _reject(disk, root, state, state.pending, remember=False)


def _reject(disk: Disk, root: Path, state: State, slot: str, *, remember: bool = True) -> State:
    info = state.slots[slot]
    rejected = (*state.rejected, info.sha256)[-MAX_REJECTED:] if info and remember else state.rejected
    state = _save(
        disk, root, replace(state, pending=None, tries_left=0, slots={**state.slots, slot: None}, rejected=rejected)
    )
    _clear(disk, root, slot)  # only after the state forgot the slot
    return state


HealthCheck = Callable[[Path, SlotInfo], None]  # raises EdgeSLMError when that slot's bundle must not serve


def boot(disk: Disk, root: Path, health: HealthCheck) -> tuple[State, str | None]:
    """Resolve a pending slot: start it (tries_left - 1, durably), health-check it, then commit or roll back.

    Returns the resulting state and, when a pending slot was rolled back, why. Safe to call at any time and
    after any crash; with nothing pending it only returns the state.
    """
    root = Path(root)
    state = load_state(disk, root)
    disk.unlink(root / f".{STATE}.tmp")  # a temp file a power cut left behind
    slot = state.pending
    if slot is None:
        return state, None
    if state.tries_left <= 0:
        return _reject(
            disk, root, state, slot
        ), f"the new model in slot {slot} used up its starts without passing the health check (it crashed each time)"
    info = state.slots[slot]
    if info is None:  # install() sets both in one write; a hand-edited state.json could split them
        return _reject(disk, root, state, slot), f"slot {slot} is pending but records no release"
    state = _save(disk, root, replace(state, tries_left=state.tries_left - 1))
    try:
        health(slot_dir(root, slot), info)
    except EdgeSLMError as e:
        return _reject(disk, root, state, slot), str(e)
    committed = replace(state, active=slot, pending=None, tries_left=0, counter=max(state.counter, info.release))
    return _save(disk, root, committed), None
