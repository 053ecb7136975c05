"""The update repository: python-tuf metadata over signed bundle tars, written as static files.

Layout (``serve`` exposes ``public/`` only; ``keys/`` never leaves the publisher)::

    REPO/keys/        Ed25519 private keys, PEM, 0600: root-*.pem (move these offline after `init`),
                      targets-*.pem, snapshot-*.pem, timestamp-*.pem (online roles); retired/ after rotation
    REPO/public/metadata/   1.root.json .. N.root.json, root.json, N.targets.json, N.snapshot.json, timestamp.json
    REPO/public/targets/<channel>/<sha256>.bundle.tar            the full bundle (consistent snapshot names)
    REPO/public/targets/<channel>/deltas/<sha256>.<base>.bsdiff  a patch from release base to the current one

A release is the target ``<channel>/bundle.tar``; its ``custom`` metadata carries the policy the device enforces:
``release_counter``, ``device_classes``, ``min_runtime_version``, ``golden`` (inputs and expected labels). A delta
is the target ``<channel>/deltas/<base sha256>.bsdiff`` with ``base_sha256``, ``result_sha256``, ``result_length``.
Every publish bumps targets -> snapshot -> timestamp and writes them in that order, so a client never sees a
timestamp that names metadata not yet on disk. The timestamp also carries ``x-edgeslm-issued`` (signed), which
devices use as a trusted time floor.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .._fs import write_bytes
from ..errors import BundleError, ConfigError
from .config import RepoConfig

__all__ = ["ISSUED_FIELD", "PublishResult", "Repository", "release_path"]

ROLES = ("root", "targets", "snapshot", "timestamp")
ISSUED_FIELD = "x-edgeslm-issued"  # signed issue time in timestamp.json: the device's trusted time floor
DEFAULT_GOLDEN = (
    "a gripping, beautifully acted film",
    "dull, predictable and far too long",
    "it was fine, nothing special",
)


def release_path(channel: str) -> str:
    return f"{channel}/bundle.tar"


def delta_path(channel: str, base_sha256: str) -> str:
    return f"{channel}/deltas/{base_sha256}.bsdiff"


@dataclass(frozen=True)
class PublishResult:
    path: str  # the release's target path
    release: int  # its release counter
    sha256: str  # hash of the bundle tar
    length: int  # bytes of the bundle tar
    delta_length: int | None  # bytes of the delta from the previous release, when one was written


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Repository:
    """A TUF repository on disk. ``Repository.init(path)`` creates one; ``Repository(path)`` opens it."""

    def __init__(self, path: Path, config: RepoConfig | None = None) -> None:
        self.path = Path(path)
        self.config = config or RepoConfig()
        if not (self.metadata / "root.json").is_file():
            raise ConfigError(f"`{path}` is not an update repository; create one with `edgeslm ota init {path}`")

    @property
    def metadata(self) -> Path:
        return self.path / "public" / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.path / "public" / "targets"

    @property
    def keys(self) -> Path:
        return self.path / "keys"

    # ---- creation -------------------------------------------------------------------------------------------
    @classmethod
    def init(cls, path: Path, config: RepoConfig | None = None) -> Repository:
        """Create keys and the first version of all four roles (root threshold 2 of 3 by default)."""
        from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp

        config = config or RepoConfig()
        path = Path(path)
        if (path / "public" / "metadata" / "root.json").exists():
            raise ConfigError(f"`{path}` already holds an update repository; pick another folder")
        root = Root(expires=_now() + timedelta(days=config.root_days), consistent_snapshot=True)
        for role in ROLES:
            for _ in range(config.root_keys if role == "root" else 1):
                root.add_key(_new_key(path / "keys", role).public_key, role)
        root.roles["root"].threshold = config.root_threshold
        (path / "public" / "targets").mkdir(parents=True, exist_ok=True)
        repo = cls.__new__(cls)
        repo.path, repo.config = path, config
        repo._write_root(Metadata(root))
        repo._write("targets", Metadata(Targets(expires=_now() + timedelta(days=config.targets_days))))
        snapshot = Snapshot(expires=_now() + timedelta(days=config.snapshot_days), meta={"targets.json": MetaFile(1)})
        repo._write("snapshot", Metadata(snapshot))
        timestamp = Timestamp(expires=_now() + timedelta(days=config.timestamp_days), snapshot_meta=MetaFile(1))
        timestamp.unrecognized_fields[ISSUED_FIELD] = _now().isoformat()
        repo._write("timestamp", Metadata(timestamp))
        return repo

    # ---- reading --------------------------------------------------------------------------------------------
    def _load(self, role: str) -> Any:
        from tuf.api.metadata import Metadata

        if role in ("root", "timestamp"):
            return Metadata.from_file(str(self.metadata / f"{role}.json"))
        if role == "snapshot":
            version = self._load("timestamp").signed.snapshot_meta.version
        else:
            version = self._load("snapshot").signed.meta["targets.json"].version
        return Metadata.from_file(str(self.metadata / f"{version}.{role}.json"))

    def release(self, channel: str) -> Any:
        """The current release ``TargetFile`` of a channel, or None."""
        return self._load("targets").signed.targets.get(release_path(channel))

    def _target_file(self, info: Any) -> Path:
        folder, _, name = info.path.rpartition("/")
        return self.targets_dir / folder / f"{info.hashes['sha256']}.{name}"

    # ---- signing and writing --------------------------------------------------------------------------------
    def _signers(self, role: str, root: Any) -> list[Any]:
        keyids = set(root.signed.roles[role].keyids)
        signers = [s for s in _load_keys(self.keys) if s.public_key.keyid in keyids]
        if len(signers) < root.signed.roles[role].threshold:
            raise ConfigError(
                f"only {len(signers)} of the {root.signed.roles[role].threshold} `{role}` keys needed are in "
                f"{self.keys}; bring the offline keys back to sign {role} metadata"
            )
        return signers

    def _sign(self, md: Any, signers: Sequence[Any]) -> Any:
        md.signatures.clear()
        for signer in signers:
            md.sign(signer, append=True)
        return md

    def _write(self, role: str, md: Any) -> None:
        from tuf.api.serialization.json import JSONSerializer

        root = self._load("root")
        self._sign(md, self._signers(role, root))
        name = "timestamp.json" if role == "timestamp" else f"{md.signed.version}.{role}.json"
        write_bytes(self.metadata / name, md.to_bytes(JSONSerializer(compact=False)))

    def _write_root(self, md: Any, signers: Sequence[Any] = ()) -> None:
        from tuf.api.serialization.json import JSONSerializer

        root_keyids = set(md.signed.roles["root"].keyids)
        signers = list(signers) or [s for s in _load_keys(self.keys) if s.public_key.keyid in root_keyids]
        self._sign(md, signers)
        data = md.to_bytes(JSONSerializer(compact=False))
        write_bytes(self.metadata / f"{md.signed.version}.root.json", data)
        write_bytes(self.metadata / "root.json", data)

    def _bump(self, md: Any, days: float) -> Any:
        md.signed.version += 1
        md.signed.expires = _now() + timedelta(days=days)
        return md

    def refresh(self, *, bump_snapshot: bool = True, timestamp_expires: datetime | None = None) -> None:
        """Re-sign snapshot (optional) and timestamp with fresh expiry dates: run this from a daily job."""
        snapshot = self._load("snapshot")
        if bump_snapshot:
            snapshot = self._bump(snapshot, self.config.snapshot_days)
            self._write("snapshot", snapshot)
        self._write_timestamp(snapshot.signed.version, timestamp_expires)

    def _write_timestamp(self, snapshot_version: int, expires: datetime | None = None) -> None:
        from tuf.api.metadata import MetaFile

        timestamp = self._bump(self._load("timestamp"), self.config.timestamp_days)
        timestamp.signed.snapshot_meta = MetaFile(snapshot_version)
        if expires is not None:  # only for tests that replay stale metadata (a freeze attack)
            timestamp.signed.expires = expires
        timestamp.signed.unrecognized_fields[ISSUED_FIELD] = _now().isoformat()
        self._write("timestamp", timestamp)

    def _commit_targets(self, targets: Any) -> None:
        self._write("targets", self._bump(targets, self.config.targets_days))
        snapshot = self._bump(self._load("snapshot"), self.config.snapshot_days)
        snapshot.signed.meta["targets.json"].version = targets.signed.version
        self._write("snapshot", snapshot)
        self._write_timestamp(snapshot.signed.version)

    # ---- publishing -----------------------------------------------------------------------------------------
    def publish(
        self,
        bundle: Path,
        *,
        channel: str,
        device_classes: Sequence[str],
        golden: Sequence[tuple[str, str]] | None = None,
        release: int | None = None,
        delta: bool = True,
    ) -> PublishResult:
        """Add a signed bundle as the channel's new release (and a delta from the previous one).

        ``golden``: (text, expected label) pairs the device checks after install; by default three sentences
        with the labels this bundle gives them here. ``release``: the release counter, by default previous + 1;
        it must rise, or devices would refuse the release as a rollback.
        """
        from tuf.api.metadata import TargetFile

        from ..bundle import MANIFEST, SIGNATURE, verify_bundle
        from .delta import make_delta
        from .packing import pack

        if not channel or "/" in channel or channel.startswith("."):
            raise ConfigError(f"channel `{channel}` must be a plain name like `stable`")
        if not device_classes:
            raise ConfigError("name at least one --device-class the bundle is for")
        manifest, blobs = verify_bundle(Path(bundle))
        if not (Path(bundle) / SIGNATURE).is_file():
            raise BundleError(f"bundle `{bundle}` is not signed; run `edgeslm sign {bundle} --key KEY` first")
        blobs[MANIFEST] = (Path(bundle) / MANIFEST).read_bytes()
        blobs[SIGNATURE] = (Path(bundle) / SIGNATURE).read_bytes()
        tar = pack(blobs)
        previous = self.release(channel)
        last = int(previous.custom["release_counter"]) if previous is not None else 0
        release = last + 1 if release is None else release
        if release <= last:
            raise ConfigError(
                f"release counter {release} is not above the channel's current {last}; devices would refuse it "
                "as a rollback — to ship an older model, publish it again with a higher counter"
            )
        if golden is None:
            golden = _golden_from(Path(bundle))
        custom = {
            "release_counter": release,
            "device_classes": sorted(device_classes),
            "min_runtime_version": manifest.min_runtime_version,
            "golden": [{"text": t, "label": label} for t, label in golden],
        }
        info = TargetFile.from_data(release_path(channel), tar)
        info.unrecognized_fields["custom"] = custom
        write_bytes(self._target_file(info), tar)
        targets = self._load("targets")
        for path in [p for p in targets.signed.targets if p.startswith(f"{channel}/deltas/")]:
            del targets.signed.targets[path]  # deltas to the old release would now produce a stale result
        delta_length = None
        if delta and previous is not None and self._target_file(previous).is_file():
            base = self._target_file(previous).read_bytes()
            patch = make_delta(base, tar)
            if len(patch) < len(tar):
                base_sha = previous.hashes["sha256"]
                dinfo = TargetFile.from_data(delta_path(channel, base_sha), patch)
                dinfo.unrecognized_fields["custom"] = {
                    "release_counter": release,
                    "base_sha256": base_sha,
                    "result_sha256": info.hashes["sha256"],
                    "result_length": info.length,
                }
                write_bytes(self._target_file(dinfo), patch)
                targets.signed.targets[dinfo.path] = dinfo
                delta_length = len(patch)
        targets.signed.targets[info.path] = info
        self._commit_targets(targets)
        return PublishResult(info.path, release, info.hashes["sha256"], info.length, delta_length)

    # ---- keys -----------------------------------------------------------------------------------------------
    def rotate(self, role: str) -> str:
        """Replace the key(s) of ``role`` with one new key; sign the new root with the old and new root keys.

        Old private keys move to keys/retired/. Returns the new key id.
        """
        if role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(ROLES)}, got `{role}`")
        old_root = self._load("root").signed
        old_keyids = set(old_root.roles["root"].keyids)
        available = {s.public_key.keyid for s in _load_keys(self.keys)}
        if len(old_keyids & available) < old_root.roles["root"].threshold:
            raise ConfigError(
                f"rotating keys needs {old_root.roles['root'].threshold} of the current root keys in {self.keys}; "
                "bring the offline root keys back"
            )
        new = _new_key(self.keys, role)
        root = self._bump(self._load("root"), self.config.root_days)
        retired = list(root.signed.roles[role].keyids)
        if role == "root":  # replace one root key at a time; the rest of the old threshold signs the change
            retired = retired[:1]
        for keyid in retired:
            root.signed.revoke_key(keyid, role)
        root.signed.add_key(new.public_key, role)
        # A new root must meet the threshold of the old root (the client verifies it with the old keys) and of
        # itself: sign with every available key of either.
        signing = old_keyids | set(root.signed.roles["root"].keyids)
        self._write_root(root, [s for s in _load_keys(self.keys) if s.public_key.keyid in signing])
        for keyid in retired:
            _retire(self.keys, keyid)
        if role in ("targets", "snapshot"):
            self._commit_targets(self._load("targets"))
        elif role == "timestamp":
            self.refresh(bump_snapshot=False)
        return str(new.public_key.keyid)


def _golden_from(bundle: Path) -> list[tuple[str, str]]:
    from ..runtime import Predictor

    predictor = Predictor(bundle, threads=1)
    return [(text, predictor.predict(text).label) for text in DEFAULT_GOLDEN]


def _new_key(keys: Path, role: str) -> Any:
    from securesystemslib.signer import CryptoSigner

    signer = CryptoSigner.generate_ed25519()
    pem = signer.private_bytes
    keys.mkdir(parents=True, exist_ok=True)
    path = keys / f"{role}-{signer.public_key.keyid[:12]}.pem"
    old_umask = os.umask(0o077)
    try:
        write_bytes(path, pem)
    finally:
        os.umask(old_umask)
    return signer


def _load_keys(keys: Path) -> list[Any]:
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.signer import CryptoSigner, SSlibKey

    signers = []
    for path in sorted(keys.glob("*.pem")):
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        public = SSlibKey.from_crypto(private.public_key())
        signers.append(CryptoSigner(private, public))
    return signers


def _retire(keys: Path, keyid: str) -> None:
    (keys / "retired").mkdir(exist_ok=True)
    for path in keys.glob(f"*-{keyid[:12]}.pem"):
        shutil.move(str(path), keys / "retired" / path.name)
