"""Step 1, `finetune`: the teacher. Full fine-tuning of a base encoder with a mean-pooled linear head."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from . import _train
from ._fs import atomic_dir
from .data import load_dataset
from .models import TextClassifier, new_classifier, save_checkpoint
from .recipe import FinetuneConfig
from .runtime.predictor import load_tokenizer

__all__ = ["finetune"]


def finetune(src: Path, out: Path, config: FinetuneConfig, *, force: bool = False) -> Path:
    """Fine-tune the base model folder ``src`` on ``config.data``; write a classifier checkpoint to ``out``."""
    src = Path(src)
    dataset = load_dataset(config.data)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = new_classifier(src, dataset.label_names)
    tokenizer = load_tokenizer((src / "tokenizer.json").read_text(encoding="utf-8"), config.max_length)
    labels = torch.tensor(dataset.train.labels)

    def loss_fn(m: TextClassifier, feed: _train.Feed, idx: list[int]) -> torch.Tensor:
        logits = m(**feed)
        return F.cross_entropy(logits, labels[idx].to(logits.device))

    stats = _train.train(model, tokenizer, dataset.train.texts, config, loss_fn, "finetune teacher")
    meta = {"step": "finetune", "base": str(src), "config": dataclasses.asdict(config), "train": stats}
    with atomic_dir(Path(out), force=force) as tmp:
        save_checkpoint(model, tmp, src / "tokenizer.json", dataset.label_names, config.max_length, meta)
    return Path(out)
