"""The device updater: python-tuf's ``Updater`` for trust, our policy on top, A/B slots for the install.

One run, under a lock: finish any install a crash interrupted (``slots.boot``) -> refresh TUF metadata (bootstrap
root shipped read-only, every metadata write fsynced, reference time never below the trusted time floor) -> read
the channel's release and check its policy (device class, release counter >= the durable counter, runtime
version, not a release that already failed) -> fetch a delta when the device holds its base, else the full tar
-> unpack with bounds -> verify the bundle signature against the device's trusted keys -> install into the
inactive slot -> health check with golden inputs -> commit, or roll back. Any refusal raises UpdateError and
leaves the active slot untouched.

What we add to python-tuf, and why: it does not fsync its metadata (a power cut can erase its rollback memory,
shared/research/security_ota_fl.md §1.5), its reference time is the device clock (an RTC-less device boots in
1970), it has no wall-clock download bound (see fetcher.py), and it does not install anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._fs import fsync_dir, write_bytes, write_json
from ..bundle import RUNTIME_VERSION
from ..errors import BundleError, ConfigError, EdgeSLMError, UpdateError
from . import slots
from .config import UpdaterConfig
from .disk import Disk, OsDisk

__all__ = ["UpdateResult", "check_policy", "update"]

STAGING = "staging"
CLOCK = "clock.json"


@dataclass(frozen=True)
class UpdateResult:
    status: str  # "installed", "up-to-date" or "rolled-back"
    release: int  # the channel's release counter
    slot: str | None  # the active slot after the run
    delta: bool  # True when a delta (not the full bundle) was applied
    downloaded_bytes: int  # metadata + targets
    seconds: float  # wall time of the run
    message: str  # one line for people


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split("."))
    except ValueError:
        raise UpdateError(f"release names an unreadable minimum runtime version {text!r}; refusing it") from None


def check_policy(custom: Any, *, sha256: str, device_class: str, state: slots.State) -> int:
    """Apply the signed release policy to this device. Returns the release counter; raises UpdateError."""
    if not isinstance(custom, dict) or not isinstance(custom.get("release_counter"), int):
        raise UpdateError("the release carries no release counter in its signed metadata; refusing it")
    release = int(custom["release_counter"])
    classes = custom.get("device_classes")
    if not isinstance(classes, list) or device_class not in classes:
        raise UpdateError(
            f"the release is built for device classes {classes}, this device is `{device_class}`; refusing it"
        )
    if _version(custom.get("min_runtime_version", "0")) > _version(RUNTIME_VERSION):
        raise UpdateError(
            f"the release needs runtime {custom['min_runtime_version']}, this device runs {RUNTIME_VERSION}; "
            "update the device software first"
        )
    if release < state.counter:
        raise UpdateError(
            f"the release counter {release} is below this device's installed counter {state.counter} "
            "(a rollback attack or a mis-published release); refusing it"
        )
    if sha256 in state.rejected:
        raise UpdateError(f"release {release} failed its health check on this device before; waiting for a newer one")
    if release == state.counter and not _holds(state, sha256):
        raise UpdateError(
            f"the release reuses counter {release} for a different bundle than the one installed; refusing it"
        )
    return release


def _holds(state: slots.State, sha256: str) -> bool:
    info = state.slots[state.active] if state.active else None
    return info is not None and info.sha256 == sha256


@contextlib.contextmanager
def _lock(device_dir: Path, wait_s: float) -> Iterator[None]:
    """One updater per device folder (python-tuf's Updater is single-instance). The kernel drops the lock when
    its holder dies, so a killed updater never wedges the next one."""
    fd = os.open(device_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise UpdateError(
                        f"another updater is running on `{device_dir}`; wait for it to finish (or pass a longer "
                        "--lock-wait)"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def _tuf_updater(device_dir: Path, repo_url: str, bootstrap: bytes, fetcher: Any, floor: datetime | None) -> Any:
    from tuf.ngclient import Updater

    class DurableUpdater(Updater):
        """python-tuf's Updater with durable metadata writes and an atomic root.json link."""

        def _persist_file(self, filename: str, data: bytes) -> None:
            write_bytes(Path(filename), data)  # temp -> fsync -> rename -> fsync(dir)

        def _update_root_symlink(self) -> None:
            link = Path(self._dir) / "root.json"
            tmp = link.with_name(".root.json.link")
            tmp.unlink(missing_ok=True)
            os.symlink(os.path.join("root_history", f"{self._trusted_set.root.version}.root.json"), tmp)
            os.replace(tmp, link)  # python-tuf removes then links: a crash between leaves no root.json
            fsync_dir(link.parent)

    base = repo_url.rstrip("/")
    updater = DurableUpdater(
        str(device_dir / "tuf"), f"{base}/metadata/", None, f"{base}/targets/", fetcher, bootstrap=bootstrap
    )
    if floor is not None:
        trusted = updater._trusted_set  # python-tuf exposes no setting for the time it checks expiry against
        trusted.reference_time = max(trusted.reference_time, floor)
    return updater


def _read_floor(device_dir: Path) -> datetime | None:
    import json

    try:
        return datetime.fromisoformat(json.loads((device_dir / CLOCK).read_text())["floor"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def _raise_update_error(e: Exception) -> None:
    from tuf.api import exceptions as tex

    kinds: list[tuple[type[Exception], str]] = [
        (
            tex.ExpiredMetadataError,
            "the repository's metadata has expired (a freeze attack, or the repository "
            "is not being refreshed; check the device clock too)",
        ),
        (
            tex.BadVersionNumberError,
            "the repository offered metadata older than what this device has seen (a rollback attack)",
        ),
        (
            tex.UnsignedMetadataError,
            "metadata is not signed by enough trusted keys (a forged or partly signed metadata file)",
        ),
        (
            tex.LengthOrHashMismatchError,
            "a download does not match its signed hash or length (tampered data or mixed-and-matched metadata)",
        ),
        (tex.DownloadLengthMismatchError, "the server sent more data than the signed length allows (endless data)"),
        (tex.SlowRetrievalError, "the download was too slow (slow retrieval)"),
        (tex.DownloadHTTPError, "the repository answered with an HTTP error"),
        (tex.DownloadError, "the download failed"),
        (tex.RepositoryError, "the repository's metadata was refused"),
    ]
    for kind, what in kinds:
        if isinstance(e, kind):
            raise UpdateError(f"update refused: {what} ({e}); the installed model keeps serving") from e
    raise e


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _need_space(device_dir: Path, need: int, what: str, config: UpdaterConfig) -> None:
    if config.check_space and _free_bytes(device_dir) < need:
        raise UpdateError(
            f"not enough free space for {what}: need {need} bytes, {_free_bytes(device_dir)} free on "
            f"`{device_dir}`; free some space; the installed model keeps serving"
        )


def _fetch_bundle(
    updater: Any, info: Any, channel: str, state: slots.State, disk: Disk, device_dir: Path, config: UpdaterConfig
) -> tuple[bytes, bool, str]:
    """The release tar: through a delta when the device holds its base, else in full. Returns (tar, delta?, note)."""
    from .delta import apply_delta
    from .packing import pack
    from .repository import delta_path

    staging = device_dir / STAGING
    note = ""
    active = state.slots[state.active] if state.active else None
    if active is not None:
        dinfo = updater.get_targetinfo(delta_path(channel, active.sha256))
        if dinfo is not None:
            try:
                custom = dinfo.custom or {}
                if custom.get("result_sha256") != info.hashes["sha256"] or custom.get("result_length") != info.length:
                    raise UpdateError("the delta's signed result is not the release's bundle (mix-and-match)")
                folder = slots.slot_dir(device_dir, state.active or "")
                base = pack({name: disk.read(folder / name) for name in disk.listdir(folder)})
                patch = Path(updater.download_target(dinfo, str(staging / "delta"))).read_bytes()
                tar = apply_delta(
                    base,
                    patch,
                    base_sha256=str(custom.get("base_sha256")),
                    result_sha256=info.hashes["sha256"],
                    result_length=info.length,
                )
                return tar, True, ""
            except (EdgeSLMError, OSError) as e:
                note = f"delta not used ({e}); "
            except Exception as e:  # tuf's download errors: fall back to the full bundle, which re-raises them
                note = f"delta not used ({type(e).__name__}: {e}); "
    _need_space(device_dir, info.length, "the download", config)
    return Path(updater.download_target(info, str(staging / "bundle.tar"))).read_bytes(), False, note


def _refresh(updater: Any, device_dir: Path) -> None:
    """TUF refresh, then raise the trusted time floor to the signed issue time of the timestamp just accepted."""
    from .repository import ISSUED_FIELD

    updater.refresh()
    issued = updater._trusted_set.timestamp.unrecognized_fields.get(ISSUED_FIELD)
    if isinstance(issued, str):
        floor = max(filter(None, [_read_floor(device_dir), datetime.fromisoformat(issued)]))
        write_json(device_dir / CLOCK, {"floor": floor.astimezone(UTC).isoformat()})


def _download(
    device_dir: Path, repo_url: str, bootstrap: bytes, fetcher: Any, request: _Request, state: slots.State
) -> tuple[int, str, tuple[tuple[str, str], ...], bytes | None, bool, str]:
    """Metadata, policy and the bytes of the release: (release, sha256, golden, tar or None if installed, delta?,
    note). Every python-tuf error becomes an UpdateError that names the attack it stopped."""
    from .health import golden_pairs
    from .repository import release_path

    try:
        updater = _tuf_updater(device_dir, repo_url, bootstrap, fetcher, _read_floor(device_dir))
        _refresh(updater, device_dir)
        info = updater.get_targetinfo(release_path(request.channel))
        if info is None:
            raise UpdateError(f"the repository has no release on channel `{request.channel}`; publish one first")
        sha = info.hashes["sha256"]
        release = check_policy(info.custom, sha256=sha, device_class=request.device_class, state=state)
        if _holds(state, sha):
            return release, sha, (), None, False, ""
        golden = tuple(golden_pairs(info.custom.get("golden", [])))
        tar, used_delta, note = _fetch_bundle(
            updater, info, request.channel, state, request.disk, device_dir, request.config
        )
        return release, sha, golden, tar, used_delta, note
    except (UpdateError, OSError):
        raise
    except Exception as e:
        _raise_update_error(e)
        raise  # unreachable: _raise_update_error always raises


@dataclass(frozen=True)
class _Request:
    device_class: str
    channel: str
    config: UpdaterConfig
    disk: Disk


def update(
    device_dir: Path,
    repo_url: str,
    *,
    bootstrap_root: bytes,
    trusted_keys: Sequence[bytes],
    device_class: str,
    channel: str = "stable",
    config: UpdaterConfig | None = None,
    disk: Disk | None = None,
) -> UpdateResult:
    """Run one update of ``device_dir`` from the repository at ``repo_url``.

    Raises:
        UpdateError: the update was refused or failed; the active slot still serves (the message says why).
        ConfigError: a bad argument (no trusted keys, unreadable bootstrap root).
    """
    from .fetcher import DeadlineFetcher
    from .health import check_golden, verify_files
    from .packing import unpack

    if not trusted_keys:
        raise ConfigError("the updater needs at least one trusted bundle key (--trusted KEY.pub)")
    request = _Request(device_class, channel, config or UpdaterConfig(), disk or OsDisk())
    device_dir = Path(device_dir)
    device_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    fetcher = DeadlineFetcher(request.config, device_dir / STAGING)

    def health(folder: Path, info: slots.SlotInfo) -> None:
        check_golden(folder, trusted_keys, info.golden)

    def result(status: str, release: int, slot: str | None, delta: bool, message: str) -> UpdateResult:
        return UpdateResult(status, release, slot, delta, fetcher.received, time.monotonic() - started, message)

    with _lock(device_dir, request.config.lock_wait_s):
        try:
            shutil.rmtree(device_dir / STAGING, ignore_errors=True)
            state, _ = slots.boot(request.disk, device_dir, health)  # finish what a crash interrupted
            release, sha, golden, tar, used_delta, note = _download(
                device_dir, repo_url, bootstrap_root, fetcher, request, state
            )
            if tar is None:
                return result("up-to-date", release, state.active, False, f"release {release} is already installed")
            try:
                files = unpack(tar, max_bytes=request.config.max_bundle_bytes)
                verify_files(files, trusted_keys)
            except BundleError as e:
                raise UpdateError(f"update refused: {e}; the installed model keeps serving") from e
            _need_space(device_dir, sum(len(b) for b in files.values()) + (1 << 16), "the install", request.config)
            info = slots.SlotInfo(release, sha, golden)
            slot = slots.install(request.disk, device_dir, files, info, tries=request.config.boot_tries)
        except OSError as e:
            raise UpdateError(
                f"update failed writing to `{device_dir}` ({e.strerror or e}); nothing was switched, the "
                "installed model keeps serving"
            ) from e
        finally:
            shutil.rmtree(device_dir / STAGING, ignore_errors=True)
        try:
            state, rollback_reason = slots.boot(request.disk, device_dir, health)
        except OSError as e:  # the start or the commit could not be written: go back to the old slot
            with contextlib.suppress(OSError):
                slots.abandon(request.disk, device_dir)
            raise UpdateError(
                f"update failed writing to `{device_dir}` ({e.strerror or e}) while switching; the installed "
                "model keeps serving"
            ) from e
        if rollback_reason is not None:
            return result(
                "rolled-back",
                release,
                state.active,
                used_delta,
                f"{note}release {release} rolled back: {rollback_reason}",
            )
        how = "delta" if used_delta else "full bundle"
        return result(
            "installed", release, slot, used_delta, f"{note}installed release {release} into slot {slot} ({how})"
        )
