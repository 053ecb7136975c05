"""`edgeslm build`: run a recipe's steps in order, cache each step's output, assemble the bundle and the report.

Each step writes its own folder under ``<out>/../.edgeslm-cache/<step>-<key>``, where the key hashes the step's
config and its input. A re-run (or a run resumed after Ctrl-C) reuses every finished step. The final folder
(``bundle/``, ``report.json``, ``report.html``) appears in one rename at the end, or not at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from ._fs import atomic_dir, write_json
from .bundle import MANIFEST, RUNTIME_VERSION, write_bundle
from .data import load_dataset
from .devices import check_device
from .errors import ConfigError
from .recipe import Int4WeightOnlyConfig, Int8DynamicConfig, Recipe

__all__ = ["BuildResult", "build"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    out: Path
    bundle: Path
    report: dict[str, Any]


def _key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _cached(cache: Path, name: str, key: str, run: Callable[[Path], Path], log: Log) -> tuple[Path, float]:
    """Run a step into ``cache/name-key`` unless that folder already exists (then reuse it)."""
    out = cache / f"{name}-{key}"
    if out.is_dir():
        log(f"[dim]{name}: reusing {out}[/dim]")
        return out, 0.0
    log(f"[bold]{name}[/bold] …")
    t = time.monotonic()
    run(out)
    return out, time.monotonic() - t


def build(recipe: Recipe, out: Path, *, force: bool = False, log: Log | None = None) -> BuildResult:
    """Fine-tune, distill, export, quantize, bundle and measure, as the recipe says. Returns the report."""
    from .compress.distill import distill
    from .compress.quantize import quantize
    from .compress.trim import trim_vocab
    from .evaluate import evaluate
    from .export.onnx import export_onnx
    from .finetune import finetune
    from .models import MINILM_SHA256, resolve_base
    from .report import compare, write_html

    say: Log = log or (lambda _m: None)
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"output `{out}` already exists; choose another path or pass --force to replace it")
    devices = [check_device(recipe.device)] if recipe.device else []
    base = resolve_base(recipe.base)
    dataset = load_dataset(recipe.data)  # fail on bad data before any long step
    say(
        f"data: {dataset.name} from {dataset.source}: {len(dataset.train)} train rows, "
        f"{len(dataset.eval)} {dataset.eval_split} rows, {len(dataset.label_names)} labels"
    )
    cache = out.parent / ".edgeslm-cache"
    base_key = MINILM_SHA256["model.safetensors"] if recipe.base == "minilm" else str(base.resolve())
    timings: dict[str, float] = {}

    def step(name: str, key: str, run: Callable[[Path], Path]) -> Path:
        path, seconds = _cached(cache, name, key, run, say)
        timings[name] = round(seconds, 1)
        return path

    rc = recipe
    k_teacher = _key("finetune", base_key, rc.finetune)
    teacher = step("finetune", k_teacher, lambda o: finetune(base, o, rc.finetune))
    k_student = _key("distill", k_teacher, rc.distill)
    student = step("distill", k_student, lambda o: distill(teacher, o, rc.distill))
    if rc.trim.enabled:
        k_student = _key("trim", k_student, rc.trim)
        untrimmed = student
        student = step("trim", k_student, lambda o: trim_vocab(untrimmed, o, rc.trim))
    k_onnx = _key("export", k_student, rc.export)
    student_onnx = step("export", k_onnx, lambda o: export_onnx(student, o, rc.export))
    k_int8 = _key("quantize", k_onnx, rc.quantize)
    student_int8 = step("quantize", k_int8, lambda o: quantize(student_onnx, o, rc.quantize))
    # The one-click baseline a user would otherwise ship: the teacher, exported and dynamically quantized.
    k_t_onnx = _key("export", k_teacher, rc.export)
    teacher_onnx = step("export-teacher", k_t_onnx, lambda o: export_onnx(teacher, o, rc.export))
    teacher_int8 = step(
        "quantize-teacher",
        _key("quantize", k_t_onnx, Int8DynamicConfig()),
        lambda o: quantize(teacher_onnx, o, Int8DynamicConfig()),
    )

    meta = json.loads((student_int8 / "edgeslm.json").read_text(encoding="utf-8"))
    with atomic_dir(out, force=force) as tmp:
        manifest = write_bundle(
            {"model.onnx": student_int8 / "model.onnx", "tokenizer.json": student_int8 / "tokenizer.json"},
            tmp / "bundle",
            {
                "task": "text-classification",
                "labels": tuple(meta["labels"]),
                "max_length": int(meta["max_length"]),
                "inputs": ("input_ids", "attention_mask", "token_type_ids"),
                "model": "model.onnx",
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
                },
            },
        )
        rows = [
            ("teacher", "fp32", teacher),
            ("teacher one-click", "int8", teacher_int8),
            ("student", "fp32", student_onnx),
            ("student bundle", "int4" if isinstance(rc.quantize, Int4WeightOnlyConfig) else "int8", tmp / "bundle"),
        ]
        measured = []
        for name, precision, path in rows:
            say(f"measuring {name} {precision} …")
            measured.append({"name": name, "precision": precision, **evaluate(path, recipe.eval)})
        report = compare(measured, dataset_name=dataset.name, eval_split=dataset.eval_split)
        report.update(
            {
                "recipe": recipe.to_dict(),
                "data_source": dataset.source,
                "train_rows": len(dataset.train),
                "export_check": meta["export"]["check"],
                "trim_check": (meta.get("trim") or {}).get("check"),
                "training": {"teacher": _train_stats(teacher), "student": _train_stats(student)},
                "step_seconds": timings,
                "artifacts": {
                    name: str(path)
                    for name, path in (
                        ("teacher", teacher),
                        ("teacher_onnx", teacher_onnx),
                        ("teacher_int8", teacher_int8),
                        ("student", student),
                        ("student_onnx", student_onnx),
                        ("student_int8", student_int8),
                    )
                },
                "edgeslm_version": __version__,
            }
        )
        bundle_metrics = next(m for m in report["models"] if m["name"] == "student bundle")
        final = dataclasses.replace(manifest, metrics={k: v for k, v in bundle_metrics.items() if k != "name"})
        write_json(tmp / "bundle" / MANIFEST, final.to_dict())
        write_json(tmp / "report.json", report)
        write_html(report, tmp / "report.html")
    return BuildResult(out, out / "bundle", report)


def _train_stats(checkpoint: Path) -> dict[str, Any]:
    meta = json.loads((checkpoint / "edgeslm.json").read_text(encoding="utf-8"))
    stats: dict[str, Any] = meta.get("train", {})
    return stats
