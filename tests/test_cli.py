"""Every user mistake: one red line, a non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_tiny_bundle
from edgeslm.cli import app

runner = CliRunner()


def _fails(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    out = result.output
    assert result.exit_code == 1, out
    assert "Traceback" not in out and message in " ".join(out.split()), out
    assert "error:" in out


@pytest.fixture
def good_bundle(tmp_path: Path) -> Path:
    """A minimal runnable bundle (conftest.write_tiny_bundle: a real ONNX graph and the real tokenizer)."""
    return write_tiny_bundle(tmp_path / "bundle")


def test_help_teaches() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("build", "finetune", "distill", "export", "quantize", "eval", "predict", "devices"):
        assert cmd in result.output
    build_help = runner.invoke(app, ["build", "--help"]).output
    assert "--recipe" in build_help and "--force" in build_help and "sst2" in build_help


def test_predict(good_bundle: Path) -> None:
    result = runner.invoke(app, ["predict", str(good_bundle), "hello", "world", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["text"] for r in rows] == ["hello", "world"] and rows[0]["label"] in ("neg", "pos")


def test_predict_through_the_installed_command(good_bundle: Path) -> None:
    exe = shutil.which("edgeslm") or str(Path(sys.executable).parent / "edgeslm")
    ok = subprocess.run([exe, "predict", str(good_bundle), "fine"], capture_output=True, text=True)
    assert ok.returncode == 0 and "fine" in ok.stdout
    bad = subprocess.run([exe, "predict", str(good_bundle.parent / "nope"), "x"], capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "`tokenizer.json` is missing"),
        ("byte", "does not match its hash"),
        ("malformed", "manifest.json is not valid JSON"),
        ("newer", "is newer than this runtime understands"),
    ],
)
def test_damaged_bundles_are_refused(good_bundle: Path, damage: str, message: str) -> None:
    if damage == "missing":
        (good_bundle / "tokenizer.json").unlink()
    elif damage == "byte":
        data = bytearray((good_bundle / "model.onnx").read_bytes())
        data[-1] ^= 0xFF
        (good_bundle / "model.onnx").write_bytes(bytes(data))
    elif damage == "malformed":
        (good_bundle / "manifest.json").write_text("{")
    else:
        raw = json.loads((good_bundle / "manifest.json").read_text())
        raw["format_version"] = 99
        (good_bundle / "manifest.json").write_text(json.dumps(raw))
    _fails(["predict", str(good_bundle), "text"], message)


def _csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_build_bad_inputs(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    two = "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(20))
    cases = [
        (["--data", str(tmp_path / "none.csv")], "does not exist"),
        (["--data", _csv(tmp_path / "nocol.csv", "sentence,label\nx,a\n")], "has no `text` column"),
        (["--data", _csv(tmp_path / "empty.csv", "")], "has no rows"),
        (["--data", _csv(tmp_path / "one.csv", "text,label\n" + "x,a\n" * 10)], "has only one label"),
        (
            [
                "--data",
                _csv(tmp_path / "t.csv", "text,label\n" + two),
                "--dev-file",
                _csv(tmp_path / "d.csv", "text,label\nx,a\ny,zzz\n"),
            ],
            "never saw: 'zzz'",
        ),
        (["--data", "sst2", "--base", "no-such-model"], "unknown --base `no-such-model`"),
        (
            ["--data", "sst2", "--device", "toaster"],
            "unknown device `toaster`; known devices: esp32-s3, host, iphone-14, pixel-7",
        ),
        (
            ["--data", "sst2", "--recipe", _csv(tmp_path / "r.toml", "[distill]\nnum_layers = -1\n")],
            "`num_layers` must be > 0, got -1",
        ),
    ]
    for args, message in cases:
        _fails(["build", "--out", out, *args], message)
        assert not Path(out).exists()


def test_build_refuses_existing_output(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    _fails(["build", "--out", str(tmp_path / "out")], "already exists; choose another path or pass --force")


def test_base_folder_with_pickled_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"pickle")
    _fails(
        ["finetune", "--out", str(tmp_path / "o"), "--base", str(tmp_path / "m")], "pickled .bin weights are refused"
    )


def test_devices_lists_profiles() -> None:
    result = runner.invoke(app, ["devices"])
    assert result.exit_code == 0 and "host" in result.output


def test_predict_with_trusted_keys(good_bundle: Path, tmp_path: Path) -> None:
    from edgeslm.secure.signing import generate_keypair, sign_bundle

    key, pub = generate_keypair(tmp_path / "key")
    _, other_pub = generate_keypair(tmp_path / "other")
    _fails(["predict", str(good_bundle), "x", "--trusted", str(pub)], "is not signed")
    sign_bundle(good_bundle, key)
    ok = runner.invoke(app, ["predict", str(good_bundle), "x", "--trusted", str(other_pub), "--trusted", str(pub)])
    assert ok.exit_code == 0, ok.output
    _fails(["predict", str(good_bundle), "x", "--trusted", str(other_pub)], "does not verify against any trusted key")


def test_sigterm_mid_build_leaves_nothing_half_written(tmp_path: Path, tiny_base: Path, sst2_csv: Path) -> None:
    import signal
    import time

    exe = shutil.which("edgeslm") or str(Path(sys.executable).parent / "edgeslm")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'base = "{tiny_base}"\n[finetune]\nepochs = 50\nbatch_size = 4\n')
    proc = subprocess.Popen(
        [exe, "build", "--recipe", str(recipe), "--data", str(sst2_csv), "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # the step log says when fine-tuning starts
        if "finetune" in line:
            break
    time.sleep(2.0)  # inside the training loop
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()
    cache = tmp_path / ".edgeslm-cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if ".tmp-" in p.name]
