"""`edgeslm federate --secagg`: one real SecAgg+ simulation (Ray), checked against FedAvg computed in the open."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeslm.errors import ConfigError
from edgeslm.learn.federate import FederateConfig, federate
from edgeslm.recipe import DataConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "krum"}, "works with strategy fedavg only, got 'krum': robust aggregation"),
        ({"strategy": "trimmed-mean"}, "SecAgg\\+ shows the server only their sum"),
        ({"dp_noise": 0.5}, "cannot be combined with --dp-noise here: .* would report no ε"),
        ({"faulty": 0.2}, "cannot inspect a masked update"),
        ({"secagg_shares": 3, "secagg_threshold": 3}, r"`secagg_threshold` must be in \[2, secagg_shares\)"),
        ({"clients": 4, "per_round": 1}, "at least 2 clients per round"),
    ],
)
def test_what_secagg_cannot_do_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FederateConfig(secagg=True, **kwargs)  # type: ignore[arg-type]


CLIENTS = 4


@pytest.fixture(scope="module")
def secagg_run(
    learn_build: Path, tiny_data: DataConfig, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, FederateConfig]:
    """4 clients, all in the cohort, 1 round of LoRA FedAvg under SecAgg+."""
    out = tmp_path_factory.mktemp("secagg") / "out"
    config = FederateConfig(
        data=tiny_data, clients=CLIENTS, per_round=CLIENTS, rounds=1, alpha=0.5, secagg=True, eval_rows=50
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLWR_HOME", str(out.parent / "flwr-home"))  # Flower's state stays in the test's folder
        federate(learn_build, out, config)
    return out, config


def test_the_secure_aggregate_is_fedavg_within_the_quantization_error(
    secagg_run: tuple[Path, FederateConfig], learn_build: Path
) -> None:
    """Each client's update is recomputed here in the open and averaged by rows; SecAgg+ must give the same."""
    import torch
    from safetensors.numpy import load_file

    from edgeslm.data import load_dataset
    from edgeslm.learn.apps import Local, _train_client
    from edgeslm.learn.federate import prepare_workdir
    from edgeslm.learn.lora import resolve_student
    from edgeslm.learn.partition import partition

    out, config = secagg_run
    secure = load_file(str(out / "adapter" / "adapter.safetensors"))
    checkpoint = resolve_student(learn_build).checkpoint.path
    parts = partition(load_dataset(config.data).train.labels, config.clients, config.alpha, config.seed)
    threads = torch.get_num_threads()
    try:
        initial = Local(checkpoint, "lora", config.lora, config.seed).get()
        with tempfile.TemporaryDirectory() as work:
            prepare_workdir(Path(work), config, checkpoint, parts)
            updates = [_train_client(work, pid, initial, 1, 0.0) for pid in range(CLIENTS)]
    finally:
        torch.set_num_threads(threads)
    rows = np.array([n for _, n in updates], dtype=np.float64)
    plain = {k: sum(u[k] * n for u, n in updates) / rows.sum() for k in initial}
    # SecAgg+ quantizes each client's rows/max_rows-scaled values to 2^22 steps over [-clip, clip], stochastically
    step = 2 * config.secagg_clip / 2**22
    bound = CLIENTS * step / (rows / rows.max()).sum()
    moved = max(float(np.abs(plain[k] - initial[k]).max()) for k in initial)
    worst = max(float(np.abs(secure[k] - plain[k]).max()) for k in initial)
    assert moved > 100 * bound  # the round moved the adapter far more than the tolerance
    assert worst <= bound * 1.01


def test_secagg_costs_more_messages_and_bytes_than_the_arrays(secagg_run: tuple[Path, FederateConfig]) -> None:
    out, _ = secagg_run
    summary = json.loads((out / "federate.json").read_text())
    wire = summary["wire"]
    assert wire["exchanges_per_round"] == 4  # keys, key shares, masked vectors, unmasking
    assert wire["up_bytes_per_client_round"] > summary["array_bytes"]  # the masked vector plus the protocol
    assert len(summary["accuracy"]) == 2 and all(np.isfinite(summary["accuracy"]))


def test_cli_secagg_with_krum_is_one_clear_line(learn_build: Path, tmp_path: Path) -> None:
    from edgeslm.cli import app

    args = ["federate", str(learn_build), "--data", "sst2", "--out", str(tmp_path / "o"), "--secagg"]
    result = CliRunner().invoke(app, [*args, "--strategy", "krum"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "works with strategy fedavg only" in result.output
