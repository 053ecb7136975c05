"""Crash-consistency of an install, three ways: a power cut at every file-system operation (in-memory SimDisk),
real updater processes SIGKILLed at random moments, and a real full disk (a small tmpfs, root only).

    .venv/bin/python benchmarks/ota_crash.py [--kills 200] [--seed 0]

Writes benchmarks/results/ota_crash.json. tests/test_ota_crash.py runs the same functions with small counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _bundles(work: Path, n: int) -> tuple[list[Path], Path, Path]:
    """``n`` signed tiny bundles (distinct releases of one model) and the signing key pair."""
    from conftest import write_tiny_bundle
    from edgeslm.secure.signing import generate_keypair, sign_bundle

    key, pub = generate_keypair(work / "release-key")
    out = []
    for i in range(n):
        b = write_tiny_bundle(work / f"bundle{i + 1}", release=i + 1)
        sign_bundle(b, key)
        out.append(b)
    return out, key, pub


def power_cuts(random_subsets: int = 8, seed: int = 0) -> dict[str, Any]:
    """Every crash point of install + start + commit (healthy new model) and of install + start + rollback."""
    from edgeslm.ota.simdisk import crash_matrix
    from edgeslm.secure.signing import load_public_key

    with tempfile.TemporaryDirectory() as tmp:
        (b1, b2), _, pub = _bundles(Path(tmp), 2)
        old, new = ({p.name: p.read_bytes() for p in b.iterdir()} for b in (b1, b2))
        trusted = [load_public_key(pub)]
        out = {}
        for name, kw in (
            ("install_commit", {"new_is_healthy": True}),
            ("install_rollback", {"new_is_healthy": False}),
            ("control_without_fsync", {"honour_sync": False}),
        ):
            started = time.perf_counter()
            r = crash_matrix(old, new, trusted, random_subsets=random_subsets, seed=seed, **kw)  # type: ignore[arg-type]
            out[name] = {**r.__dict__, "seconds": round(time.perf_counter() - started, 2)}
    return out


def _check_device(device: Path, trusted: list[bytes], allowed: dict[str, int], floor: int) -> tuple[str, int]:
    """What the device serves after a kill: (which release, counter). Raises AssertionError on a broken state."""
    from edgeslm.bundle import verify_bundle
    from edgeslm.ota.disk import OsDisk
    from edgeslm.ota.packing import pack
    from edgeslm.ota.slots import active_bundle, load_state

    state = load_state(OsDisk(), device)
    folder = active_bundle(device)
    assert folder is not None and state.active is not None, "no active slot"
    verify_bundle(folder, trusted)
    sha = hashlib.sha256(pack({p.name: p.read_bytes() for p in folder.iterdir()})).hexdigest()
    info = state.slots[state.active]
    assert info is not None and info.sha256 == sha, "active slot does not hold the release its state names"
    assert sha in allowed, "serves a bundle that is neither the old nor the new release"
    assert state.counter >= floor, f"counter went back to {state.counter}"
    phase = "pending" if state.pending else f"active-r{allowed[sha]}"
    spare = "b" if state.active == "a" else "a"
    if state.slots[spare] is None and any((device / "slots" / spare).glob("*")):
        phase += ", spare slot half-written (cleaned by the next run)"
    return phase, state.counter


def sigkill_loop(kills: int, seed: int = 0, work: Path | None = None) -> dict[str, Any]:
    """Start a real `edgeslm ota update` process, SIGKILL it at a random moment, check the device, recover."""
    from edgeslm.ota.repository import Repository
    from edgeslm.ota.server import serving
    from edgeslm.ota.updater import update
    from edgeslm.secure.signing import load_public_key

    rng = random.Random(seed)
    tmp = Path(work or tempfile.mkdtemp(prefix="ota-kill-"))
    (b1, b2), _, pub = _bundles(tmp, 2)
    trusted = [load_public_key(pub)]
    repo = Repository.init(tmp / "repo")
    r1 = repo.publish(b1, channel="stable", device_classes=["pixel-7"])
    root = repo.metadata / "1.root.json"
    template, device = tmp / "template", tmp / "device"
    results: dict[str, int] = {}
    broken: list[str] = []
    with serving(repo.path / "public") as url:
        update(template, url, bootstrap_root=root.read_bytes(), trusted_keys=trusted, device_class="pixel-7")
        r2 = repo.publish(b2, channel="stable", device_classes=["pixel-7"])
        allowed = {r1.sha256: 1, r2.sha256: 2}
        cmd = [
            str(Path(sys.executable).parent / "edgeslm"),
            "ota",
            "update",
            "--repo",
            url,
            "--device-dir",
            str(device),
            "--root",
            str(root),
            "--trusted",
            str(pub),
            "--device-class",
            "pixel-7",
        ]

        (template / ".lock").unlink()

        def run_once(kill_after: float | None) -> tuple[float, float]:
            """Run one updater process (killed after ``kill_after`` s); return (s to take the lock, s to exit)."""
            shutil.rmtree(device, ignore_errors=True)
            shutil.copytree(template, device, symlinks=True)
            started = time.monotonic()
            locked = 0.0
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while proc.poll() is None:
                now = time.monotonic() - started
                if not locked and (device / ".lock").exists():
                    locked = now
                if kill_after is not None and now >= kill_after:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.002)
            proc.wait()
            return locked, time.monotonic() - started

        locked, full = run_once(None)  # one uninterrupted update process, start-up (imports) included
        assert _check_device(device, trusted, allowed, 2)[0] == "active-r2", "the uninterrupted update failed"
        for i in range(kills):
            # Kill between the updater taking its lock (imports done) and its normal exit: the window where it
            # touches the device. Kills during Python's start-up would prove nothing.
            run_once(rng.uniform(max(0.0, locked - 0.05), full))
            try:
                phase, _ = _check_device(device, trusted, allowed, 1)
                results[phase] = results.get(phase, 0) + 1
                # I6: the next updater run (a fresh process would do the same) finishes the job.
                update(device, url, bootstrap_root=root.read_bytes(), trusted_keys=trusted, device_class="pixel-7")
                assert _check_device(device, trusted, allowed, 2)[0] == "active-r2", "recovery did not reach r2"
            except Exception as e:  # a broken state: record it and go on
                broken.append(f"iteration {i}: {type(e).__name__}: {e}")
    return {
        "iterations": kills,
        "broken_states": len(broken),
        "broken_examples": broken[:5],
        "found_after_kill": results,
        "uninterrupted_update_process_s": round(full, 2),
        "kill_window_s": [round(max(0.0, locked - 0.05), 2), round(full, 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.time()
    result = {
        "command": f"python benchmarks/ota_crash.py --kills {args.kills} --seed {args.seed}",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "power_cuts": power_cuts(seed=args.seed),
        "sigkill": sigkill_loop(args.kills, args.seed),
    }
    result["wall_s"] = round(time.time() - started, 1)
    out = ROOT / "benchmarks" / "results" / "ota_crash.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
