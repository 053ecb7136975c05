"""`edgeslm federate --superlink`: the edgeslm apps on Flower's deployment engine, with real processes on 127.0.0.1.

The long test starts a SuperLink and three SuperNodes, each SuperNode with its own rows file and its copy of the
build; it SIGKILLs one SuperNode while it trains in round 1 and checks that both rounds aggregate without it and
that every process stops. It takes about two minutes: the SuperLink declares a silent node dead only after two
missed 30-second heartbeats (Flower's fixed interval).
"""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _fleet import LocalFleet
from edgeslm.data import read_rows
from edgeslm.errors import ConfigError
from edgeslm.learn.deploy import SuperLink
from edgeslm.learn.federate import FederateConfig, federate
from edgeslm.recipe import DataConfig


def _device_files(data: DataConfig, folder: Path, n: int) -> list[Path]:
    """Each device's own rows: the train file dealt out in turn, written as that device's CSV."""
    rows = read_rows(Path(data.name), data)
    paths = []
    for i in range(n):
        path = folder / f"device{i}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows[i::n][:60])
        paths.append(path)
    return paths


def test_a_real_fleet_trains_two_rounds_and_survives_a_lost_device(
    learn_build: Path, tiny_data: DataConfig, tmp_path: Path
) -> None:
    from edgeslm.bundle import verify_bundle

    files = _device_files(tiny_data, tmp_path, 3)
    configs = [f"data='{f}' student='{learn_build}'" for f in files]
    config = FederateConfig(data=tiny_data, clients=3, per_round=3, rounds=2, eval_rows=40, round_timeout=150)
    with LocalFleet(tmp_path / "fleet", configs) as fleet:

        def kill_node2_while_it_trains() -> None:
            deadline = time.monotonic() + 240
            while "Start `flwr-clientapp`" not in fleet.log("node2") and time.monotonic() < deadline:
                time.sleep(0.2)
            fleet.kill("node2")

        killer = threading.Thread(target=kill_node2_while_it_trains, daemon=True)
        killer.start()
        result = federate(learn_build, tmp_path / "out", config, superlink=SuperLink(fleet.address, wait_for_fleet=120))
        killer.join(timeout=5)
    assert fleet.alive() == []  # every process stopped
    summary = result.summary
    assert summary["engine"] == "deployment" and summary["superlink"] == fleet.address
    rounds = summary["rounds"]
    assert rounds["1"]["accepted"] == 2 and rounds["1"]["failed"] == 1  # the killed device, given up on
    assert rounds["2"]["accepted"] == 2 and rounds["2"]["failed"] == 0  # the next cohort is the survivors
    assert len(summary["accuracy"]) == 3 and all(np.isfinite(summary["accuracy"]))
    assert summary["upload_bytes_per_client_round"] > 0
    from safetensors.numpy import load_file

    adapter = load_file(tmp_path / "out" / "adapter" / "adapter.safetensors")
    lora_b = [a for name, a in adapter.items() if "lora_B" in name]
    assert lora_b and any(np.abs(a).max() > 0 for a in lora_b)  # LoRA B starts at zero: the devices' training moved it
    manifest, _ = verify_bundle(result.bundle)
    assert manifest.extra["federated"]["rounds"] == 2
    log = fleet.log("node0")
    assert log.count("Start `flwr-clientapp`") >= 2  # a survivor trained in both rounds
    print(json.dumps({"events": fleet.events, "rounds": rounds, "accuracy": summary["accuracy"]}, indent=1))


def test_a_superlink_that_does_not_answer_is_refused_at_once(learn_build: Path, tiny_data: DataConfig) -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=rf"SuperLink at 127.0.0.1:{port} does not answer .*flower-superlink"):
        federate(
            learn_build,
            Path("/nonexistent/out"),
            FederateConfig(data=tiny_data, clients=2, per_round=2),
            superlink=SuperLink(f"127.0.0.1:{port}"),
        )
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "no-port"}, "--superlink must be HOST:PORT"),
        ({"address": "10.1.2.3:8000"}, "in plaintext; pass the CA"),
        ({"address": "127.0.0.1:8000", "root_ca": Path("/nonexistent.pem")}, "is not a file"),
    ],
)
def test_bad_superlink_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SuperLink(**kwargs)  # type: ignore[arg-type]


def test_cli_refuses_simulated_attacks_on_a_real_fleet(learn_build: Path, tmp_path: Path) -> None:
    from edgeslm.cli import app

    args = ["federate", str(learn_build), "--data", "sst2", "--out", str(tmp_path / "o"), "--clients", "3"]
    result = CliRunner().invoke(app, [*args, "--per-round", "3", "--poisoned", "0.3", "--superlink", "127.0.0.1:9"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--poisoned and fault injection are simulated attacks" in result.output
    dp = CliRunner().invoke(app, [*args, "--per-round", "3", "--dp-noise", "1.0", "--superlink", "127.0.0.1:9"])
    assert dp.exit_code == 1 and "Traceback" not in dp.output
    assert "the reported ε would be false" in dp.output


def test_a_device_refuses_a_run_for_another_student_or_foreign_labels(
    learn_build: Path, tiny_data: DataConfig, tmp_path: Path
) -> None:
    import hashlib
    from dataclasses import asdict

    from edgeslm.errors import DataError
    from edgeslm.learn.deploy import _device_state

    rows = _device_files(tiny_data, tmp_path, 1)[0]
    config = asdict(FederateConfig(data=tiny_data, clients=2, per_round=2))
    other = json.dumps({"config": config, "base_bundle_manifest_sha256": "0" * 64})
    with pytest.raises(ConfigError, match="is not the one the run federates"):
        _device_state(str(learn_build), str(rows), other)
    mine = hashlib.sha256((learn_build / "bundle" / "manifest.json").read_bytes()).hexdigest()
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("text,label\nwake me at seven,alarm\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"labels \['alarm'\] in .* are not among the student's labels"):
        _device_state(
            str(learn_build), str(foreign), json.dumps({"config": config, "base_bundle_manifest_sha256": mine})
        )


def test_a_tls_superlink_is_reached_with_its_ca_and_a_fleet_that_never_comes_is_reported(
    learn_build: Path, tiny_data: DataConfig, tmp_path: Path
) -> None:
    from edgeslm.cloud.tls import self_signed

    cert, key = self_signed(tmp_path)
    config = FederateConfig(data=tiny_data, clients=1, per_round=1, rounds=1, eval_rows=20)
    with LocalFleet(tmp_path / "fleet", [], tls=(cert, key)) as fleet:
        link = SuperLink(fleet.address, root_ca=cert, wait_for_fleet=5)
        with pytest.raises(ConfigError, match="only 0 of 1 SuperNodes connected within 5 s"):
            federate(learn_build, tmp_path / "out", config, superlink=link)
    assert fleet.alive() == [] and not (tmp_path / "out").exists()
