"""Weight sharing, the "Deep Compression" route (Han et al. 2016): each weight matrix keeps 2^bits distinct values.

Every encoder Linear (and, with its own bit width, the word-embedding table) is clustered by 1-D k-means; the
weights become indices into a small codebook. The centroids are then fine-tuned: gathering a shared centroid
for every weight makes autograd sum the gradients of all weights in a cluster, which is the paper's centroid
update. The training target is the unclustered student itself (its logits, computed on the fly, plus the gold
labels), so the step reads only ``src``.

After export and per-tensor INT8 quantization a clustered matrix still holds at most 2^bits distinct bytes, so an
entropy coder stores it in about ``bits`` bits per weight: the bundle's model file is xz-compressed (`bundle`
with ``compress = true``) and the runtime decodes it at load. The in-memory model stays INT8.

Written by hand: no maintained library clusters PyTorch transformer weights (torch's and NNCF's tools prune or
quantize; TF-MOT's weight clustering is Keras-only).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .. import _train
from .._fs import atomic_dir
from ..data import load_dataset
from ..models import TextClassifier, load_checkpoint, save_checkpoint
from ..recipe import ClusterConfig
from ..runtime.predictor import load_tokenizer

__all__ = ["cluster", "kmeans_1d"]


def kmeans_1d(values: Tensor, k: int, iterations: int = 25) -> tuple[Tensor, Tensor]:
    """Centroids (k,) and each value's centroid index; linear initialisation, which keeps the rare large weights."""
    flat = values.detach().flatten().float()
    centroids = torch.linspace(float(flat.min()), float(flat.max()), k)
    for _ in range(iterations):
        idx = _nearest(flat, centroids)
        sums = torch.zeros(k).index_add_(0, idx, flat)
        counts = torch.bincount(idx, minlength=k)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
    return centroids, _nearest(flat, centroids).view(values.shape)


def _nearest(flat: Tensor, sorted_centroids: Tensor) -> Tensor:
    """Index of the nearest centroid: a binary search over the midpoints between sorted centroids."""
    return torch.bucketize(flat, (sorted_centroids[1:] + sorted_centroids[:-1]) / 2)


class _Shared(nn.Module):
    """A parametrization: the weight is ``centroids[idx]``; only the centroids train."""

    def __init__(self, centroids: Tensor, idx: Tensor) -> None:
        super().__init__()
        self.centroids = nn.Parameter(centroids)
        self.idx: Tensor
        self.register_buffer("idx", idx)

    def forward(self, _original: Tensor) -> Tensor:
        return self.centroids[self.idx]


def _targets(model: TextClassifier, config: ClusterConfig) -> list[tuple[Any, int]]:
    """(module with a ``weight``, bits): every encoder Linear, and the word embeddings when asked."""
    layers: list[Any] = list(model.encoder.encoder.layer)  # BertLayer; nn.ModuleList indexing is untyped
    out: list[tuple[Any, int]] = [
        (m, config.bits) for layer in layers for m in layer.modules() if isinstance(m, nn.Linear)
    ]
    if config.embedding_bits:
        out.append((model.encoder.embeddings.word_embeddings, config.embedding_bits))
    return out


def cluster(src: Path, out: Path, config: ClusterConfig, *, force: bool = False) -> Path:
    """Cluster the student checkpoint ``src``'s weights, fine-tune the centroids, write the result to ``out``."""
    ckpt = load_checkpoint(Path(src))
    model = ckpt.model
    dataset = load_dataset(config.data)
    tokenizer = load_tokenizer((ckpt.path / "tokenizer.json").read_text(encoding="utf-8"), config.max_length)
    texts = dataset.train.texts
    on = _train.device()
    reference = copy.deepcopy(model).to(on).eval()  # targets on the fly: a fraction of an epoch is often enough
    gold = torch.tensor(dataset.train.labels).to(on)
    targets = _targets(model, config)
    for p in model.parameters():
        p.requires_grad_(False)  # only the centroids train
    for module, bits in targets:
        centroids, idx = kmeans_1d(module.weight.cpu(), 2**bits)
        parametrize.register_parametrization(module, "weight", _Shared(centroids.to(on), idx.to(on)))
    T = config.temperature

    def loss_fn(m: TextClassifier, feed: _train.Feed, idx: list[int]) -> Tensor:
        logits = m(**feed)
        with torch.no_grad():
            target = reference(**feed)
        kd = F.kl_div(F.log_softmax(logits / T, -1), F.softmax(target / T, -1), reduction="batchmean")
        return T * T * kd + 0.5 * F.cross_entropy(logits, gold[idx])

    stats = _train.train(model, tokenizer, texts, config, loss_fn, f"fine-tune {len(targets)} codebooks")
    for module, _ in targets:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    for p in model.parameters():
        p.requires_grad_(True)
    distinct = [int(module.weight.unique().numel()) for module, _ in targets]
    meta = {
        **ckpt.meta,
        "step": "cluster",
        "clustered_from": str(src),
        "cluster": {**dataclasses.asdict(config), "train": stats, "max_distinct_values": max(distinct)},
    }
    with atomic_dir(Path(out), force=force) as tmp:
        save_checkpoint(model, tmp, ckpt.path / "tokenizer.json", ckpt.labels, ckpt.max_length, meta)
    return Path(out)
