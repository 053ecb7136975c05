"""The microcontroller-sized student ("nano"): a narrow BERT on a trimmed vocabulary, distilled from a teacher.

Why not `distill` with `heads`/`ffn`/`trim`: distill copies teacher layers, so the student keeps the teacher's
width (384). At that width the ~2,000 single-character pieces that trimming always keeps cost 0.77M parameters and
two pruned layers most of the rest, so no useful student fits the 2M an ESP32-S3 / STM32H7 budget allows. The nano
student is narrow (e.g. 2 layers x 128) and learns from the teacher's soft labels. Its word and position embeddings
start from the teacher's, projected onto their top principal components, so a few CPU minutes are enough for it not
to learn words from zero. Its FFN uses ReLU: TFLite Micro runs it natively and int8 fuses it into the matmul.

The recipe is a TOML file: ``teacher`` names the teacher's recipe (its cached teacher is reused, else trained by the
same steps as `edgeslm build`), ``[nano]`` holds `NanoConfig`. The teacher labels ``teacher_rows`` train sentences
with its one-click INT8 ONNX (onnxruntime: fast on a CPU; the fine-tuned torch teacher costs ~20 ms a sentence here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._fs import atomic_dir, write_array
from ..errors import ConfigError, DataError

__all__ = ["NanoConfig", "build_nano", "load_nano_recipe", "param_count"]


@dataclass(frozen=True)
class NanoConfig:
    """The nano student's shape and its distillation; every default is the ESP32-S3 / STM32H7 model measured."""

    hidden: int = 128  # model width; the word table costs vocab x hidden parameters
    layers: int = 2  # encoder layers
    heads: int = 2  # attention heads (hidden must divide by it)
    ffn: int = 512  # FFN width (4 x hidden, as BERT)
    vocab: int = 4000  # the most frequent train wordpieces kept; every single character and special token also
    max_length: int = 64  # tokens per sentence, frozen into the .tflite (SST-2 / CLINC150 sentences are shorter)
    teacher_rows: int = 16000  # train sentences the teacher labels and the student learns from (a random subset)
    epochs: float = 4.0  # passes over those rows
    max_minutes: float | None = 8.0  # wall-time budget for training; the schedule shrinks to fit (edgeslm._train)
    learning_rate: float = 1e-3  # AdamW; higher than fine-tuning: the layers start from random weights
    weight_decay: float = 0.01
    warmup: float = 0.06  # share of steps with linear warm-up, then linear decay
    batch_size: int = 64
    temperature: float = 2.0  # softens both distributions; the KL term is scaled by T^2 (Hinton et al. 2015)
    kd_weight: float = 1.0  # weight of the KL loss against the teacher's soft labels
    ce_weight: float = 0.5  # weight of the cross-entropy on the gold labels
    freeze_embeddings: bool = False  # the projected table is a start, not an answer: train it
    threads: int = 1  # torch threads while training; on a shared 2-core host 2 threads spin-wait (3x slower here)
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            number = isinstance(value, int | float) and not isinstance(value, bool) and f.name != "seed"
            zero_ok = f.name in ("kd_weight", "ce_weight", "weight_decay", "warmup")
            if number and (value < 0 or (value == 0 and not zero_ok)):
                raise ConfigError(f"`nano.{f.name}` must be > 0, got {value!r}")
        if self.hidden % self.heads:
            raise ConfigError(f"`nano.hidden` ({self.hidden}) must be a multiple of `nano.heads` ({self.heads})")
        if self.kd_weight + self.ce_weight <= 0:
            raise ConfigError("`nano.kd_weight` and `nano.ce_weight` cannot both be 0")


def load_nano_recipe(path: Path) -> tuple[Path, NanoConfig]:
    """``(teacher recipe path, NanoConfig)`` from a nano TOML (``teacher = "x.toml"`` + ``[nano]``)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"nano recipe `{path}` does not exist; pass an existing TOML file") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"nano recipe `{path}` is not valid TOML ({e}); fix the file") from e
    unknown = sorted(set(raw) - {"teacher", "nano"})
    if unknown or not isinstance(raw.get("teacher"), str):
        raise ConfigError(f'nano recipe `{path}` takes `teacher = "recipe.toml"` and `[nano]`; got {unknown or raw}')
    table = raw.get("nano", {})
    fields = {f.name: f for f in dataclasses.fields(NanoConfig)}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"unknown key `nano.{key}`; known keys: {', '.join(fields)}")
        default = getattr(NanoConfig(), key)
        ok = value is None or isinstance(value, type(default)) or (isinstance(default, float) and type(value) is int)
        if not ok or isinstance(value, bool) != isinstance(default, bool):
            raise ConfigError(f"`nano.{key}` must be {type(default).__name__}, got {value!r}")
    kwargs: dict[str, Any] = {
        k: float(v) if isinstance(getattr(NanoConfig(), k), float) else v for k, v in table.items()
    }
    config = NanoConfig(**kwargs)
    return (path.parent / raw["teacher"]).resolve(), config


def param_count(checkpoint: Path) -> int:
    """Every stored parameter of a checkpoint (all position rows included), from its safetensors header."""
    from safetensors import safe_open

    with safe_open(str(Path(checkpoint) / "model.safetensors"), "np") as f:
        return int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys() if not k.endswith("position_ids")))  # noqa: SIM118


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def _pca(table: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` principal directions of the teacher's embedding rows (``hidden x width``)."""
    centered = table - table.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return vt[:width].T.astype(np.float32)


