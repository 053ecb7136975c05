"""The attack suite: every attack is refused and the previous model keeps serving.

Each test installs release 1, mounts one attack on what the repository serves (or on the signed metadata, with
the keys the attacker is assumed to hold), runs the real updater against it, and checks the refusal and that the
device still serves release 1, verified with the trusted key.
"""

from __future__ import annotations

import datetime as dt
import gzip
import http.server
import io
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import OtaWorld
from edgeslm.errors import UpdateError
from edgeslm.ota.config import UpdaterConfig
from edgeslm.ota.packing import pack
from edgeslm.ota.updater import UpdateResult


@pytest.fixture
def v1(ota: OtaWorld) -> OtaWorld:
    ota.publish()
    ota.update()
    assert ota.serving_release() == 1
    return ota


def _refused(ota: OtaWorld, match: str, **kw: object) -> None:
    with pytest.raises(UpdateError, match=match) as e:
        ota.update(**kw)
    print(f"refused: {e.value}")
    assert ota.serving_release() == 1


def _metadata_copy(ota: OtaWorld, to: Path) -> Path:
    shutil.copytree(ota.repo.metadata, to)
    return to


def _add_target(ota: OtaWorld, path: str, data: bytes, custom: dict) -> None:
    """Sign a target with the repository's own targets key: what an attacker holding that key (or a publisher's
    mistake) could do."""
    from tuf.api.metadata import TargetFile

    from edgeslm.ota.repository import release_path

    info = TargetFile.from_data(path, data)
    info.unrecognized_fields["custom"] = custom
    ota.repo._target_file(info).parent.mkdir(parents=True, exist_ok=True)
    ota.repo._target_file(info).write_bytes(data)
    targets = ota.repo._load("targets")
    targets.signed.targets[info.path] = info
    if path != release_path("stable"):
        targets.signed.targets.pop(release_path("stable"), None)
        targets.signed.targets[release_path("stable")] = ota.repo.release("stable")
    ota.repo._commit_targets(targets)


def _custom(release: int = 2, **more: object) -> dict:
    golden = [{"text": "x", "label": "neg"}]
    return {"release_counter": release, "device_classes": ["pixel-7"], "golden": golden, **more}


# ---- rollback, freeze, mix-and-match: the metadata -----------------------------------------------------------------
def test_rollback_to_older_metadata(v1: OtaWorld, tmp_path: Path) -> None:
    old = _metadata_copy(v1, tmp_path / "old")
    v1.publish()
    v1.update()
    shutil.copy(old / "timestamp.json", v1.repo.metadata / "timestamp.json")  # replay yesterday's timestamp
    with pytest.raises(UpdateError, match="older than what this device has seen"):
        v1.update()
    assert v1.serving_release() == 2


def test_rollback_after_metadata_loss_is_caught_by_the_release_counter(v1: OtaWorld, tmp_path: Path) -> None:
    old = _metadata_copy(v1, tmp_path / "old")
    v1.publish()
    v1.update()
    for name in ("timestamp.json", "snapshot.json", "targets.json"):  # TUF's rollback memory is gone
        (v1.device / "tuf" / name).unlink()
    shutil.rmtree(v1.repo.metadata)
    shutil.copytree(old, v1.repo.metadata)  # ... and an attacker replays the complete, unexpired release-1 view
    with pytest.raises(UpdateError, match="counter 1 is below this device's installed counter 2"):
        v1.update()
    assert v1.serving_release() == 2


