"""`edgeslm build --device D --max-accuracy-drop X`: an accuracy-aware search over student recipes.

Optuna (multi-objective TPE: accuracy up, p50 latency down, size down) proposes a depth, a residual width, a
quantization method and whether to trim the vocabulary and cluster the weights; every trial is a real bundle, built
through the same cached steps as `build` and measured the same way, then checked against the device with `fit`. The
study lives in an Optuna storage (a SQLite file by default, any database URL to spread trials over several machines),
so an interrupted search resumes where it stopped and several workers can share one study. It always ends with an
answer: the fastest bundle that fits and keeps the accuracy, or, when none does, the closest one and by how much it
misses.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._fs import atomic_dir, write_json
from .bundle import MANIFEST, parse_manifest
from .devices import check_device
from .errors import ConfigError, MissingExtraError
from .fit import fit
from .pipeline import Log, Steps, _key, precision, write_student_bundle
from .recipe import QUANTIZE_METHODS, Recipe

__all__ = ["SearchResult", "search"]


@dataclass(frozen=True)
class SearchResult:
    out: Path
    bundle: Path
    report: dict[str, Any]


def _trial_recipe(
    recipe: Recipe,
    layers: int,
    method: str,
    trim: bool,
    cluster: bool = False,
    hidden: int | None = None,
    qat: bool = False,
) -> Recipe:
    width = hidden or recipe.distill.hidden
    return dataclasses.replace(
        recipe,
        distill=dataclasses.replace(recipe.distill, num_layers=layers, layers=None, hidden=width),
        trim=dataclasses.replace(recipe.trim, enabled=trim),
        cluster=dataclasses.replace(recipe.cluster, enabled=cluster),
        quantize=QUANTIZE_METHODS[method](),
        qat=dataclasses.replace(recipe.qat, mode="always" if qat else "off"),
    )


def _params(trial: Any) -> dict[str, Any]:
    """A trial's recipe choices; a trial stored before clustering or QAT was a choice ran without them."""
    return {"cluster": False, "qat": False, **trial.params}


