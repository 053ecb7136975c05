"""The `edgeslm` command: a thin layer over the Python API. User mistakes print one red line, never a traceback."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import ConfigError, EdgeSLMError
from .recipe import QUANTIZE_METHODS, Recipe, load_recipe

app = typer.Typer(
    name="edgeslm",
    help="Distill, quantize and bundle a language model for a device, and prove what was gained and lost.\n\n"
    'Start with `edgeslm build --data sst2 --out out/sst2`, then `edgeslm predict out/sst2/bundle "text"`.',
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(width=None if Console().is_terminal else 120)  # logs and CI get the whole table
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """Turn edgeslm errors into one red line and exit 1; Ctrl-C into a note that nothing half-written was kept."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgeSLMError as e:
            # escaped: messages quote recipe sections (`[qat]`), which rich would read as markup and drop
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted:[/red] nothing half-written was kept; finished steps are cached for a re-run")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


# Options shared by every command that reads data or a recipe.
RecipeOpt = Annotated[Path | None, typer.Option("--recipe", help="TOML recipe; command-line options override it.")]
DataOpt = Annotated[
    str | None,
    typer.Option("--data", help="sst2, clinc150, or a .csv/.tsv/.jsonl file with text and label columns."),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder with sst2/ and clinc150/ [default: $EDGESLM_DATA_DIR, ../shared/data]."),
]
TextColOpt = Annotated[
    str | None, typer.Option("--text-column", help="Text column of a CSV/JSONL file [default: text].")
]
LabelColOpt = Annotated[
    str | None, typer.Option("--label-column", help="Label column of a CSV/JSONL file [default: label].")
]
DevFileOpt = Annotated[Path | None, typer.Option("--dev-file", help="Separate dev file; else a stratified 10% split.")]
RowsOpt = Annotated[int | None, typer.Option("--max-train-rows", help="Train on a stratified subset, for quick runs.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (refused if it exists, unless --force).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")]


def _recipe(
    recipe: Path | None,
    data: str | None,
    data_dir: Path | None,
    text_column: str | None,
    label_column: str | None,
    dev_file: Path | None,
    max_train_rows: int | None,
    **more: Any,
) -> Recipe:
    overrides = {
        "data.name": data,
        "data.data_dir": str(data_dir) if data_dir else None,
        "data.text_column": text_column,
        "data.label_column": label_column,
        "data.dev_path": str(dev_file) if dev_file else None,
        "data.max_train_rows": max_train_rows,
        **more,
    }
    return load_recipe(recipe, overrides)


