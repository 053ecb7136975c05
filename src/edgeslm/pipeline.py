"""`edgeslm build`: run a recipe's steps in order, cache each step's output, assemble the bundle and the report.

Each step writes its own folder under ``<out>/../.edgeslm-cache/<step>-<key>``, where the key hashes the step's
config and its input. A re-run (or a run resumed after Ctrl-C) reuses every finished step, and so does the
accuracy-aware search, whose trials share the teacher. The final folder (``bundle/``, ``report.json``,
``report.html``) appears in one rename at the end, or not at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from ._fs import atomic_dir, write_json
from .bundle import MANIFEST, RUNTIME_VERSION, Manifest, write_bundle
from .data import Dataset, load_dataset, read_texts
from .devices import check_device
from .errors import ConfigError
from .recipe import DistillConfig, EvalConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Recipe, TrimConfig

__all__ = ["BuildResult", "build"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    out: Path
    bundle: Path
    report: dict[str, Any]


def _key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=_identity).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _identity(part: Any) -> Any:
    """What a cache key sees of ``part``: a config's repr, plus its out-of-repr fields that differ from their defaults.

    Fields added to a config after builds were cached stay out of its repr (``field(repr=False)``), so the keys of
    those builds survive; when such a field is set, it still changes the key.
    """
    if not dataclasses.is_dataclass(part) or isinstance(part, type):
        return str(part)
    unlisted = {
        f.name: getattr(part, f.name)
        for f in dataclasses.fields(part)
        if not f.repr and getattr(part, f.name) != f.default
    }
    return [repr(part), unlisted] if unlisted else repr(part)


def _texts_key(step: str, k: str, config: DistillConfig | TrimConfig) -> str:
    """A step's key that also covers the texts of its ``unlabelled`` file (the config holds only its path)."""
    if not config.unlabelled:
        return _key(step, k, config)
    texts = hashlib.sha256("\0".join(read_texts(Path(config.unlabelled))).encode()).hexdigest()
    if isinstance(config, DistillConfig) and config.augment:
        # since session 10 `augment` makes variants of the unlabelled texts too: builds cached before have other keys
        return _key(step, k, config, texts, "unlabelled augmented")
    return _key(step, k, config, texts)