def _teacher_logits(onnx_dir: Path, tokenizer_json: str, texts: list[str]) -> np.ndarray:
    """The teacher's logits from onnxruntime, length-sorted batches of 64 (little padding)."""
    import onnxruntime as ort

    from ..runtime.predictor import encode, load_tokenizer, session_options

    session = ort.InferenceSession(
        str(onnx_dir / "model.onnx"), session_options(None), providers=["CPUExecutionProvider"]
    )
    tok = load_tokenizer(tokenizer_json, 64)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), 0), dtype=np.float32)
    for start in range(0, len(order), 64):
        idx = order[start : start + 64]
        (got,) = session.run(None, encode(tok, [texts[i] for i in idx]))
        if out.shape[1] == 0:
            out = np.zeros((len(texts), got.shape[1]), dtype=np.float32)
        out[idx] = got
    return out


def build_nano(teacher_recipe: Path, out: Path, config: NanoConfig, *, cache: Path, force: bool = False) -> Path:
    """Distill the teacher of ``teacher_recipe`` into a nano student checkpoint at ``out``."""
    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertModel

    from .. import _train
    from ..compress.trim import trim_vocab
    from ..models import TextClassifier, load_checkpoint, save_checkpoint
    from ..pipeline import Steps
    from ..recipe import TrimConfig, load_recipe
    from ..runtime.predictor import load_tokenizer

    recipe = load_recipe(teacher_recipe)
    steps = Steps(recipe, cache, print)
    teacher_dir, k_teacher = steps.teacher()
    _, teacher_int8 = steps.one_click(teacher_dir, k_teacher)
    teacher = load_checkpoint(teacher_dir)
    ds = steps.dataset
    if ds.label_names != teacher.labels:
        raise DataError(f"the teacher's labels {list(teacher.labels)[:5]} are not {ds.name}'s; fix `teacher`")
    rows = np.random.default_rng(config.seed).permutation(len(ds.train))[: config.teacher_rows]
    texts = [ds.train.texts[i] for i in rows]
    gold = torch.tensor([ds.train.labels[i] for i in rows])
    teacher_tok = (teacher_dir / "tokenizer.json").read_text(encoding="utf-8")
    cached = cache / f"nano-soft-{_key(str(teacher_int8.resolve()), config.seed, config.teacher_rows)}.npy"
    if not cached.is_file():  # the teacher's labels are most of a CPU build's time: reuse them across runs
        write_array(cached, _teacher_logits(teacher_int8, teacher_tok, texts))
    soft = torch.from_numpy(np.load(cached, allow_pickle=False))

    with tempfile.TemporaryDirectory(prefix="edgeslm-nano-") as tmp:
        trimmed = trim_vocab(teacher_dir, Path(tmp) / "trim", TrimConfig(data=recipe.data, max_tokens=config.vocab))
        trim_meta = json.loads((trimmed / "edgeslm.json").read_text())["trim"]
        table = load_checkpoint(trimmed).model.encoder.embeddings
        words = table.word_embeddings.weight.detach().numpy()
        bert = BertConfig(
            vocab_size=words.shape[0],
            hidden_size=config.hidden,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            intermediate_size=config.ffn,
            hidden_act="relu",
            max_position_embeddings=config.max_length,
            type_vocab_size=2,  # the ONNX export traces with token type 1; our single sentences use 0
            pad_token_id=table.word_embeddings.padding_idx or 0,
        )
        torch.manual_seed(config.seed)
        student = TextClassifier(BertModel(bert, add_pooling_layer=False), len(teacher.labels))
        proj = _pca(words, config.hidden)
        emb = student.encoder.embeddings
        with torch.no_grad():
            emb.word_embeddings.weight.copy_(torch.from_numpy(words @ proj))
            pos = table.position_embeddings.weight.detach().numpy()[: config.max_length]
            emb.position_embeddings.weight.copy_(torch.from_numpy(pos @ proj))
        tokenizer = load_tokenizer((trimmed / "tokenizer.json").read_text(encoding="utf-8"), config.max_length)
        T = config.temperature

        def loss_fn(m: TextClassifier, feed: _train.Feed, idx: list[int]) -> torch.Tensor:
            logits = m(**feed)
            kd = F.kl_div(F.log_softmax(logits / T, -1), F.softmax(soft[idx] / T, -1), reduction="batchmean")
            return config.kd_weight * T * T * kd + config.ce_weight * F.cross_entropy(logits, gold[idx])

        desc = f"nano {config.layers}x{config.hidden} student"
        threads = torch.get_num_threads()
        torch.set_num_threads(config.threads)
        try:
            stats = _train.train(student, tokenizer, texts, config, loss_fn, desc)
        finally:
            torch.set_num_threads(threads)
        meta: dict[str, Any] = {
            "step": "nano",
            "teacher": str(teacher_dir),
            "teacher_labels_from": str(teacher_int8),
            "config": {**dataclasses.asdict(config), "data": dataclasses.asdict(recipe.data)},
            "trim": {k: v for k, v in trim_meta.items() if k != "check"},
            "train": stats,
        }
        with atomic_dir(Path(out), force=force) as dst:
            save_checkpoint(student, dst, trimmed / "tokenizer.json", teacher.labels, config.max_length, meta)
    return Path(out)
