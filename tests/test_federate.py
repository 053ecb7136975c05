"""`edgeslm federate`: Dirichlet splits, and one real Flower simulation (Ray) of the tiny student end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeslm.errors import ConfigError, DataError
from edgeslm.learn.federate import FederateConfig, federate
from edgeslm.learn.partition import partition
from edgeslm.recipe import DataConfig


def _labels(n: int = 2000, k: int = 10) -> list[int]:
    return [i % k for i in range(n)]


@pytest.mark.parametrize("alpha", [None, 0.1, 0.5, 100.0])
def test_every_row_goes_to_exactly_one_client_and_no_client_is_empty(alpha: float | None) -> None:
    parts = partition(_labels(), 50, alpha, seed=1)
    rows = np.concatenate(parts)
    assert len(parts) == 50 and all(len(p) > 0 for p in parts)
    assert sorted(rows.tolist()) == list(range(2000))


def test_a_small_alpha_gives_each_client_few_labels() -> None:
    y = np.asarray(_labels())

    def labels_per_client(alpha: float | None) -> float:
        return float(np.mean([len(set(y[p])) for p in partition(y.tolist(), 50, alpha, seed=0)]))

    assert labels_per_client(0.1) < labels_per_client(1.0) < labels_per_client(None)


def test_too_few_rows_for_the_clients_is_refused() -> None:
    with pytest.raises(DataError, match="has 20 train rows, too few to give each of 50 clients one"):
        partition(_labels(20), 50, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clients": 0}, "`clients` must be > 0, got 0"),
        ({"clients": 5, "per_round": 6}, r"`per_round` \(6\) must be <= `clients` \(5\)"),
        ({"alpha": 0.0}, "`alpha` must be > 0"),
        ({"strategy": "fedsgd"}, "`strategy` must be one of"),
        ({"dp_noise": 1.0, "strategy": "krum"}, "DP needs strategy fedavg"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FederateConfig(**kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def run(learn_build: Path, tiny_data: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 clients on a non-IID split, all sampled, 2 rounds, trimmed mean; clients 1, 3, 5 send NaN (round 1) or
    misshapen (round 2) arrays, client 0 flips its labels and boosts its update."""
    out = tmp_path_factory.mktemp("fed") / "out"
    config = FederateConfig(
        data=tiny_data,
        clients=6,
        per_round=6,
        rounds=2,
        alpha=0.5,
        strategy="trimmed-mean",
        trim_beta=0.34,
        faulty=0.5,
        poisoned=0.17,
        eval_rows=50,
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLWR_HOME", str(out.parent / "flwr-home"))  # Flower's state stays in the test's folder
        federate(learn_build, out, config)
    return out


def test_broken_updates_are_rejected_and_counted_and_the_rounds_go_on(run: Path) -> None:
    summary = json.loads((run / "federate.json").read_text())
    assert len(summary["accuracy"]) == 3  # before round 1, then after each of the 2 rounds
    rounds = summary["rounds"]
    assert rounds["1"] == {**rounds["1"], "replies": 6, "accepted": 3, "rejected_nan": 3, "rejected_shape": 0}
    assert rounds["2"] == {**rounds["2"], "replies": 6, "accepted": 3, "rejected_nan": 0, "rejected_shape": 3}
    assert summary["rejected_updates"] == 6 and summary["failed_clients"] == 0
    assert all(np.isfinite(summary["accuracy"]))  # no NaN reached the global model


def test_the_result_is_a_new_bundle_and_an_adapter_bound_to_the_base(run: Path, learn_build: Path) -> None:
    from edgeslm.bundle import verify_bundle
    from edgeslm.learn.adapter import AdaptedPredictor
    from edgeslm.runtime import Predictor

    manifest, _ = verify_bundle(run / "bundle")
    fed = manifest.extra["federated"]
    assert fed["strategy"] == "trimmed-mean" and fed["rounds"] == 2 and fed["mode"] == "lora"
    texts = ["a gripping, beautiful film", "dull and far too long"]
    merged = Predictor(run / "bundle").logits(texts)
    adapted = AdaptedPredictor(learn_build / "bundle", run / "adapter").logits(texts)
    # the same federated model two ways: re-exported and re-quantized, or merged into the base INT8 at load
    assert np.abs(merged - adapted).max() < 0.1 * (np.abs(merged).max() + 1e-3) + 0.05


def test_lora_uploads_are_a_small_share_of_the_student(run: Path, learn_build: Path) -> None:
    summary = json.loads((run / "federate.json").read_text())
    full = (learn_build / "bundle" / "model.onnx").stat().st_size  # INT8: a quarter of the FP32 student
    assert 0 < summary["upload_bytes_per_client_round"] < full / 10


def test_cli_federate_refuses_a_cohort_larger_than_the_fleet(learn_build: Path, tmp_path: Path) -> None:
    from edgeslm.cli import app

    result = CliRunner().invoke(
        app,
        [
            "federate",
            str(learn_build),
            "--data",
            "sst2",
            "--out",
            str(tmp_path / "o"),
            "--clients",
            "3",
            "--per-round",
            "5",
        ],
    )
    assert result.exit_code == 1
    assert "`per_round` (5) must be <= `clients` (3)" in result.output and "Traceback" not in result.output