class Steps:
    """The recipe's steps over one cache folder; every result is a cached folder reused when its key matches."""

    def __init__(self, recipe: Recipe, cache: Path, log: Log) -> None:
        from .models import MINILM_SHA256, resolve_base

        self.recipe, self.cache, self.log = recipe, cache, log
        self.base = resolve_base(recipe.base)
        self.dataset: Dataset = load_dataset(recipe.data)  # fail on bad data before any long step
        for unlabelled in (recipe.distill.unlabelled, recipe.trim.unlabelled):
            if unlabelled:
                read_texts(Path(unlabelled))  # likewise for the unlabelled text files
        self.base_key = MINILM_SHA256["model.safetensors"] if recipe.base == "minilm" else str(self.base.resolve())
        self.teacher_key = _key("finetune", self.base_key, recipe.finetune)
        self.seconds: dict[str, float] = {}

    def step(self, name: str, key: str, run: Callable[[Path], object]) -> tuple[Path, str]:
        """Run ``run(cache/name-key)`` unless that folder exists; a parallel worker finishing it first is fine."""
        out = self.cache / f"{name}-{key}"
        if out.is_dir():
            self.log(f"[dim]{name}: reusing {out}[/dim]")
            self.seconds[name] = 0.0
            return out, key
        self.log(f"[bold]{name}[/bold] …")
        t = time.monotonic()
        try:
            run(out)
        except (ConfigError, OSError):
            if not out.is_dir():  # else another worker (a parallel search) finished the same step first
                raise
        self.seconds[name] = round(time.monotonic() - t, 1)
        return out, key

    def teacher(self) -> tuple[Path, str]:
        from .finetune import finetune

        rc = self.recipe
        return self.step("finetune", self.teacher_key, lambda o: finetune(self.base, o, rc.finetune))

    def one_click(self, teacher: Path, k_teacher: str) -> tuple[Path, Path]:
        """The baseline a user would otherwise ship: the teacher, exported and dynamically quantized."""
        from .compress.quantize import quantize
        from .export.onnx import export_onnx

        rc = self.recipe
        onnx, k = self.step(
            "export-teacher", _key("export", k_teacher, rc.export), lambda o: export_onnx(teacher, o, rc.export)
        )
        int8, _ = self.step(
            "quantize-teacher",
            _key("quantize", k, Int8DynamicConfig()),
            lambda o: quantize(onnx, o, Int8DynamicConfig()),
        )
        return onnx, int8

    def distilled(self, teacher: Path, k_teacher: str, recipe: Recipe | None = None) -> tuple[Path, str]:
        """The student checkpoint alone (a GPU machine trains these; the CPU exports and measures them)."""
        from .compress.distill import distill

        rc = recipe or self.recipe
        init = None
        if rc.distill.progressive:  # its first stage: the same student at the teacher's width
            # The hidden-state loss is kept for the narrowing stage, where its learned projection does the work: at
            # full width it runs the teacher every step (2.4x the stage's time on CLINC150, 2 cores), and without it
            # the first stage is the same cached build as the student's without the loss
            wide = dataclasses.replace(rc.distill, hidden=None, progressive=False, hidden_weight=0.0)
            init, _ = self.distilled(teacher, k_teacher, dataclasses.replace(rc, distill=wide))
        key = _texts_key("distill", k_teacher, rc.distill)
        return self.step("distill", key, lambda o: distill(teacher, o, rc.distill, cache=self.cache, init=init))

    def quantization_aware(self, teacher: Path, ckpt: Path, key: str, rc: Recipe) -> tuple[Path, str]:
        """The (trimmed) student ``ckpt`` distilled once more with its dynamic INT8 rounding simulated."""
        from .compress.distill import distill

        simulate = rc.quantize
        if not isinstance(simulate, Int8DynamicConfig):
            raise ConfigError(
                f"quantization-aware training simulates dynamic INT8, but the recipe quantizes with "
                f'{type(simulate).__name__}; set `[quantize] method = "int8-dynamic"` or `[qat] mode = "off"`'
            )
        q = rc.qat  # prediction-layer loss only: the student's shape and its hidden states are settled
        aware = dataclasses.replace(rc.distill, epochs=q.epochs, learning_rate=q.learning_rate, hidden_weight=0.0)
        return self.step(
            "qat",
            _key("qat", key, aware, simulate.per_channel),
            lambda o: distill(teacher, o, aware, cache=self.cache, init=ckpt, simulate=simulate),
        )

    def student(
        self, teacher: Path, k_teacher: str, recipe: Recipe | None = None, *, qat: bool | None = None
    ) -> dict[str, Path]:
        """Distill, trim, QAT (when ``qat``; by default when `[qat] mode = "always"`), cluster, export and quantize.

        Returns the folders of each stage. QAT follows the trim: it simulates the model that will be quantized, and
        teacher-labelled augmented rows teach it the trimmed tokenizer's aliases.
        """
        from .compress.cluster import cluster
        from .compress.quantize import quantize
        from .compress.trim import trim_vocab
        from .export.onnx import export_onnx

        rc = recipe or self.recipe
        ckpt, k = self.distilled(teacher, k_teacher, rc)
        if rc.trim.enabled:
            untrimmed = ckpt
            ckpt, k = self.step("trim", _texts_key("trim", k, rc.trim), lambda o: trim_vocab(untrimmed, o, rc.trim))
        if rc.qat.mode == "always" if qat is None else qat:
            ckpt, k = self.quantization_aware(teacher, ckpt, k, rc)
        if rc.cluster.enabled:
            unclustered = ckpt
            key = _key("cluster", k, rc.cluster)
            ckpt, k = self.step("cluster", key, lambda o: cluster(unclustered, o, rc.cluster))
        onnx, k = self.step("export", _key("export", k, rc.export), lambda o: export_onnx(ckpt, o, rc.export))
        quantized, _ = self.step("quantize", _key("quantize", k, rc.quantize), lambda o: quantize(onnx, o, rc.quantize))
        return {"student": ckpt, "student_onnx": onnx, "student_quantized": quantized}

    def measure(self, path: Path, config: EvalConfig) -> dict[str, Any]:
        """``evaluate`` in a fresh process, cached beside the model (keyed by the eval config)."""
        from .evaluate import evaluate

        cached = self.cache / f"eval-{_key(str(path.resolve()), config)}.json"
        if path.is_relative_to(self.cache) and cached.is_file():
            result: dict[str, Any] = json.loads(cached.read_text())
            return result
        result = evaluate(path, config)
        if path.is_relative_to(self.cache):
            write_json(cached, result)
        return result


