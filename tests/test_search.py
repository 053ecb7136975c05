"""The accuracy-aware search on the tiny model: real trials, a resumable shared study, always an answer."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import edgeslm
from edgeslm.cli import app
from edgeslm.recipe import DistillConfig, EvalConfig, ExportConfig, FinetuneConfig, Recipe, SearchConfig
from edgeslm.search import choose, search


def _recipe(base: Path, data: edgeslm.DataConfig, trials: int, storage: str | None = None) -> Recipe:
    return Recipe(
        base=str(base),
        data=data,
        finetune=FinetuneConfig(epochs=1, batch_size=16, learning_rate=1e-3),
        distill=DistillConfig(epochs=1, batch_size=16, learning_rate=1e-3),
        export=ExportConfig(check_rows=8),
        eval=EvalConfig(latency_rows=10, warmup_rows=1),
        search=SearchConfig(
            trials=trials,
            layers=(1, 2),
            quantize=("int8-dynamic",),
            trim=(False, True),
            storage=storage,
            max_accuracy_drop=100,
        ),
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build cache for the module: later tests reuse the teacher and the students earlier ones built."""
    return tmp_path_factory.mktemp("search")


def test_search_resumes_and_chooses_a_fitting_bundle(
    root: Path, tiny_base: Path, tiny_data: edgeslm.DataConfig
) -> None:
    tmp_path = root
    first = search(_recipe(tiny_base, tiny_data, 2), tmp_path / "s", "host")
    assert len(first.report["trials"]) == 2 and first.report["chosen"]["fits"]
    assert (first.bundle / "manifest.json").is_file() and edgeslm.Predictor(first.bundle).predict("ok").label
    again = search(_recipe(tiny_base, tiny_data, 3), tmp_path / "s", "host", force=True)
    rows = again.report["trials"]
    assert len(rows) == 3 and [r["trial"] for r in rows[:2]] == [0, 1]  # the first two were not run again
    assert len({(r["layers"], r["quantize"], r["trim"]) for r in rows}) == 3  # repeats are pruned, not re-measured
    assert again.report["pareto"] and json.loads((tmp_path / "s" / "search.json").read_text())["device"] == "host"


def test_two_workers_share_one_study(root: Path, tiny_base: Path, tiny_data: edgeslm.DataConfig) -> None:
    tmp_path = root
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    script = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from edgeslm.recipe import DataConfig
        from test_search import _recipe
        from edgeslm.search import search
        data = DataConfig(name={tiny_data.name!r}, dev_path={tiny_data.dev_path!r})
        search(_recipe(Path({str(tiny_base)!r}), data, 4, {storage!r}), Path({str(tmp_path)!r}) / sys.argv[1], "host")
        """
    )
    workers = [subprocess.Popen([sys.executable, "-c", script, f"w{i}"]) for i in range(2)]
    assert [w.wait(timeout=600) for w in workers] == [0, 0]
    import optuna

    (study,) = optuna.get_all_study_summaries(storage)
    complete = optuna.load_study(study_name=study.study_name, storage=storage).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)
    )
    assert 4 <= len(complete) <= 5  # each worker stops once 4 are done; one may be in flight
    assert (tmp_path / "w0" / "bundle").is_dir() and (tmp_path / "w1" / "bundle").is_dir()


def _row(trial: int, acc: float, p50: float, size: float, fits: bool) -> dict:
    return {
        "trial": trial,
        "accuracy": acc,
        "p50_ms": p50,
        "size_mb": size,
        "fits": fits,
        "failed": [] if fits else ["RAM"],
    }


def test_choose_always_answers() -> None:
    rows = [_row(0, 0.90, 3.0, 10, True), _row(1, 0.89, 1.0, 5, True), _row(2, 0.80, 0.5, 2, True)]
    best, verdict = choose(rows, teacher_accuracy=0.90, tolerance=1.0)
    assert best["trial"] == 1 and "fits the device" in verdict
    best, verdict = choose(rows, teacher_accuracy=0.95, tolerance=0.5)
    assert best["trial"] == 0 and "misses by 4.50 points" in verdict
    best, verdict = choose([_row(0, 0.9, 1, 9, False), _row(1, 0.8, 1, 4, False)], 0.9, 1)
    assert best["trial"] == 1 and "no recipe fits the device" in verdict and "RAM" in verdict


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "host", "--max-accuracy-drop", "-1"], "`max_accuracy_drop` must be a number >= 0"),
        (["--max-accuracy-drop", "0.5"], "needs a target: add --device NAME"),
        (["--device", "toaster", "--max-accuracy-drop", "0.5"], "unknown device `toaster`"),
    ],
)
def test_search_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["build", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 1 and message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_search_can_weigh_clustering(root: Path, tiny_base: Path, tiny_data: edgeslm.DataConfig) -> None:
    recipe = _recipe(tiny_base, tiny_data, 1)
    only_clustered = dataclasses.replace(recipe.search, layers=(1,), trim=(False,), cluster=(True,))
    found = search(dataclasses.replace(recipe, search=only_clustered), root / "c", "host")
    assert found.report["chosen"]["cluster"] is True
    assert (found.bundle / "model.onnx.xz").is_file()  # the clustered trial is what shipped, entropy-coded
    with pytest.raises(edgeslm.ConfigError, match="`cluster` must list at least one"):
        SearchConfig(cluster=())


def test_search_can_weigh_residual_widths(root: Path, tiny_base: Path, tiny_data: edgeslm.DataConfig) -> None:
    """Both widths of the tiny model (32 channels, heads of 16) become real trials; the narrow one is smaller."""
    recipe = _recipe(tiny_base, tiny_data, 2)
    widths = dataclasses.replace(recipe.search, layers=(1,), trim=(False,), hidden=(16, 32))
    found = search(dataclasses.replace(recipe, search=widths), root / "w", "host")
    rows = {r["hidden"]: r for r in found.report["trials"]}
    assert set(rows) == {16, 32} and rows[16]["parameters"] < rows[32]["parameters"]
    with pytest.raises(edgeslm.ConfigError, match="`hidden` must list widths > 0, got \\(0,\\)"):
        SearchConfig(hidden=(0,))


def test_search_can_weigh_qat(root: Path, tiny_base: Path, tiny_data: edgeslm.DataConfig) -> None:
    """With and without quantization-aware training become two real trials; QAT is its own cached step."""
    recipe = _recipe(tiny_base, tiny_data, 2)
    space = dataclasses.replace(recipe.search, layers=(1,), trim=(False,), qat=(False, True))
    found = search(dataclasses.replace(recipe, search=space), root / "q", "host")
    assert sorted(r["qat"] for r in found.report["trials"]) == [False, True]
    assert any((root / ".edgeslm-cache").glob("qat-*"))
    with pytest.raises(edgeslm.ConfigError, match="`qat` must list at least one"):
        SearchConfig(qat=())