def _table(report: dict[str, Any]) -> Table:
    table = Table(title=f"{report['dataset']} ({report['eval_split']}): teacher vs student, side by side")
    for col in ("model", "precision", "params", "accuracy", "macro-F1", "p50 ms", "p95 ms", "MB", "RSS MB"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in report["models"]:
        table.add_row(
            m["name"],
            m["precision"].upper(),
            f"{m['parameters'] / 1e6:.1f}M",
            f"{m['accuracy']:.4f}",
            f"{m['macro_f1']:.4f}",
            f"{m['p50_ms']:.2f}",
            f"{m['p95_ms']:.2f}",
            f"{m['size_mb']:.1f}",
            f"{m['peak_rss_mb']:.0f}",
        )
    return table


def _search_table(report: dict[str, Any]) -> None:
    table = Table(title=f"search for {report['device']}: every trial is a real bundle (* = Pareto front)")
    for col in ("trial", "layers", "quantize", "trim", "accuracy", "p50 ms", "MB", "fits"):
        table.add_column(col, justify="right")
    pareto = {r["trial"] for r in report["pareto"]}
    for r in report["trials"]:
        mark = "*" if r["trial"] in pareto else ""
        table.add_row(
            f"{r['trial']}{mark}",
            str(r["layers"]),
            r["quantize"],
            "on" if r["trim"] else "off",
            f"{r['accuracy']:.4f}",
            f"{r['p50_ms']:.2f}",
            f"{r['size_mb']:.2f}",
            "yes" if r["fits"] else "no",
        )
    console.print(table)
    console.print(
        f"teacher accuracy {report['teacher']['accuracy']:.4f}; chosen trial {report['chosen']['trial']}: "
        f"{report['verdict']}"
    )


@app.command()
@_friendly
def build(
    out: OutOpt,
    data: DataOpt = None,
    recipe: RecipeOpt = None,
    base: Annotated[
        str | None, typer.Option("--base", help="minilm (bundled all-MiniLM-L6-v2) or a local BERT folder.")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="Target device profile (see `edgeslm devices`).")
    ] = None,
    layers: Annotated[int | None, typer.Option("--layers", help="Student depth [default: 3].")] = None,
    data_dir: DataDirOpt = None,
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    dev_file: DevFileOpt = None,
    max_train_rows: RowsOpt = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(
            "--max-accuracy-drop",
            help="Search student recipes for --device, keeping accuracy within this many points of the teacher.",
        ),
    ] = None,
    trials: Annotated[int | None, typer.Option("--trials", help="Search trials to reach [default: 8].")] = None,
    storage: Annotated[
        str | None, typer.Option("--storage", help="Optuna storage URL shared by search workers [default: a file].")
    ] = None,
    task: Annotated[
        str,
        typer.Option(
            "--task",
            help="classify: a classifier from labelled data; generate: a text-generation bundle from a GGUF model "
            "(--base FILE.gguf, default SmolLM2-135M-Instruct; more options in `edgeslm generate-build`).",
        ),
    ] = "classify",
    teacher_url: Annotated[
        str | None,
        typer.Option(
            "--teacher-url",
            help="A cloud text-classification URL as a black-box teacher: it labels --unlabeled (cached, within "
            "--budget) and the student learns from its scores.",
        ),
    ] = None,
    unlabeled: Annotated[
        Path | None, typer.Option("--unlabeled", help="Unlabelled texts (.txt, .jsonl, .csv) for --teacher-url.")
    ] = None,
    budget: Annotated[
        int | None, typer.Option("--budget", help="Most cloud requests for --teacher-url, retries included.")
    ] = None,
    rate: Annotated[float, typer.Option("--rate", help="Cloud requests per second at most (--teacher-url).")] = 5.0,
    cacert: Annotated[
        Path | None, typer.Option("--cacert", help="PEM certificate to trust for an https --teacher-url.")
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Fine-tune a teacher, distill a student, export, quantize, bundle, and measure them side by side.

    With --device and --max-accuracy-drop, search student recipes (depth, quantization, vocabulary trim) for the
    fastest bundle that fits the device and keeps the accuracy; the search resumes after an interruption.

    Writes OUT/bundle (model.onnx, tokenizer.json, manifest.json), OUT/report.json and OUT/report.html.
    Finished steps are cached beside OUT, so a re-run or a run resumed after Ctrl-C skips them.
    """
    from .pipeline import build as run_build

    if task == "generate":
        classifier_only = dict(
            data=data, recipe=recipe, device=device, layers=layers, data_dir=data_dir, text_column=text_column,
            label_column=label_column, dev_file=dev_file, max_train_rows=max_train_rows,
            max_accuracy_drop=max_accuracy_drop, trials=trials, storage=storage, teacher_url=teacher_url,
            unlabeled=unlabeled, budget=budget, cacert=cacert,
        )  # fmt: skip
        _build_generate(out, base, force, **classifier_only)
        return
    if task != "classify":
        raise ConfigError(f"--task must be classify or generate, got {task!r}")
    r = _recipe(
        recipe,
        data,
        data_dir,
        text_column,
        label_column,
        dev_file,
        max_train_rows,
        **{
            "base": base,
            "device": device,
            "distill.num_layers": layers,
            "search.max_accuracy_drop": max_accuracy_drop,
            "search.trials": trials,
            "search.storage": storage,
        },
    )
    if teacher_url or unlabeled:
        from .cloud.teacher import cloud_teacher

        r = cloud_teacher(
            r, teacher_url, unlabeled, budget, out, force=force, rate=rate, data=data, text_column=text_column,
            cafile=cacert, log=console.print,
        )  # fmt: skip
    if max_accuracy_drop is not None or trials is not None or storage is not None:
        from .search import search

        if not device:
            raise ConfigError("the accuracy-aware search needs a target: add --device NAME (see `edgeslm devices`)")
        found = search(r, out, device, force=force, log=console.print)
        _search_table(found.report)
        console.print(f"wrote {found.bundle} and {out / 'search.json'}")
        return
    result = run_build(r, out, force=force, log=console.print)
    console.print(_table(result.report))
    ratios = result.report["ratios"]
    console.print(
        f"student INT8 bundle: [bold]{ratios['speedup_p50_vs_teacher_torch']:.1f}×[/bold] faster than the torch "
        f"teacher, {ratios.get('speedup_p50_vs_teacher_ort_int8', float('nan')):.1f}× faster than its one-click ORT "
        f"INT8, {ratios['size_ratio_vs_teacher_fp32']:.1f}× smaller, {100 * ratios['accuracy_kept_vs_teacher']:.1f}% "
        f"of its accuracy"
    )
    console.print(f"wrote {result.bundle}, {out / 'report.json'}, {out / 'report.html'}")


def _build_generate(out: Path, gguf: str | None, force: bool, **unused: object) -> None:
    """`build --task generate`: OUT/bundle from a GGUF, INT4 (the file's own 4-bit blocks), as generate-build does."""
    given = [f"--{name.replace('_', '-')}" for name, value in unused.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to classifiers; --task generate takes --base FILE.gguf only")
    from .generate.build import GenerateConfig, build_generate

    bundle = out / "bundle"
    manifest = build_generate(bundle, GenerateConfig(gguf=gguf), force=force)
    size = sum(f.size for f in manifest.files.values()) / 1e6
    console.print(f'wrote {bundle} (int4, {size:.1f} MB); try: edgeslm generate {bundle} "Hello"')


@app.command()
@_friendly
def finetune(
    out: OutOpt,
    data: DataOpt = None,
    recipe: RecipeOpt = None,
    base: Annotated[str | None, typer.Option("--base", help="minilm or a local BERT folder.")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Passes over the train rows [default: 2].")] = None,
    data_dir: DataDirOpt = None,
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    dev_file: DevFileOpt = None,
    max_train_rows: RowsOpt = None,
    force: ForceOpt = False,
) -> None:
    """Step 1: fine-tune the teacher (full fine-tuning, mean pooling, linear head) into a checkpoint folder."""
    from .finetune import finetune as run
    from .models import resolve_base

    r = _recipe(
        recipe,
        data,
        data_dir,
        text_column,
        label_column,
        dev_file,
        max_train_rows,
        **{"base": base, "finetune.epochs": epochs},
    )
    console.print(f"wrote {run(resolve_base(r.base), out, r.finetune, force=force)}")


@app.command()
@_friendly
def distill(
    teacher: Annotated[Path, typer.Argument(help="Teacher checkpoint folder (from `edgeslm finetune`).")],
    out: OutOpt,
    data: DataOpt = None,
    recipe: RecipeOpt = None,
    layers: Annotated[int | None, typer.Option("--layers", help="Student depth [default: 3].")] = None,
    data_dir: DataDirOpt = None,
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    dev_file: DevFileOpt = None,
    max_train_rows: RowsOpt = None,
    force: ForceOpt = False,
) -> None:
    """Step 2: distill a shallower student from the teacher's layers (soft + hard labels)."""
    from .compress.distill import distill as run

    r = _recipe(
        recipe,
        data,
        data_dir,
        text_column,
        label_column,
        dev_file,
        max_train_rows,
        **{"distill.num_layers": layers},
    )
    console.print(f"wrote {run(teacher, out, r.distill, force=force)}")


@app.command()
@_friendly
def trim(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder (from finetune or distill).")],
    out: OutOpt,
    data: DataOpt = None,
    recipe: RecipeOpt = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Keep at most N pieces [default: all used].")
    ] = None,
    alias: Annotated[
        bool | None,
        typer.Option(
            "--alias/--no-alias",
            help="Keep dropped pieces as aliases of their nearest kept piece: every text splits as before "
            "(not for `convert --format c-array`) [default: the recipe's, off].",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    force: ForceOpt = False,
) -> None:
    """Trim the vocabulary to the pieces the train texts use (tokenizer and embeddings together)."""
    from .compress.trim import trim_vocab

    overrides = {"trim.max_tokens": max_tokens, "trim.alias": alias}
    r = _recipe(recipe, data, data_dir, text_column, label_column, None, None, **overrides)
    path = trim_vocab(checkpoint, out, r.trim, force=force)
    info = json.loads((path / "edgeslm.json").read_text())["trim"]
    check = info["check"]
    console.print(
        f"wrote {path}: vocabulary {info['vocab_before']} -> {info['vocab_after']}; on the eval split "
        f"{check['identical_tokenization']:.1%} of texts split into the same pieces "
        f"({check['identical_ids']:.1%} with no alias, {info['aliases']} aliases), label agreement "
        f"{check['label_agreement']:.1%}"
    )


@app.command()
@_friendly
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder (from finetune or distill).")],
    out: OutOpt,
    data: DataOpt = None,
    recipe: RecipeOpt = None,
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
) -> None:
    """Step 4: export a checkpoint to ONNX and check it against torch on real sentences."""
    from .export.onnx import export_onnx

    r = _recipe(recipe, data, data_dir, None, None, None, None)
    path = export_onnx(checkpoint, out, r.export, force=force)
    check = json.loads((path / "edgeslm.json").read_text())["export"]["check"]
    console.print(
        f"wrote {path}: max |Δlogit| {check['max_abs_diff']:.2e}, label agreement {check['label_agreement']:.3f}"
    )


@app.command()
@_friendly
def quantize(
    model: Annotated[Path, typer.Argument(help="ONNX folder (from `edgeslm export`).")],
    out: OutOpt,
    method: Annotated[str, typer.Option("--method", help=f"One of: {', '.join(QUANTIZE_METHODS)}.")] = "int8-dynamic",
    data: DataOpt = None,
    recipe: RecipeOpt = None,
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
) -> None:
    """Step 3: quantization with onnxruntime: INT8 dynamic, INT8 static (calibrated on real sentences), INT4 weights."""
    from .compress.quantize import quantize as run

    r = _recipe(recipe, data, data_dir, None, None, None, None, **{"quantize.method": method})
    console.print(f"wrote {run(model, out, r.quantize, force=force)}")


@app.command("eval")
@_friendly
def eval_(
    model: Annotated[Path, typer.Argument(help="A bundle, an ONNX folder or a checkpoint folder.")],
    data: DataOpt = None,
    recipe: RecipeOpt = None,
    data_dir: DataDirOpt = None,
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    dev_file: DevFileOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Step 5: accuracy, p50/p95 latency (batch 1, one thread), file size and peak RSS of a model."""
    from .evaluate import evaluate

    r = _recipe(recipe, data, data_dir, text_column, label_column, dev_file, None)
    result = evaluate(model, r.eval)
    result.pop("predictions", None)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{model} on {result['dataset']} ({result['eval_split']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)


# Command groups that live beside their code. Each module defines `register(app: typer.Typer) -> None` and
# imports its heavy libraries inside the commands, so `edgeslm --help` stays fast.
_COMMAND_MODULES: tuple[str, ...] = (
    "edgeslm.devices.cli",
    "edgeslm.secure.cli",
    "edgeslm.ota.cli",
    "edgeslm.runtime.cli",
    "edgeslm.cloud.cli",
    "edgeslm.export.cli",
    "edgeslm.learn.cli",
    "edgeslm.generate.cli",
)


def _register() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: temporary folders removed, finished steps kept


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    app()