def write_student_bundle(quantized: Path, out: Path, recipe: Recipe, devices: list[dict[str, Any]]) -> Manifest:
    """Package a quantized student folder as a bundle (manifest without metrics; the caller adds them).

    A weight-clustered student is stored entropy-coded (``model.onnx.xz``); the runtime decodes it at load.
    """
    meta = json.loads((quantized / "edgeslm.json").read_text(encoding="utf-8"))
    model = "model.onnx.xz" if recipe.cluster.enabled and recipe.cluster.entropy_code else "model.onnx"
    with tempfile.TemporaryDirectory() as scratch:
        files = {model: quantized / "model.onnx", "tokenizer.json": quantized / "tokenizer.json"}
        if model.endswith(".xz"):
            files[model] = Path(scratch) / model
            files[model].write_bytes(lzma.compress((quantized / "model.onnx").read_bytes(), preset=9))
        return write_bundle(
            files,
            out,
            {
                "task": "text-classification",
                "labels": tuple(meta["labels"]),
                "max_length": int(meta["max_length"]),
                "inputs": ("input_ids", "attention_mask", "token_type_ids"),
                "model": model,
                "tokenizer": "tokenizer.json",
                "min_runtime_version": RUNTIME_VERSION,
                "target_devices": tuple(d["name"] for d in devices),
                "recipe": recipe.to_dict(),
                "extra": {
                    "edgeslm_version": __version__,
                    "teacher_layers": meta.get("teacher_layers"),
                    "export_check": meta["export"]["check"],
                    "quantize": meta["quantize"],
                    "trim": meta.get("trim"),
                    "cluster": meta.get("cluster"),
                },
            },
        )


def precision(recipe: Recipe) -> str:
    return "int4" if isinstance(recipe.quantize, Int4WeightOnlyConfig) else "int8"


