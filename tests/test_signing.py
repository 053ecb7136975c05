"""Ed25519 over the exact manifest bytes: keygen, sign, verify, and the runtime's refusal of untrusted bundles."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_tiny_bundle
from edgeslm.bundle import MANIFEST, SIGNATURE, verify_bundle
from edgeslm.cli import app
from edgeslm.errors import BundleError, ConfigError, SignatureError
from edgeslm.runtime import Predictor
from edgeslm.secure.signing import (
    check_signed,
    generate_keypair,
    load_public_key,
    sign_bundle,
    verify_signature,
)

runner = CliRunner()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys" / "signer")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "bundle")


def test_keygen_writes_a_private_key_only_its_owner_can_read(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert len(load_public_key(public)) == 32
    with pytest.raises(ConfigError, match="already exists"):
        generate_keypair(private)


def test_signature_is_over_the_exact_manifest_bytes(bundle: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    sign_bundle(bundle, private)
    raw = load_public_key(public)
    signature = (bundle / SIGNATURE).read_bytes()
    assert len(signature) == 64
    verify_signature((bundle / MANIFEST).read_bytes(), signature, [raw])
    # Re-serialising the same JSON (one added space) is a different message: nothing is canonicalised.
    with pytest.raises(SignatureError):
        verify_signature((bundle / MANIFEST).read_bytes() + b" ", signature, [raw])
    manifest, _ = verify_bundle(bundle, [raw])
    assert manifest.labels == ("neg", "pos")


def test_several_trusted_keys_one_of_which_signed(bundle: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    _, other_pub = generate_keypair(tmp_path / "other")
    sign_bundle(bundle, keys[0])
    key_id = check_signed(bundle, [load_public_key(other_pub), load_public_key(keys[1])])
    assert len(key_id) == 16


def test_runtime_refuses_unsigned_and_untrusted_bundles(bundle: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    trusted = [load_public_key(keys[1])]
    with pytest.raises(SignatureError, match="not signed"):
        Predictor(bundle, trusted_keys=trusted)
    rogue, _ = generate_keypair(tmp_path / "rogue")
    sign_bundle(bundle, rogue)
    with pytest.raises(SignatureError, match="does not verify"):
        Predictor(bundle, trusted_keys=trusted)
    sign_bundle(bundle, keys[0])
    assert Predictor(bundle, trusted_keys=trusted).predict("a fine film").label == "neg"


def test_a_changed_file_breaks_the_signed_bundle(bundle: Path, keys: tuple[Path, Path]) -> None:
    sign_bundle(bundle, keys[0])
    trusted = [load_public_key(keys[1])]
    tok = bundle / "tokenizer.json"
    tok.write_bytes(tok.read_bytes().replace(b"[UNK]", b"[UNX]", 1))
    with pytest.raises(BundleError, match="does not match its hash"):
        Predictor(bundle, trusted_keys=trusted)
    # Rewriting the manifest to match the changed file breaks the signature instead.
    manifest = (bundle / MANIFEST).read_bytes()
    (bundle / MANIFEST).write_bytes(manifest.replace(b'"neg"', b'"bad"'))
    with pytest.raises(SignatureError):
        verify_bundle(bundle, trusted)


def test_signing_a_damaged_bundle_is_refused(bundle: Path, keys: tuple[Path, Path]) -> None:
    (bundle / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(BundleError, match="does not match its hash"):
        sign_bundle(bundle, keys[0])
    assert not (bundle / SIGNATURE).exists()


def test_bad_key_files_give_one_clear_line(bundle: Path, tmp_path: Path, keys: tuple[Path, Path]) -> None:
    (tmp_path / "junk").write_bytes(b"hello")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        sign_bundle(bundle, tmp_path / "junk")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk")
    with pytest.raises(ConfigError, match="does not exist"):
        load_public_key(tmp_path / "missing.pub")
    with pytest.raises(SignatureError, match="no trusted keys"):
        check_signed(bundle, [])


def test_cli_keygen_sign_verify(tmp_path: Path, bundle: Path) -> None:
    key = tmp_path / "k"
    result = runner.invoke(app, ["keygen", "--out", str(key)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["verify", str(bundle), "--trusted", f"{key}.pub"])
    assert result.exit_code == 1 and "not signed" in result.output and "Traceback" not in result.output
    assert runner.invoke(app, ["sign", str(bundle), "--key", str(key)]).exit_code == 0
    result = runner.invoke(app, ["verify", str(bundle), "--trusted", f"{key}.pub"])
    assert result.exit_code == 0 and "ok" in result.output, result.output
    other = tmp_path / "other"
    runner.invoke(app, ["keygen", "--out", str(other)])
    result = runner.invoke(app, ["verify", str(bundle), "--trusted", f"{other}.pub"])
    assert result.exit_code == 1 and "does not verify" in result.output
