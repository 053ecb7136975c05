"""The one training loop behind `finetune` and `distill`: AdamW, linear warm-up and decay, grouped batches.

Written by hand because it is 60 lines and the alternatives (transformers.Trainer, accelerate) bring their own
config sprawl, checkpoint formats and pickled optimizer state.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from tokenizers import Tokenizer

from .runtime.predictor import encode

Feed = dict[str, torch.Tensor]
LossFn = Callable[[Any, Feed, list[int]], torch.Tensor]  # (model, batch, row indices) -> loss


class TrainSettings(Protocol):
    """What the loop reads from FinetuneConfig or DistillConfig."""

    @property
    def epochs(self) -> float: ...
    @property
    def max_minutes(self) -> float | None: ...
    @property
    def learning_rate(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def warmup(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def freeze_embeddings(self) -> bool: ...
    @property
    def seed(self) -> int: ...


def device() -> torch.device:
    """A CUDA GPU when there is one (it trains a full-data teacher in minutes, not hours); else the CPU.

    ``EDGESLM_DEVICE=cpu`` forces the CPU, e.g. to reproduce a CPU run on a GPU machine.
    """
    name = os.environ.get("EDGESLM_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _LogProgress:
    """Where there is no terminal (logs, CI), a line every 10% instead of a live bar that shows only at the end."""

    def __init__(self) -> None:
        self._tasks: dict[TaskID, dict[str, Any]] = {}

    def __enter__(self) -> _LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: int, info: str = "", visible: bool = True) -> TaskID:
        tid = TaskID(len(self._tasks))
        self._tasks[tid] = {
            "desc": description,
            "total": total,
            "done": 0,
            "next": 0.1,
            "t0": time.monotonic(),
            "visible": visible,
        }
        return tid

    def update(self, tid: TaskID, advance: int = 1, info: str = "", total: int | None = None) -> None:
        t = self._tasks[tid]
        t["total"] = total or t["total"]
        t["done"] += advance
        share = t["done"] / max(1, t["total"])
        if t["visible"] and (share >= t["next"] or t["done"] == t["total"]):
            t["next"] = math.floor(share * 10 + 1) / 10
            print(f"{t['desc']}: {t['done']}/{t['total']} {info} {time.monotonic() - t['t0']:.0f}s", flush=True)


def progress() -> Progress | _LogProgress:
    """A live bar on a terminal, periodic lines elsewhere."""
    if not Console().is_terminal:
        return _LogProgress()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


def to_torch(feed: dict[str, np.ndarray], on: torch.device | None = None) -> Feed:
    return {k: torch.from_numpy(v).to(on or "cpu") for k, v in feed.items()}


def grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort by length inside chunks of 50 batches, shuffle the batches: little padding, still random."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def token_lengths(tokenizer: Tokenizer, texts: Sequence[str]) -> list[int]:
    """Real tokens per text. Counted from the mask: a padding tokenizer pads the whole batch to its longest text,
    so `len(ids)` would give every text the same length and defeat the length-grouped batches."""
    return [sum(e.attention_mask) for e in tokenizer.encode_batch(list(texts))]


_PACE_STEPS = 30  # a time budget re-fits the schedule every this many steps


def _fit_budget(planned: int, step: int, pace: float, remaining: float) -> int:
    """Steps that fit in the time left at ``pace`` (steps/s), so the decay ends at zero instead of being cut off."""
    return min(planned, step + max(1, int(remaining * 0.95 * pace)))


def train(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    settings: TrainSettings,
    loss_fn: LossFn,
    desc: str,
) -> dict[str, Any]:
    """Train ``model`` in place on ``texts`` (labels and targets live in ``loss_fn``); return what happened.

    Training runs on ``device()``; the model comes back on the CPU, in eval mode, with every weight trainable again.
    """
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    on = device()
    if on.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    model.to(on)
    frozen = [model.get_parameter("encoder.embeddings.word_embeddings.weight")] if settings.freeze_embeddings else []
    for p in frozen:
        p.requires_grad_(False)
    lengths = token_lengths(tokenizer, texts)
    per_epoch = math.ceil(len(texts) / settings.batch_size)
    total = planned = max(1, math.ceil(per_epoch * settings.epochs))
    warmup = int(total * settings.warmup)
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.learning_rate,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim,
        lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)),
    )
    deadline = time.monotonic() + settings.max_minutes * 60 if settings.max_minutes else math.inf
    start, step, stopped_early, ema = time.monotonic(), 0, False, None
    t_paced = start
    model.train()
    with progress() as bar:
        task = bar.add_task(desc, total=total, info="")
        while step < total:
            for idx in grouped_batches(lengths, settings.batch_size, rng):
                if step >= total:
                    break
                if time.monotonic() > deadline:
                    stopped_early = True
                    break
                if deadline < math.inf and step and step % _PACE_STEPS == 0:
                    now = time.monotonic()
                    # pace after the first window, which pays for warm-up (CUDA init, allocator growth)
                    paced = (step - _PACE_STEPS) / (now - t_paced) if step > _PACE_STEPS else step / (now - start)
                    t_paced = t_paced if step > _PACE_STEPS else now
                    total = _fit_budget(planned, step, paced, deadline - now)
                    warmup = min(int(planned * settings.warmup), int(total * settings.warmup))
                    bar.update(task, advance=0, total=total)
                feed = to_torch(encode(tokenizer, [texts[i] for i in idx]), on)
                loss = loss_fn(model, feed, idx)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optim.step()
                sched.step()
                step += 1
                ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
                bar.update(task, advance=1, info=f"loss {ema:.4f}")
            if stopped_early:
                break
    for p in frozen:
        p.requires_grad_(True)
    model.cpu().eval()
    return {
        "steps": step,
        "planned_steps": planned,
        "budget_steps": total,  # fewer than planned when max_minutes shortened the schedule
        "epochs_done": round(step / per_epoch, 3),
        "seconds": round(time.monotonic() - start, 1),
        "final_loss": round(ema or 0.0, 5),
        "stopped_early": stopped_early,
        "train_rows": len(texts),
        "device": str(on),
    }


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    batch_size: int = 128,
    desc: str | None = None,
) -> np.ndarray:
    """Logits for ``texts`` in their original order, computed in length-sorted batches (little padding)."""
    model.eval()
    on = next(model.parameters()).device
    lengths = token_lengths(tokenizer, texts)
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out: np.ndarray | None = None
    with progress() as bar:
        task = bar.add_task(desc or "inference", total=len(texts), info="", visible=desc is not None)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            logits = model(**to_torch(encode(tokenizer, [texts[i] for i in idx]), on)).float().cpu().numpy()
            if out is None:
                out = np.zeros((len(texts), logits.shape[1]), dtype=np.float32)
            out[idx] = logits
            bar.update(task, advance=len(idx))
    assert out is not None
    return out