def build(recipe: Recipe, out: Path, *, force: bool = False, log: Log | None = None) -> BuildResult:
    """Fine-tune, distill, export, quantize, bundle and measure, as the recipe says. Returns the report."""
    from .report import compare, write_html

    say: Log = log or (lambda _m: None)
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"output `{out}` already exists; choose another path or pass --force to replace it")
    devices = [check_device(recipe.device)] if recipe.device else []
    steps = Steps(recipe, out.parent / ".edgeslm-cache", say)
    ds = steps.dataset
    say(
        f"data: {ds.name} from {ds.source}: {len(ds.train)} train rows, {len(ds.eval)} {ds.eval_split} rows, "
        f"{len(ds.label_names)} labels"
    )
    teacher, k_teacher = steps.teacher()
    student, qat = _quantization_aware(steps, teacher, k_teacher, steps.student(teacher, k_teacher))
    teacher_onnx, teacher_int8 = steps.one_click(teacher, k_teacher)

    with atomic_dir(out, force=force) as tmp:
        manifest = write_student_bundle(student["student_quantized"], tmp / "bundle", recipe, devices)
        rows = [
            ("teacher", "fp32", teacher),
            ("teacher one-click", "int8", teacher_int8),
            ("student", "fp32", student["student_onnx"]),
            ("student bundle", precision(recipe), tmp / "bundle"),
        ]
        measured = []
        for name, prec, path in rows:
            say(f"measuring {name} {prec} …")
            measured.append({"name": name, "precision": prec, **steps.measure(path, recipe.eval)})
        pred = measured[-1]["predictions"]
        names = ds.label_names
        # What the bundle answered at build time: the reference for drift checks on the device (label shares) and
        # golden inputs for the updater's health check (eval texts it got right, with the label it gave).
        label_distribution = {n: sum(p == i for p in pred) / len(pred) for i, n in enumerate(names)}
        golden = [
            {"text": t, "label": names[p]}
            for t, p, g in zip(ds.eval.texts, pred, ds.eval.labels, strict=True)
            if p == g
        ][:3]
        report = compare(measured, dataset_name=ds.name, eval_split=ds.eval_split)
        report.update(
            {
                "recipe": recipe.to_dict(),
                "data_source": ds.source,
                "train_rows": len(ds.train),
                "export_check": manifest.extra["export_check"],
                "trim_check": (manifest.extra.get("trim") or {}).get("check"),
                "qat": qat,
                "training": {"teacher": _train_stats(teacher), "student": _train_stats(student["student"])},
                "step_seconds": steps.seconds,
                "artifacts": {  # absolute: later commands (personalize, federate) run from any folder
                    k: str(Path(v).resolve())
                    for k, v in {
                        "teacher": teacher,
                        "teacher_onnx": teacher_onnx,
                        "teacher_int8": teacher_int8,
                        **student,
                    }.items()
                },
                "edgeslm_version": __version__,
            }
        )
        bundle_metrics = next(m for m in report["models"] if m["name"] == "student bundle")
        final = dataclasses.replace(
            manifest,
            metrics={
                **{k: v for k, v in bundle_metrics.items() if k != "name"},
                "label_distribution": label_distribution,
            },
            extra={**manifest.extra, "golden": golden},
        )
        write_json(tmp / "bundle" / MANIFEST, final.to_dict())
        write_json(tmp / "report.json", report)
        write_html(report, tmp / "report.html")
    return BuildResult(out, out / "bundle", report)


def _quantization_aware(
    steps: Steps, teacher: Path, k_teacher: str, student: dict[str, Path]
) -> tuple[dict[str, Path], dict[str, Any]]:
    """`[qat] mode = "auto"`: when INT8 costs more than ``max_drop`` points, build the QAT student and keep the better.

    Both students are measured on the eval split, the report's accuracy; returns the folders to ship and a record of
    what was measured and chosen.
    """
    rc = steps.recipe
    info: dict[str, Any] = {"mode": rc.qat.mode, "used": rc.qat.mode == "always"}
    if rc.qat.mode != "auto" or not isinstance(rc.quantize, Int8DynamicConfig):
        return student, info

    def points(path: Path) -> float:
        return 100 * float(steps.measure(path, rc.eval)["accuracy"])

    fp32, int8 = points(student["student_onnx"]), points(student["student_quantized"])
    info.update(max_drop=rc.qat.max_drop, ptq_drop_points=round(fp32 - int8, 2))
    if fp32 - int8 <= rc.qat.max_drop:
        steps.log(f"[dim]INT8 cost the student {fp32 - int8:.2f} points (≤ {rc.qat.max_drop}): no QAT needed[/dim]")
        return student, info
    steps.log(f"INT8 cost the student {fp32 - int8:.2f} points (> {rc.qat.max_drop}): quantization-aware training")
    aware = steps.student(teacher, k_teacher, qat=True)
    qat_int8 = points(aware["student_quantized"])
    info.update(
        qat_drop_points=round(points(aware["student_onnx"]) - qat_int8, 2),
        ptq_int8_accuracy=round(int8, 2),
        qat_int8_accuracy=round(qat_int8, 2),
        used=qat_int8 >= int8,
    )
    return (aware if info["used"] else student), info


def _train_stats(checkpoint: Path) -> dict[str, Any]:
    meta = json.loads((checkpoint / "edgeslm.json").read_text(encoding="utf-8"))
    stats: dict[str, Any] = meta.get("train", {})
    return stats
