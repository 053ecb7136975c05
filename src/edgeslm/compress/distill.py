"""Step 2, `distill`: a shallower student initialised from the teacher's layers, trained on its soft labels.

The soft labels are the teacher checkpoint's logits, or (``soft_targets = "scores"``) the probabilities a black-box
cloud teacher returned, read from the data file.

Loss = kd_weight · T² · KL(teacher_T ‖ student_T) + ce_weight · CE(student, gold) [+ hidden_weight · masked MSE of
the student's layer outputs against the teacher layers they were copied from; a student narrowed by ``hidden``
meets them through a learned projection]. With ``augment = N`` the train set gains N word-swapped variants per text
(compress/augment.py) that learn from the teacher's soft labels alone. With ``simulate``, a finished student keeps
distilling while it computes as its INT8 export will (quantization-aware training, compress/qat.py).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import BertModel

from .. import _train
from .._fs import atomic_dir, sha256_file, write_array
from ..data import Split, load_dataset, read_texts
from ..errors import ConfigError, DataError
from ..models import TextClassifier, load_checkpoint, save_checkpoint
from ..recipe import DistillConfig, Int8DynamicConfig
from ..runtime.predictor import encode, load_tokenizer
from . import augment, prune
from .qat import simulated_int8

__all__ = ["distill", "pick_layers", "scores_as_logits"]


def pick_layers(teacher_layers: int, config: DistillConfig) -> tuple[int, ...]:
    """Teacher layers the student starts from: spread from bottom to top, always keeping the top layer.

    The top layer feeds the pooled head; keeping it mattered most in our calibration (research/calibration_distill.md).
    """
    if config.layers is not None:
        bad = [i for i in config.layers if i >= teacher_layers]
        if bad:
            raise ConfigError(
                f"`layers` {list(config.layers)} names layer {bad[0]}, the teacher has 0..{teacher_layers - 1}"
            )
        return tuple(config.layers)
    k = config.num_layers
    if k > teacher_layers:
        raise ConfigError(f"`num_layers` must be at most the teacher's {teacher_layers} layers, got {k}")
    if k == 1:
        return (teacher_layers - 1,)
    return tuple(int(x) for x in np.round(np.linspace(0, teacher_layers - 1, k)))


def make_student(teacher: TextClassifier, layers: tuple[int, ...]) -> TextClassifier:
    config = copy.deepcopy(teacher.encoder.config)
    config.num_hidden_layers = len(layers)
    student = TextClassifier(BertModel(config, add_pooling_layer=False), teacher.head.out_features)
    student.encoder.embeddings.load_state_dict(teacher.encoder.embeddings.state_dict())
    for i, j in enumerate(layers):
        student.encoder.encoder.layer[i].load_state_dict(teacher.encoder.encoder.layer[j].state_dict())
    student.head.load_state_dict(teacher.head.state_dict())
    return student


def _prune(
    student: TextClassifier,
    teacher: TextClassifier,
    layers: tuple[int, ...],
    tokenizer: Tokenizer,
    train: Split,
    config: DistillConfig,
) -> torch.Tensor | None:
    """Narrow the student to the heads, FFN neurons and residual channels that matter most in the teacher."""
    cfg = teacher.encoder.config
    limits = {"heads": (config.heads, cfg.num_attention_heads), "ffn": (config.ffn, cfg.intermediate_size)}
    for name, (value, limit) in limits.items():
        if value is not None and value > limit:
            raise ConfigError(f"`{name}` must be at most the teacher's {limit} per layer, got {value}")
    size = cfg.hidden_size // cfg.num_attention_heads
    if config.hidden is not None and (config.hidden > cfg.hidden_size or config.hidden % size):
        raise ConfigError(
            f"`hidden` must be a multiple of the teacher's head size {size} up to its width {cfg.hidden_size}, "
            f"got {config.hidden}"
        )
    on = next(teacher.parameters()).device
    n = min(config.importance_rows, len(train.texts))
    rows = [int(i) for i in np.random.default_rng(config.seed).permutation(len(train.texts))[:n]]
    gold = torch.tensor(train.labels)
    feeds = [
        (_train.to_torch(encode(tokenizer, [train.texts[i] for i in rows[b : b + 32]]), on), rows[b : b + 32])
        for b in range(0, n, 32)
    ]
    heads, ffn, hidden = prune.importance(teacher, feeds, lambda logits, idx: F.cross_entropy(logits, gold[idx].to(on)))
    keep = list(layers)
    if config.heads or config.ffn:
        prune.narrow(student, heads[keep], ffn[keep], *(value or limit for value, limit in limits.values()))
    return prune.narrow_hidden(student, hidden, config.hidden) if config.hidden else None


def scores_as_logits(path: Path, texts: tuple[str, ...], labels: tuple[str, ...]) -> np.ndarray:
    """A black-box teacher's answers as logits (log-probabilities), one row per text, columns in ``labels`` order.

    The data file's ``scores`` column holds what the cloud returned ({label: probability}); log p is a logit vector
    whose softmax is p again, so the temperature-scaled KL below treats it exactly like a local teacher's logits.
    A label the API left out gets the leftover probability mass, shared evenly.
    """
    by_text: dict[str, object] = {}
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                by_text[str(row.get("text", "")).strip()] = row.get("scores")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise DataError(f"`{path}` could not be read as JSONL with a `scores` column ({e})") from e
    out = np.empty((len(texts), len(labels)), dtype=np.float32)
    for i, text in enumerate(texts):
        scores = by_text.get(text)
        if not isinstance(scores, dict) or not all(isinstance(v, int | float) for v in scores.values()):
            raise DataError(
                f'`{path}` has no `scores` for {text[:40]!r}; `soft_targets = "scores"` needs a JSONL from '
                "`edgeslm label` (text, label, scores per line), or use the teacher's logits"
            )
        p = np.array([float(scores.get(name, np.nan)) for name in labels])
        missing = np.isnan(p)
        p[missing] = max(0.0, 1.0 - float(np.nansum(p))) / max(1, int(missing.sum()))
        out[i] = np.log(np.clip(p / max(p.sum(), 1e-12), 1e-6, None))
    return out


def _augmented(
    teacher: TextClassifier, tokenizer: Tokenizer, texts: tuple[str, ...], config: DistillConfig
) -> list[str]:
    """``config.augment`` word-swapped variants per text of at least ``config.augment_min_words`` words, neighbours
    from the teacher's embedding table."""
    table = teacher.encoder.embeddings.word_embeddings.weight.detach().cpu().float().numpy()
    words = {w.lower() for text in texts for w in text.split()}
    near = augment.neighbours(tokenizer.get_vocab(), table, words)
    return augment.augment(texts, near, config.augment, seed=config.seed, min_words=config.augment_min_words)