def _pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows no other row beats on all of accuracy (up), p50 (down) and size (down)."""

    def dominated(a: dict[str, Any], b: dict[str, Any]) -> bool:
        no_worse = b["accuracy"] >= a["accuracy"] and b["p50_ms"] <= a["p50_ms"] and b["size_mb"] <= a["size_mb"]
        better = b["accuracy"] > a["accuracy"] or b["p50_ms"] < a["p50_ms"] or b["size_mb"] < a["size_mb"]
        return no_worse and better

    return sorted((a for a in rows if not any(dominated(a, b) for b in rows)), key=lambda r: r["p50_ms"])


def choose(rows: list[dict[str, Any]], teacher_accuracy: float, tolerance: float) -> tuple[dict[str, Any], str]:
    """The fastest row that fits and keeps the accuracy; otherwise the closest, with what it misses."""
    floor = teacher_accuracy - tolerance / 100
    good = [r for r in rows if r["fits"] and r["accuracy"] >= floor]
    if good:
        best = min(good, key=lambda r: (r["p50_ms"], r["size_mb"]))
        return best, f"fits the device and keeps accuracy within {tolerance} points of the teacher"
    fitting = [r for r in rows if r["fits"]]
    if fitting:
        best = max(fitting, key=lambda r: r["accuracy"])
        miss = (floor - best["accuracy"]) * 100
        return best, (
            f"no recipe kept accuracy within {tolerance} points; the most accurate that fits misses by {miss:.2f} "
            "points: distill longer, on more data, or allow a larger drop"
        )
    best = min(rows, key=lambda r: r["size_mb"])
    return best, (
        f"no recipe fits the device; the smallest ({best['size_mb']:.2f} MB) fails {', '.join(best['failed'])}: "
        "choose a larger device or a smaller recipe space"
    )


def _open_study(optuna: Any, name: str, storage: str) -> Any:
    """Create or load the study; workers starting together race to create the schema, so retry briefly."""
    for attempt in range(5):
        try:
            return optuna.create_study(
                study_name=name, storage=storage, directions=["maximize", "minimize", "minimize"], load_if_exists=True
            )
        except Exception as e:  # sqlalchemy IntegrityError / OperationalError while another worker creates tables
            if attempt == 4:
                raise ConfigError(f"cannot open the search storage `{storage}` ({e}); check the URL") from e
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def search(recipe: Recipe, out: Path, device: str, *, force: bool = False, log: Log | None = None) -> SearchResult:
    """Search student recipes for ``device`` within ``recipe.search``; write the chosen bundle and the report."""
    try:
        import optuna
    except ImportError as e:
        raise MissingExtraError("the search needs optuna; fix: pip install 'edgeslm[search]'") from e

    say: Log = log or (lambda _m: None)
    out, config = Path(out), recipe.search
    if out.exists() and not force:
        raise ConfigError(f"output `{out}` already exists; choose another path or pass --force to replace it")
    profile = check_device(device)
    cache = out.parent / ".edgeslm-cache"
    steps = Steps(recipe, cache, say)
    teacher, k_teacher = steps.teacher()
    teacher_metrics = steps.measure(teacher, recipe.eval)
    cache.mkdir(parents=True, exist_ok=True)
    storage = config.storage or f"sqlite:///{(cache / 'search.db').resolve()}"
    # One study per search space: trials from another space (say, without clustering) must not answer this one.
    searched = [config.layers, config.quantize, config.trim, config.cluster, recipe.cluster, config.hidden]
    searched += [config.qat, recipe.qat]
    study_name = f"edgeslm-{_key(k_teacher, recipe.distill, recipe.trim, recipe.export, recipe.eval, device, searched)}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _open_study(optuna, study_name, storage)

    complete = (optuna.trial.TrialState.COMPLETE,)
    # A resumed run or a second worker must not replay the first one's random proposals: seed by what is stored.
    study.sampler = optuna.samplers.TPESampler(seed=config.seed + len(study.trials))

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        layers = trial.suggest_categorical("layers", list(config.layers))
        method = trial.suggest_categorical("quantize", list(config.quantize))
        trim = trial.suggest_categorical("trim", list(config.trim))
        clustered = trial.suggest_categorical("cluster", list(config.cluster))
        hidden = trial.suggest_categorical("hidden", list(config.hidden)) if config.hidden else None
        qat = trial.suggest_categorical("qat", list(config.qat))
        if any(_params(t) == trial.params for t in study.get_trials(deepcopy=False, states=complete)):
            raise optuna.TrialPruned("the same recipe was already measured")
        if qat and method != "int8-dynamic":
            raise optuna.TrialPruned("QAT simulates int8-dynamic only")
        r = _trial_recipe(recipe, layers, method, trim, clustered, hidden, qat)
        on_off = {True: "on", False: "off"}
        shape = f"{layers} layer(s)" + (f", width {hidden}" if hidden else "")
        say(
            f"trial {trial.number}: {shape}, {method}, trim {on_off[trim]}, cluster {on_off[clustered]}, "
            f"qat {on_off[qat]}"
        )
        parts = steps.student(teacher, k_teacher, r)
        bundle, _ = steps.step(
            "bundle",
            _key(str(parts["student_quantized"]), device),
            lambda o: write_student_bundle(parts["student_quantized"], o, r, [profile]),
        )
        metrics = steps.measure(bundle, recipe.eval)
        _, lines = fit(bundle, device)
        failed = [line.check.split(" (")[0] for line in lines if line.ok is False]
        trial.set_user_attr("bundle", str(bundle))
        trial.set_user_attr("fits", not failed)
        trial.set_user_attr("failed", failed)
        trial.set_user_attr("parameters", metrics["parameters"])
        return metrics["accuracy"], metrics["p50_ms"], metrics["size_mb"]

    space = (
        len(config.layers)
        * len(config.quantize)
        * len(config.trim)
        * len(config.cluster)
        * len(config.hidden or [0])
        * len(config.qat)
    )
    target = min(config.trials, space)  # never more distinct recipes than the space holds
    done = len(study.get_trials(deepcopy=False, states=complete))
    if done < target:
        study.optimize(
            objective,
            n_trials=4 * (target - done),  # room for proposals pruned as repeats; stops once `target` are done
            callbacks=[optuna.study.MaxTrialsCallback(target, states=complete)],
        )
    rows = [
        {
            "trial": t.number,
            **_params(t),
            "accuracy": t.values[0],
            "p50_ms": t.values[1],
            "size_mb": t.values[2],
            **t.user_attrs,
        }
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
    ]
    best, verdict = choose(rows, teacher_metrics["accuracy"], config.max_accuracy_drop)
    say(f"chosen: trial {best['trial']} — {verdict}")
    source = Path(best["bundle"])
    manifest = parse_manifest((source / MANIFEST).read_bytes())
    chosen_metrics = steps.measure(source, recipe.eval)
    report = {
        "device": device,
        "teacher": {k: v for k, v in teacher_metrics.items() if k != "predictions"},
        "tolerance_points": config.max_accuracy_drop,
        "storage": storage if config.storage else "sqlite file in the build cache",
        "study": study_name,
        "trials": rows,
        "pareto": _pareto(rows),
        "chosen": best,
        "verdict": verdict,
        "precision": precision(
            _trial_recipe(recipe, best["layers"], best["quantize"], best["trim"], best["cluster"], best.get("hidden"))
        ),
    }
    with atomic_dir(out, force=force) as tmp:
        shutil.copytree(source, tmp / "bundle")
        final = dataclasses.replace(manifest, metrics={k: v for k, v in chosen_metrics.items() if k != "predictions"})
        write_json(tmp / "bundle" / MANIFEST, final.to_dict())
        write_json(tmp / "search.json", report)
    chosen = ("layers", "hidden", "quantize", "trim", "cluster", "qat", "accuracy", "p50_ms", "size_mb")
    say(json.dumps({k: best[k] for k in chosen if k in best}))
    return SearchResult(out, out / "bundle", report)
