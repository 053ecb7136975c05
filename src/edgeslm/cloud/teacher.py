"""``edgeslm build --teacher-url URL --unlabeled FILE``: the cloud as a black-box teacher, inside the build.

The unlabelled texts go through the labeller of ``edgeslm label`` (rate limit, retries with back-off, a hard
request budget, the SQLite answer cache), and the labelled JSONL (text, top label, every score) becomes the build's
data: the teacher step fine-tunes on the cloud's labels, and the distill step trains the student on the cloud's
scores (``DistillConfig.soft_targets = "scores"``) instead of on the local teacher's logits.

The labelled file lands in the build cache under a name that hashes its content, so every later step's cache key
changes exactly when the cloud's answers do, and a re-run (or a resumed run) pays for no text twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from .._fs import write_bytes
from ..errors import ConfigError
from ..recipe import Recipe
from .label import LabelConfig, LabelResult, label_texts, read_unlabeled

__all__ = ["CACHE_DB", "cloud_teacher", "label_for_build", "with_cloud_labels"]

Log = Callable[[str], None]
CACHE_DB = "cloud-labels.sqlite"  # the answer cache, one per build cache folder, shared by every URL (keyed by it)


def label_for_build(
    teacher_url: str,
    unlabeled: Path,
    cache: Path,
    config: LabelConfig,
    *,
    cafile: Path | None = None,
    log: Log | None = None,
) -> LabelResult:
    """Label ``unlabeled`` through ``teacher_url`` into ``cache/cloud-labels-<content hash>.jsonl``.

    Returns the labeller's result with ``out`` pointing at that file. Raises CloudError when the cloud fails and
    ConfigError when the budget allows no call for texts that are not cached yet.
    """
    texts = read_unlabeled(unlabeled, config.text_column)
    cache.mkdir(parents=True, exist_ok=True)
    part = cache / f".cloud-labels-{os.getpid()}.jsonl.part"  # pid: parallel builds never share a scratch file
    try:
        result = label_texts(teacher_url, texts, part, cache / CACHE_DB, config, cafile=cafile, force=True, log=log)
        labelled = part.read_bytes()
        final = cache / f"cloud-labels-{hashlib.sha256(labelled).hexdigest()[:12]}.jsonl"
        write_bytes(final, labelled)  # atomic and fsynced; same content, same name: a re-run changes nothing
    finally:
        part.unlink(missing_ok=True)
    return dataclasses.replace(result, out=final)


def with_cloud_labels(recipe: Recipe, labelled: Path) -> Recipe:
    """The recipe with the cloud-labelled file as its data and the cloud's scores as the student's soft labels."""
    return dataclasses.replace(
        recipe,
        data=dataclasses.replace(recipe.data, name=str(labelled), text_column="text", label_column="label"),
        distill=dataclasses.replace(recipe.distill, soft_targets="scores"),
    )


def cloud_teacher(
    recipe: Recipe,
    teacher_url: str | None,
    unlabeled: Path | None,
    budget: int | None,
    out: Path,
    *,
    force: bool = False,
    rate: float = 5.0,
    data: str | None = None,
    text_column: str | None = None,
    cafile: Path | None = None,
    log: Log | None = None,
) -> Recipe:
    """What ``build --teacher-url OUT`` does before the steps: check the options, label, point the recipe at it.

    The labels go to the build cache beside ``out`` (``OUT/../.edgeslm-cache``), where the steps' outputs go.
    """
    say: Log = log or (lambda _m: None)
    if not teacher_url or unlabeled is None:
        raise ConfigError("--teacher-url and --unlabeled go together: the cloud labels the texts of --unlabeled")
    if data is not None:
        raise ConfigError("--data and --teacher-url exclude each other: with a cloud teacher, --unlabeled is the data")
    if budget is None:
        raise ConfigError("--teacher-url needs --budget N, the most cloud requests this build may make")
    if out.exists() and not force:  # checked again by the build; here so that no call is made for a refused run
        raise ConfigError(f"output `{out}` already exists; choose another path or pass --force to replace it")
    config = LabelConfig(budget=budget, rate_per_s=rate, text_column=text_column or "text")
    r = label_for_build(teacher_url, unlabeled, out.parent / ".edgeslm-cache", config, cafile=cafile, log=say)
    say(
        f"cloud teacher: {r.labelled}/{r.texts} texts labelled, {r.from_cache} from the cache, {r.requests} requests "
        f"({r.retries} retries) of a budget of {budget}"
        + (f"; [yellow]{r.left} left unlabelled (budget reached)[/yellow]" if r.left else "")
    )
    return with_cloud_labels(recipe, r.out)