def _first_stage(init: Path, layers: tuple[int, ...]) -> TextClassifier:
    ckpt = load_checkpoint(init)
    if ckpt.meta.get("step") != "distill" or tuple(ckpt.meta.get("teacher_layers", ())) != layers:
        raise ConfigError(
            f"`{init}` is not a student of this teacher's layers {list(layers)}; progressive distillation starts "
            "from the first stage that `edgeslm build` distills (the same [distill] without `hidden`)"
        )
    return ckpt.model


def _soft_labels(
    teacher: TextClassifier, tokenizer: Tokenizer, texts: tuple[str, ...], src: Path, cache: Path | None
) -> np.ndarray:
    """The teacher's logits on ``texts``, kept in ``cache`` (the build cache) when one is given.

    Labelling an augmented train set is a large part of a CPU distill (5-13 minutes for SST-2 x 4 here); students
    of other shapes from the same teacher and texts reuse it. Keyed by the teacher's weights and the texts themselves.
    """
    file = None
    if cache is not None:
        digest = hashlib.sha256(sha256_file(Path(src) / "model.safetensors").encode())
        digest.update(f"{tokenizer.truncation}".encode())
        for text in texts:
            digest.update(text.encode() + b"\0")
        file = Path(cache) / f"soft-labels-{digest.hexdigest()[:16]}.npy"
        if file.is_file():
            cached = np.load(file, allow_pickle=False)
            if cached.shape == (len(texts), teacher.head.out_features):
                return cached
    logits = _train.predict_logits(teacher, tokenizer, texts, desc="teacher soft labels")
    if file is not None:
        write_array(file, logits)
    return logits


def _projection(student: TextClassifier, teacher: TextClassifier, kept: torch.Tensor) -> torch.nn.Linear:
    """Student width -> teacher width for the hidden-state loss (TinyBERT's W_h), learned with the student.

    It starts as the width pruning's channel selection, so at step 0 each kept channel meets its own teacher channel.
    """
    proj = torch.nn.Linear(student.encoder.config.hidden_size, teacher.encoder.config.hidden_size, bias=False)
    with torch.no_grad():
        proj.weight.zero_()
        proj.weight[kept, torch.arange(len(kept))] = 1.0
    return proj