def test_freeze_expired_timestamp(v1: OtaWorld) -> None:
    v1.repo.refresh(timestamp_expires=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    _refused(v1, "expired")


def test_freeze_with_the_device_clock_set_back_is_caught_by_the_time_floor(
    v1: OtaWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1.repo.refresh(timestamp_expires=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    stale = _metadata_copy(v1, tmp_path / "stale")  # a validly signed view that expired an hour ago
    v1.repo.refresh()
    v1.update()  # the device saw a fresh timestamp: its trusted time floor is now
    shutil.rmtree(v1.repo.metadata)
    shutil.copytree(stale, v1.repo.metadata)
    for name in ("timestamp.json", "snapshot.json", "targets.json"):
        (v1.device / "tuf" / name).unlink()

    import tuf.ngclient._internal.trusted_metadata_set as tms

    class _1970(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> _1970:
            return cls(1970, 1, 1, tzinfo=tz)

    fake = type("datetime_module", (), {"datetime": _1970, "timezone": dt.timezone})
    monkeypatch.setattr(tms, "datetime", fake)  # the device booted without a real-time clock
    _refused(v1, "expired")
    (v1.device / "clock.json").unlink()  # without the floor, python-tuf alone accepts the stale view
    assert v1.update().status == "up-to-date"  # type: ignore[attr-defined]


def test_mix_and_match_targets_from_another_snapshot(v1: OtaWorld) -> None:
    v1.publish(delta=False)
    current = v1.repo._load("snapshot").signed.meta["targets.json"].version
    older = (v1.repo.metadata / f"{current - 1}.targets.json").read_bytes()
    (v1.repo.metadata / f"{current}.targets.json").write_bytes(older)  # valid, signed, but not this snapshot's
    _refused(v1, "older than what this device has seen|refused")


# ---- the targets ---------------------------------------------------------------------------------------------------
def _release_file(ota: OtaWorld) -> Path:
    return ota.repo._target_file(ota.repo.release("stable"))


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "append (endless data)"])
def test_arbitrary_target(v1: OtaWorld, damage: str) -> None:
    v1.publish(delta=False)
    path = _release_file(v1)
    data = bytearray(path.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 1
    elif damage == "truncate":
        data = data[:-100]
    else:
        data += b"\0" * 1_000_000
    path.write_bytes(bytes(data))
    _refused(v1, "signed hash or length|more data than the signed length")


def test_endless_metadata(v1: OtaWorld) -> None:
    (v1.repo.metadata / "timestamp.json").write_bytes(b" " * 100_000)  # over the 16 KiB timestamp bound
    _refused(v1, "endless data")


class _Dripper(http.server.SimpleHTTPRequestHandler):
    """Serves metadata normally and bundle tars one small piece at a time (a slow-retrieval attack)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if not self.path.endswith(".tar"):
            return super().do_GET()
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for i in range(0, len(data), 64):
                self.wfile.write(data[i : i + 64])
                self.wfile.flush()
                time.sleep(0.05)  # ~1.3 KB/s: never silent long enough for a gap time-out
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def dripping(v1: OtaWorld) -> Iterator[str]:
    import functools

    handler = functools.partial(_Dripper, directory=str(v1.public))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("bound", "config"),
    [
        ("deadline", UpdaterConfig(deadline_s=1.0, min_rate_bps=0)),
        ("minimum rate", UpdaterConfig(min_rate_bps=50_000, rate_grace_s=0.5)),
    ],
)
def test_slow_retrieval(v1: OtaWorld, dripping: str, bound: str, config: UpdaterConfig) -> None:
    v1.publish(delta=False)
    started = time.monotonic()
    _refused(v1, "too slow", url=dripping, config=config)
    assert time.monotonic() - started < 5  # the gap time-out alone (30 s) would never fire


# ---- keys and thresholds -------------------------------------------------------------------------------------------
def test_root_signed_below_threshold(v1: OtaWorld) -> None:
    from tuf.api.serialization.json import JSONSerializer

    from edgeslm.ota.repository import _load_keys

    root = v1.repo._load("root")
    root.signed.version += 1
    root.signed.roles["timestamp"].threshold = 1
    one_root_key = [s for s in _load_keys(v1.repo.keys) if s.public_key.keyid in root.signed.roles["root"].keyids]
    v1.repo._sign(root, one_root_key[:1])  # one stolen root key; the threshold is 2
    (v1.repo.metadata / "2.root.json").write_bytes(root.to_bytes(JSONSerializer()))
    _refused(v1, "not signed by enough trusted keys")


def test_compromised_timestamp_key_alone(v1: OtaWorld) -> None:
    from tuf.api.metadata import MetaFile
    from tuf.api.serialization.json import JSONSerializer

    from edgeslm.ota.repository import _load_keys

    timestamp_key = next(
        s
        for s in _load_keys(v1.repo.keys)
        if s.public_key.keyid.startswith(v1.repo._load("root").signed.roles["timestamp"].keyids[0][:12])
    )
    snapshot = v1.repo._load("snapshot")
    snapshot.signed.version += 1  # a forged snapshot, signed with the only key the attacker has
    v1.repo._sign(snapshot, [timestamp_key])
    (v1.repo.metadata / f"{snapshot.signed.version}.snapshot.json").write_bytes(snapshot.to_bytes(JSONSerializer()))
    timestamp = v1.repo._load("timestamp")
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
    v1.repo._sign(timestamp, [timestamp_key])
    (v1.repo.metadata / "timestamp.json").write_bytes(timestamp.to_bytes(JSONSerializer()))
    _refused(v1, "not signed by enough trusted keys")


# ---- release policy, deltas, bundles -------------------------------------------------------------------------------
def test_wrong_device_class(v1: OtaWorld) -> None:
    v1.publish(device_classes=["rpi5"])
    _refused(v1, "built for device classes")


def test_lower_release_counter_signed_by_the_targets_key(v1: OtaWorld) -> None:
    files = {p.name: p.read_bytes() for p in v1.bundle().iterdir()}
    from edgeslm.ota.repository import release_path

    _add_target(v1, release_path("stable"), pack(files), _custom(release=0))
    _refused(v1, "below this device's installed counter")


def test_delta_against_the_wrong_base_falls_back_to_the_full_bundle(v1: OtaWorld) -> None:
    from edgeslm.ota.delta import make_delta
    from edgeslm.ota.repository import delta_path

    base_sha = v1.repo.release("stable").hashes["sha256"]
    published = v1.publish(delta=False)
    new_tar = _release_file(v1).read_bytes()
    other_base = pack({p.name: p.read_bytes() for p in v1.bundle().iterdir()})
    patch = make_delta(other_base, new_tar)  # made from another base, but labelled with the device's base
    custom = {
        "release_counter": 2,
        "base_sha256": base_sha,
        "result_sha256": published.sha256,  # type: ignore[attr-defined]
        "result_length": len(new_tar),
    }
    _add_target(v1, delta_path("stable", base_sha), patch, custom)
    result = v1.update()
    assert isinstance(result, UpdateResult)
    assert result.status == "installed" and not result.delta and "delta not used" in result.message
    assert v1.serving_release() == 2


def test_delta_whose_result_is_not_the_release_falls_back(v1: OtaWorld) -> None:
    from edgeslm.ota.delta import make_delta
    from edgeslm.ota.repository import delta_path

    base_sha = v1.repo.release("stable").hashes["sha256"]
    base_tar = _release_file(v1).read_bytes()
    v1.publish(delta=False)
    evil = pack({p.name: p.read_bytes() for p in v1.bundle().iterdir()})
    custom = {"release_counter": 2, "base_sha256": base_sha, "result_sha256": "0" * 64, "result_length": len(evil)}
    _add_target(v1, delta_path("stable", base_sha), make_delta(base_tar, evil), custom)
    result = v1.update()
    assert isinstance(result, UpdateResult) and not result.delta and "mix-and-match" in result.message
    assert v1.serving_release() == 2


def _evil_tar(kind: str, files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo({"dotdot": "../../evil", "absolute": "/etc/evil", "symlink": "model.onnx2"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "bomb"])
def test_malicious_archives(v1: OtaWorld, kind: str) -> None:
    from edgeslm.ota.repository import release_path

    files = {p.name: p.read_bytes() for p in v1.bundle().iterdir()}
    if kind == "bomb":  # 256 MiB of zeros in a ~250 KB gzip, against a 64 MiB bound
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
            info = tarfile.TarInfo("model.onnx")
            info.size = 256 << 20
            tar.addfile(info, io.BytesIO(bytes(256 << 20)))
        data = buf.getvalue()
    else:
        data = _evil_tar(kind, files)
    _add_target(v1, release_path("stable"), data, _custom())
    _refused(
        v1,
        {
            "dotdot": "not a plain file name",
            "absolute": "not a plain file name",
            "symlink": "symlink",
            "bomb": "decompression bomb",
        }[kind],
        config=UpdaterConfig(max_bundle_bytes=64 << 20),
    )
    assert not list(v1.tmp.glob("evil")) and not (v1.device.parent / "evil").exists()


def test_unsigned_bundle(v1: OtaWorld) -> None:
    from edgeslm.ota.repository import release_path

    files = {p.name: p.read_bytes() for p in v1.bundle().iterdir() if p.name != "manifest.sig"}
    _add_target(v1, release_path("stable"), pack(files), _custom())
    _refused(v1, "not signed")


def test_bundle_signed_by_an_untrusted_key(v1: OtaWorld) -> None:
    from edgeslm.secure.signing import generate_keypair

    rogue, _ = generate_keypair(v1.tmp / "rogue")
    v1.publish(v1.bundle(key=rogue))  # the repository signs it (TUF is happy); the device's bundle key is not
    _refused(v1, "does not verify against any trusted key")
