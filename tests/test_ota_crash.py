"""Crash consistency: power cuts at every file-system operation, disk full (injected and real), SIGKILLed updaters.

The long loops live in benchmarks/ota_crash.py (results in benchmarks/results/ota_crash.json); these run the same
code with small counts.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

from conftest import OtaWorld, write_tiny_bundle
from edgeslm.errors import UpdateError
from edgeslm.ota import slots
from edgeslm.ota.config import UpdaterConfig
from edgeslm.ota.disk import OsDisk
from edgeslm.ota.simdisk import PowerCut, SimDisk, crash_matrix
from edgeslm.secure.signing import generate_keypair, load_public_key, sign_bundle

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "ota_crash.py"


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, list[bytes]]:
    tmp = tmp_path_factory.mktemp("releases")
    key, pub = generate_keypair(tmp / "k")
    out = []
    for i in (1, 2):
        b = write_tiny_bundle(tmp / f"b{i}", release=i)
        sign_bundle(b, key)
        out.append({p.name: p.read_bytes() for p in b.iterdir()})
    return out[0], out[1], [load_public_key(pub)]


@pytest.mark.parametrize("healthy", [True, False], ids=["commit", "rollback"])
def test_power_cut_at_every_operation_leaves_old_or_new(releases: tuple, healthy: bool) -> None:
    old, new, trusted = releases
    report = crash_matrix(old, new, trusted, new_is_healthy=healthy, random_subsets=4)
    assert report.operations >= 20 and report.crash_points == report.operations + 1
    assert report.states > 5 * report.crash_points
    assert report.broken == 0, report.examples


def test_the_harness_finds_the_bugs_of_an_install_without_fsync(releases: tuple) -> None:
    old, new, trusted = releases
    report = crash_matrix(old, new, trusted, honour_sync=False, random_subsets=1)
    assert report.broken > 0  # same install, fsyncs ignored: states with an empty state.json or half a slot
    assert any("state.json" in e or "slots/" in e for e in report.examples)


def test_simdisk_models_unsynced_writes() -> None:
    disk = SimDisk()
    disk.mkdir(Path("/d"))
    disk.fsync_dir(Path("/"))
    disk.write(Path("/d/f"), b"hello")
    assert disk.read(Path("/d/f")) == b"hello"
    assert disk.reboot().listdir(Path("/d")) == []  # neither data nor name synced
    assert disk.reboot(keep=(0,)).read(Path("/d/f")) == b""  # the name survived, the data did not
    disk.fsync(Path("/d/f"))
    disk.fsync_dir(Path("/d"))
    assert disk.reboot().read(Path("/d/f")) == b"hello"
    disk.write(Path("/d/f"), b"HELLO!")
    assert disk.reboot(keep=(0,), torn=0).read(Path("/d/f")) == b"HEL"
    cut = SimDisk(crash_after=1)
    cut.mkdir(Path("/x"))
    with pytest.raises(PowerCut):
        cut.fsync_dir(Path("/"))


class _FullDisk(OsDisk):
    """The real disk, except that the ``fail_at``-th write raises ENOSPC (SQLite's ioerr test, in Python)."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.writes = fail_at, 0

    def write(self, path: Path, data: bytes) -> None:
        self.writes += 1
        if self.writes == self.fail_at:
            Path(path).write_bytes(data[: len(data) // 2])  # half of it landed before the disk filled up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        super().write(path, data)


def _assert_clean(ota: OtaWorld, release: int) -> None:
    state = slots.load_state(OsDisk(), ota.device)
    assert state.pending is None and ota.serving_release() == release
    spare = "b" if state.active == "a" else "a"
    assert state.slots[spare] is None or state.slots[spare].release < release  # type: ignore[union-attr]
    if state.slots[spare] is None:
        assert not any((ota.device / "slots" / spare).glob("*")), "garbage left in the spare slot"
    assert not (ota.device / "staging").exists()
    assert not list(ota.device.glob(".*.tmp"))


def test_disk_full_at_every_write_of_an_install(ota: OtaWorld) -> None:
    ota.publish()
    ota.update()
    ota.publish(delta=False)
    fail_at = 1
    while True:
        disk = _FullDisk(fail_at)
        try:
            result = ota.update(disk=disk)
        except UpdateError as e:
            assert "No space left on device" in str(e) and "keeps serving" in str(e)
            _assert_clean(ota, 1)
            fail_at += 1
            continue
        assert result.status == "installed"  # type: ignore[attr-defined]
        break
    assert fail_at > 4  # every bundle file and the state file were each hit once
    assert ota.serving_release() == 2


def _listing(device: Path) -> dict[str, int]:
    """Every file of a device folder with its size; TUF metadata and the clock floor only by name (they move)."""
    return {
        str(p.relative_to(device)): 0 if p.parts[-2] == "tuf" or p.name == "clock.json" else p.stat().st_size
        for p in device.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Path:
    """A 1.5 MiB tmpfs: room for one installed release, not two plus a download."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("check_space", [True, False], ids=["preflight", "real-ENOSPC"])
def test_real_disk_full(ota: OtaWorld, small_tmpfs: Path, check_space: bool) -> None:
    ota.device = small_tmpfs / "device"
    ota.publish()
    ota.update()
    before = _listing(ota.device)
    ota.publish(ota.bundle(padding="x" * 700_000), delta=False)  # a bigger release: it cannot fit
    with pytest.raises(UpdateError, match="not enough free space|No space left on device") as e:
        ota.update(config=UpdaterConfig(check_space=check_space))
    assert ("not enough free space" in str(e.value)) == check_space
    _assert_clean(ota, 1)
    assert _listing(ota.device) == before  # no garbage left: the same files (slots byte-identical)
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_tmpfs)], check=True)  # space freed
    assert ota.update().status == "installed"  # type: ignore[attr-defined]


def test_sigkilled_updaters_never_break_the_device(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("ota_crash_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.sigkill_loop(2, seed=1, work=tmp_path)
    assert result["broken_states"] == 0, result["broken_examples"]
    assert sum(result["found_after_kill"].values()) == 2