def distill(
    src: Path,
    out: Path,
    config: DistillConfig,
    *,
    force: bool = False,
    cache: Path | None = None,
    init: Path | None = None,
    simulate: Int8DynamicConfig | None = None,
) -> Path:
    """Distill the teacher checkpoint ``src`` into a student checkpoint ``out``; ``cache`` keeps soft labels.

    ``init``, a student distilled from the same teacher (progressive distillation's first stage), is where the
    student starts instead of the teacher's layers; only its width is pruned further. With ``simulate`` (QAT),
    ``init`` is a finished, possibly trimmed student: it trains at its own shape, reading the texts with its own
    tokenizer, with that INT8 scheme's rounding in every forward pass, and keeps its metadata (the trim's).
    """
    if simulate is not None and (init is None or config.hidden_weight):
        raise ConfigError(
            "quantization-aware training continues a finished student on the prediction-layer loss: pass `init` "
            "and set `hidden_weight` to 0"
        )
    teacher = load_checkpoint(Path(src))
    dataset = load_dataset(config.data)
    if dataset.label_names != teacher.labels:
        raise DataError(
            f"the teacher in `{src}` was trained on labels {list(teacher.labels)[:5]}…, "
            f"but `{config.data.name}` has {list(dataset.label_names)[:5]}…; distill on the teacher's dataset"
        )
    layers = pick_layers(teacher.model.encoder.config.num_hidden_layers, config)
    student = make_student(teacher.model, layers) if init is None else _first_stage(Path(init), layers)
    tokenizer = load_tokenizer((Path(src) / "tokenizer.json").read_text(encoding="utf-8"), config.max_length)
    texts = dataset.train.texts
    unlabelled = read_texts(Path(config.unlabelled)) if config.unlabelled else ()  # fail before any long step
    on = _train.device()
    teacher.model.to(on)  # for the soft labels, and for the hidden-state targets on every step
    kept = None
    if (config.heads or config.ffn or config.hidden) and simulate is None:
        pruning = config if init is None else dataclasses.replace(config, heads=None, ffn=None)  # done in stage 1
        kept = _prune(student, teacher.model, layers, tokenizer, dataset.train, pruning)
    if config.soft_targets == "scores":
        soft = torch.from_numpy(scores_as_logits(Path(config.data.name), texts, teacher.labels)).to(on)
    else:
        texts = texts + unlabelled
        if config.augment:  # the unlabelled texts are in-domain text too: they get their variants (TinyBERT)
            texts = texts + tuple(_augmented(teacher.model, tokenizer, texts, config))
        soft = torch.from_numpy(_soft_labels(teacher.model, tokenizer, texts, Path(src), cache)).to(on)
    # augmented and unlabelled rows have no gold label (-1): they learn from the teacher alone
    gold = torch.tensor(dataset.train.labels + (-1,) * (len(texts) - len(dataset.train.texts))).to(on)
    T = config.temperature
    # a narrower student meets the teacher's hidden states through a projection, trained with it (a submodule while
    # training), dropped before saving
    proj = _projection(student, teacher.model, kept) if config.hidden_weight and kept is not None else None
    if proj is not None:
        student.hidden_proj = proj

    def loss_fn(m: TextClassifier, feed: _train.Feed, idx: list[int]) -> torch.Tensor:
        pooled, hidden = m.encode(**feed, hidden_states=config.hidden_weight > 0)
        logits = m.head(m.dropout(pooled))
        loss = (
            config.kd_weight
            * T
            * T
            * F.kl_div(F.log_softmax(logits / T, -1), F.softmax(soft[idx] / T, -1), reduction="batchmean")
        )
        labelled = gold[idx] >= 0
        if config.ce_weight and bool(labelled.any()):
            loss = loss + config.ce_weight * F.cross_entropy(logits[labelled], gold[idx][labelled])
        if config.hidden_weight:
            with torch.no_grad():
                _, t_hidden = teacher.model.encode(**feed, hidden_states=True)
            assert hidden is not None and t_hidden is not None
            mask = feed["attention_mask"].unsqueeze(-1).float()
            width = t_hidden[0].shape[-1]
            student_hidden = [proj(h) for h in hidden] if proj is not None else hidden
            mse = sum(
                (((student_hidden[i + 1] - t_hidden[j + 1]) ** 2) * mask).sum() / (mask.sum() * width)
                for i, j in enumerate(layers)
            )
            loss = loss + config.hidden_weight * mse / len(layers)
        return loss

    desc = f"{'quantization-aware ' if simulate else ''}distill {len(layers)}-layer student"
    # QAT reads with the student's tokenizer: a trimmed one maps unseen words to aliases, which the augmented rows
    # (labelled by the teacher on the original text) teach it to read
    qat_from = Path(init) if simulate is not None and init is not None else None
    own = (qat_from or Path(src)) / "tokenizer.json"
    reader = load_tokenizer(own.read_text(encoding="utf-8"), config.max_length) if qat_from else tokenizer
    try:
        with simulated_int8(student, simulate) if simulate else contextlib.nullcontext():
            stats = _train.train(student, reader, texts, config, loss_fn, desc)
    finally:
        if proj is not None:
            del student.hidden_proj
    kept_meta = json.loads((qat_from / "edgeslm.json").read_text(encoding="utf-8")) if qat_from else {}
    meta = {
        **{k: kept_meta[k] for k in ("trim",) if k in kept_meta},
        "step": "distill",
        "teacher": str(src),
        "teacher_layers": list(layers),
        "first_stage": str(init) if init is not None else None,
        "augmented_rows": len(texts) - len(dataset.train.texts) - len(unlabelled),
        "unlabelled_rows": len(unlabelled),
        "simulated": dataclasses.asdict(simulate) if simulate else None,
        "config": dataclasses.asdict(config),
        "train": stats,
    }
    with atomic_dir(Path(out), force=force) as tmp:
        save_checkpoint(student, tmp, own, teacher.labels, teacher.max_length, meta)
    return Path(out)
