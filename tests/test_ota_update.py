"""The update path end to end: real TUF metadata over real HTTP on 127.0.0.1, real bundles, real onnxruntime."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import OtaWorld
from edgeslm.cli import app
from edgeslm.errors import ConfigError, UpdateError
from edgeslm.ota import slots
from edgeslm.ota.config import UpdaterConfig
from edgeslm.ota.disk import OsDisk
from edgeslm.ota.updater import UpdateResult

runner = CliRunner()


def test_first_install_then_up_to_date(ota: OtaWorld) -> None:
    ota.publish()
    first = ota.update()
    assert isinstance(first, UpdateResult)
    assert (first.status, first.release, first.slot, first.delta) == ("installed", 1, "a", False)
    assert ota.serving_release() == 1
    again = ota.update()
    assert isinstance(again, UpdateResult) and again.status == "up-to-date" and again.downloaded_bytes < 4096
    # TUF's metadata is on disk (fsynced by our Updater subclass) and root.json is a link to the trusted root.
    tuf_dir = ota.device / "tuf"
    assert {"timestamp.json", "snapshot.json", "targets.json"} <= set(os.listdir(tuf_dir))
    assert os.readlink(tuf_dir / "root.json") == "root_history/1.root.json"
    assert not (ota.device / "staging").exists()


def test_second_release_arrives_as_a_delta_into_the_other_slot(ota: OtaWorld) -> None:
    ota.publish()
    ota.update()
    published = ota.publish()
    assert published.delta_length is not None and published.delta_length < published.length // 20  # type: ignore[attr-defined]
    result = ota.update()
    assert isinstance(result, UpdateResult)
    assert (result.status, result.release, result.slot, result.delta) == ("installed", 2, "b", True)
    assert result.downloaded_bytes < published.length // 5  # type: ignore[attr-defined]
    state = slots.load_state(OsDisk(), ota.device)
    assert (state.active, state.counter, state.pending) == ("b", 2, None)
    assert state.slots["a"] is not None and state.slots["a"].release == 1  # the previous release stays as fallback
    assert ota.serving_release() == 2


def test_a_device_two_releases_behind_gets_the_full_bundle(ota: OtaWorld) -> None:
    ota.publish()
    ota.update()
    ota.publish()
    ota.publish()  # the only delta now is from release 2
    result = ota.update()
    assert isinstance(result, UpdateResult) and (result.release, result.delta) == (3, False)
    assert ota.serving_release() == 3


def test_failed_health_check_rolls_back_and_is_not_retried(ota: OtaWorld) -> None:
    ota.publish()
    ota.update()
    # The release's golden inputs expect "pos", but the model answers "neg": installed, checked, rolled back.
    ota.publish(golden=[("a gripping film", "pos")])
    result = ota.update()
    assert isinstance(result, UpdateResult)
    assert result.status == "rolled-back" and "health check failed" in result.message
    state = slots.load_state(OsDisk(), ota.device)
    assert (state.active, state.counter, state.pending, state.slots["b"]) == ("a", 1, None, None)
    assert os.listdir(ota.device / "slots" / "b") == []  # the rejected slot's files are gone
    assert ota.serving_release() == 1
    with pytest.raises(UpdateError, match="failed its health check on this device before"):
        ota.update()
    ota.publish(ota.bundle((-1.0, 1.0)))  # a fixed release (answers "pos" now) goes through
    assert ota.update().status == "installed"  # type: ignore[attr-defined]
    assert ota.serving_release() == 3


def test_a_slot_that_crashes_on_every_start_is_abandoned(ota: OtaWorld, tmp_path: Path) -> None:
    ota.publish()
    ota.update()
    disk, files = OsDisk(), {p.name: p.read_bytes() for p in ota.bundle().iterdir()}
    slots.install(disk, ota.device, files, slots.SlotInfo(2, "f" * 64), tries=3)

    def crash(folder: Path, info: slots.SlotInfo) -> None:
        raise KeyboardInterrupt  # stands in for a SIGKILL during the start: nothing after it runs

    for tries_left in (2, 1, 0):
        with pytest.raises(KeyboardInterrupt):
            slots.boot(disk, ota.device, crash)
        assert slots.load_state(disk, ota.device).tries_left == tries_left  # decremented before the start
    state, reason = slots.boot(disk, ota.device, crash)
    assert reason is not None and "used up its starts" in reason
    assert (state.active, state.pending, state.counter) == ("a", None, 1)
    assert ota.serving_release() == 1


def test_policy_fields_are_enforced(ota: OtaWorld) -> None:
    ota.publish(device_classes=["rpi5"])
    with pytest.raises(UpdateError, match="built for device classes \\['rpi5'\\], this device is `pixel-7`"):
        ota.update()
    with pytest.raises(UpdateError, match="no release on channel `beta`"):
        ota.update(channel="beta")
    with pytest.raises(ConfigError, match="at least one trusted bundle key"):
        ota.update(trusted_keys=[])
    with pytest.raises(ConfigError, match="not above the channel's current 1"):
        ota.publish(release=1)


def test_two_updaters_at_once_one_fails_cleanly_or_waits(ota: OtaWorld) -> None:
    ota.publish()
    ota.device.mkdir()
    fd = os.open(ota.device / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another updater holds the device
    try:
        with pytest.raises(UpdateError, match="another updater is running"):
            ota.update()
        threading.Timer(0.3, os.close, [fd]).start()  # ... and finishes 0.3 s later
        started = time.monotonic()
        result = ota.update(config=UpdaterConfig(lock_wait_s=10))
        assert isinstance(result, UpdateResult) and result.status == "installed"
        assert time.monotonic() - started >= 0.25
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def test_key_rotation_is_followed_by_devices(ota: OtaWorld) -> None:
    ota.publish()
    ota.update()
    for role in ("timestamp", "snapshot", "targets", "root"):
        ota.repo.rotate(role)
    assert len(list((ota.repo.keys / "retired").glob("*.pem"))) == 4
    ota.publish()
    result = ota.update()
    assert isinstance(result, UpdateResult) and result.release == 2
    # The device walked the root chain from its read-only bootstrap root (v1) to the newest.
    assert os.readlink(ota.device / "tuf" / "root.json") == "root_history/5.root.json"


def test_cli_round_trip(tmp_path: Path) -> None:
    from conftest import write_tiny_bundle
    from edgeslm.ota.server import serving

    key, repo, device = tmp_path / "k", tmp_path / "repo", tmp_path / "device"
    bundle = write_tiny_bundle(tmp_path / "bundle")
    for args in (["keygen", "--out", str(key)], ["sign", str(bundle), "--key", str(key)], ["ota", "init", str(repo)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["ota", "publish", str(repo), str(bundle), "--device-class", "pixel-7"])
    assert result.exit_code == 0 and "published release 1" in result.output, result.output
    root = repo / "public" / "metadata" / "1.root.json"
    with serving(repo / "public") as url:
        args = ["ota", "update", "--repo", url, "--device-dir", str(device), "--root", str(root)]
        args += ["--trusted", f"{key}.pub", "--device-class", "pixel-7", "--json"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["status"] == "installed"
        result = runner.invoke(app, [*args[:-3], "--device-class", "rpi5"])
        assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output
    status = runner.invoke(app, ["ota", "status", "--device-dir", str(device)])
    assert json.loads(status.output)["active"] == "a"
    assert runner.invoke(app, ["ota", "refresh", str(repo)]).exit_code == 0
    result = runner.invoke(app, ["ota", "rotate", str(repo), "--role", "nobody"])
    assert result.exit_code == 1 and "role must be one of" in result.output


def test_serve_binds_loopback_and_never_serves_keys(tmp_path: Path) -> None:
    from edgeslm.ota.repository import Repository

    Repository.init(tmp_path / "repo")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "edgeslm"), "ota", "serve", str(tmp_path / "repo"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base, body = f"http://127.0.0.1:{port}", b"{}"
        for _ in range(100):
            try:
                body = urllib.request.urlopen(f"{base}/metadata/1.root.json", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        assert json.loads(body)["signed"]["_type"] == "root"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/../keys/", timeout=1)
        keys = [p.name for p in (tmp_path / "repo" / "keys").iterdir()]
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/keys/{keys[0]}", timeout=1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_tuf_metadata_is_fsynced_before_it_is_trusted(ota: OtaWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """python-tuf writes metadata with rename only; a power cut could erase its rollback memory. Ours fsyncs."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    ota.publish()
    synced.clear()
    ota.update()
    tuf_dir = str(ota.device / "tuf")
    files = {Path(p).name for p in synced if p.startswith(tuf_dir)}
    # Each metadata file is synced under its temp name before the rename, then its folder is synced.
    assert any(name.startswith(".timestamp.json.") for name in files), synced
    assert any(name.startswith(".snapshot.json.") for name in files)
    assert any(name.startswith(".targets.json.") for name in files)
    assert tuf_dir in synced and f"{tuf_dir}/root_history" in synced
    assert any(p.endswith(".state.json.tmp") for p in synced)  # and so is the slot pointer
