"""`edgeslm personalize`: a LoRA adapter for one user's own labelled text, trained on the CPU, shipped on its own.

The user's rows never leave the device; what comes out is ``adapter.safetensors`` + ``adapter.json`` (a few hundred
KB) bound to the base bundle by hash. The before/after accuracy is measured with the runtime itself (the base
bundle vs the base bundle with the adapter merged at load), on rows held out from the user's file.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._fs import write_json
from .._train import train
from ..data import Dataset, load_dataset
from ..errors import ConfigError, DataError
from ..recipe import DataConfig
from .adapter import ADAPTER_MANIFEST
from .lora import LoraSpec, Student, resolve_student, wrap, write_adapter

__all__ = ["PersonalizeConfig", "PersonalizeResult", "personalize"]

MIN_ROWS = 8  # fewer train rows than this is not a user's data, it is a typo


@dataclass(frozen=True)
class PersonalizeConfig:
    """LoRA training on one user's rows (the TrainSettings fields ``edgeslm._train.train`` reads)."""

    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSpec = field(default_factory=LoraSpec)
    epochs: float = 3.0  # a user's file is small: a few passes
    max_minutes: float | None = None  # a phone's charging window; the schedule shrinks to fit
    learning_rate: float = 2e-3  # LoRA takes a larger rate than full fine-tuning (only A/B move)
    weight_decay: float = 0.0  # decay would pull B back to zero, i.e. towards the base
    warmup: float = 0.1
    batch_size: int = 16  # small batches: peak memory is what a phone cares about
    freeze_embeddings: bool = False  # peft already freezes every base weight
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "learning_rate", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"`{name}` must be > 0, got {getattr(self, name)}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"`max_minutes` must be > 0, got {self.max_minutes}")


@dataclass(frozen=True)
class PersonalizeResult:
    adapter: Path
    meta: dict[str, Any]  # adapter.json as written


def _user_rows(dataset: Dataset, labels: tuple[str, ...]) -> tuple[list[str], list[int], list[str], list[int]]:
    """The user's train and held-out rows with labels mapped onto the bundle's label indices."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(dataset.label_names) - set(index))
    if unknown:
        raise DataError(
            f"labels {unknown[:5]} in `{dataset.source}` are not among the bundle's {len(labels)} labels; "
            "an adapter changes how the model answers, not which answers exist"
        )
    mapped = [index[n] for n in dataset.label_names]
    if len(dataset.train) < MIN_ROWS:
        raise DataError(f"`{dataset.source}` has {len(dataset.train)} train rows; personalizing needs >= {MIN_ROWS}")
    return (
        list(dataset.train.texts),
        [mapped[y] for y in dataset.train.labels],
        list(dataset.eval.texts),
        [mapped[y] for y in dataset.eval.labels],
    )


def runtime_accuracy(bundle: Path, texts: list[str], labels: list[int], adapter: Path | None = None) -> float:
    """Accuracy of the bundle as the device runs it (with the adapter merged at load when given)."""
    from ..runtime import Predictor
    from .adapter import AdaptedPredictor

    predictor = AdaptedPredictor(bundle, adapter, threads=1) if adapter else Predictor(bundle, threads=1)
    pred = predictor.logits(texts).argmax(axis=1)
    return float(np.mean(pred == np.asarray(labels))) if labels else float("nan")


def personalize(
    source: Path,
    out: Path,
    config: PersonalizeConfig,
    *,
    checkpoint: Path | None = None,
    force: bool = False,
) -> PersonalizeResult:
    """Train a LoRA adapter for ``source``'s student on ``config.data`` and write it to ``out``."""
    student: Student = resolve_student(Path(source), checkpoint)
    dataset = load_dataset(config.data)
    texts, labels, held_texts, held_labels = _user_rows(dataset, student.checkpoint.labels)
    from ..runtime.predictor import load_tokenizer

    tokenizer = load_tokenizer(
        (student.checkpoint.path / "tokenizer.json").read_text(encoding="utf-8"), student.checkpoint.max_length
    )
    model = wrap(student.checkpoint.model, config.lora, config.seed)
    y = torch.tensor(labels)

    def loss_fn(m: Any, feed: dict[str, torch.Tensor], idx: list[int]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(m(**feed), y[idx].to(feed["input_ids"].device))

    loaded_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # torch, peft, the student: before
    t0 = time.monotonic()
    stats = train(model, tokenizer, texts, config, loss_fn, "personalize")
    seconds = time.monotonic() - t0
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info = {
        "train": {
            **stats,
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(peak_rss_mb, 1),  # the whole process: Python, torch, peft, the student, training
            "peak_rss_before_training_mb": round(loaded_rss_mb, 1),  # the same, before the first step
        },
        "trainable_parameters": int(trainable),
        "config": {**asdict(config), "data": {"name": config.data.name}},
        "user_rows": {"train": len(texts), "held_out": len(held_texts)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta = write_adapter(model, student, Path(out), info, force=force)
    before = runtime_accuracy(student.bundle, held_texts, held_labels)
    after = runtime_accuracy(student.bundle, held_texts, held_labels, Path(out))
    meta["held_out_accuracy"] = {"base": before, "adapted": after, "rows": len(held_texts)}
    write_json(Path(out) / ADAPTER_MANIFEST, meta)  # atomic replace: the file is whole before and after
    return PersonalizeResult(Path(out), meta)
