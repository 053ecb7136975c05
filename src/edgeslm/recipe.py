"""The build recipe: typed, frozen configs with commented defaults, loaded from TOML.

A recipe is data. TOML sections map onto an explicit list of known config types (``_SECTIONS`` and
``QUANTIZE_METHODS``); nothing in a recipe can name code to import.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .errors import ConfigError

__all__ = [
    "ClusterConfig",
    "DataConfig",
    "DistillConfig",
    "EvalConfig",
    "ExportConfig",
    "FinetuneConfig",
    "Int4WeightOnlyConfig",
    "Int8DynamicConfig",
    "Int8StaticConfig",
    "QatConfig",
    "QuantizeConfig",
    "Recipe",
    "SearchConfig",
    "TrimConfig",
    "load_recipe",
]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive(name: str, value: float) -> None:
    _check(value > 0, f"`{name}` must be > 0, got {value!r}")


def _points(name: str, value: float) -> None:
    """An accuracy tolerance: a number >= 0 (NaN fails both comparisons, so it is refused too)."""
    _check(value == value and value >= 0, f"`{name}` must be a number >= 0 (accuracy points), got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Where the labelled text comes from and how it is split."""

    name: str = "sst2"  # "sst2", "clinc150", or a path to a .csv / .jsonl / .tsv file
    data_dir: str | None = None  # folder holding sst2/ and clinc150/; None: $EDGESLM_DATA_DIR, then ../shared/data
    text_column: str = "text"  # column holding the text in CSV/JSONL files
    label_column: str = "label"  # column holding the label in CSV/JSONL files
    dev_path: str | None = None  # a separate dev file for CSV/JSONL; None: a stratified split of the train file
    dev_fraction: float = 0.1  # share of the train file held out as dev when there is no dev file
    eval_split: str | None = (
        None  # named datasets: "dev" or "test"; None: the dataset's usual one (sst2 dev, clinc test)
    )
    max_train_rows: int | None = None  # a stratified random subset of train, for quick runs; None: all rows
    seed: int = 0  # seeds the dev split and the subset

    def __post_init__(self) -> None:
        _check(bool(self.name), "`data.name` must name a dataset (sst2, clinc150) or a file, got ''")
        _check(0 < self.dev_fraction < 1, f"`dev_fraction` must be between 0 and 1, got {self.dev_fraction!r}")
        _check(
            self.eval_split in (None, "dev", "test"),
            f"`eval_split` must be 'dev' or 'test', got {self.eval_split!r}",
        )
        if self.max_train_rows is not None:
            _positive("max_train_rows", self.max_train_rows)


@dataclass(frozen=True)
class FinetuneConfig:
    """Full fine-tuning of the teacher: encoder + mean pooling + a linear head."""

    data: DataConfig = field(default_factory=DataConfig)
    epochs: float = 2.0  # passes over the train rows; fractions allowed
    max_minutes: float | None = None  # stop early (at a step boundary) once this wall time is spent
    learning_rate: float = 5e-5  # AdamW; the usual BERT fine-tuning rate
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of steps with linear warm-up, then linear decay
    batch_size: int = 32
    max_length: int = 64  # tokens per text while training; SST-2 and CLINC150 sentences are shorter
    freeze_embeddings: bool = False  # keep the word-embedding table (half of MiniLM's weights) as pretrained
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "learning_rate", "batch_size", "max_length"):
            _positive(name, getattr(self, name))
        if self.max_minutes is not None:
            _positive("max_minutes", self.max_minutes)
        _check(0 <= self.warmup < 1, f"`warmup` must be in [0, 1), got {self.warmup!r}")


SOFT_TARGETS = ("teacher", "scores")


@dataclass(frozen=True)
class DistillConfig:
    """A shallower student initialised from the teacher's layers, trained on soft + hard labels."""

    data: DataConfig = field(default_factory=DataConfig)
    num_layers: int = 3  # student depth; layers are taken from the teacher, always keeping its top layer
    layers: tuple[int, ...] | None = None  # explicit teacher layer indices; None: spread over the teacher, top kept
    epochs: float = 2.0
    max_minutes: float | None = None
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    batch_size: int = 64
    max_length: int = 64
    temperature: float = 2.0  # softens both distributions; the KL term is scaled by T² (Hinton et al. 2015)
    kd_weight: float = 1.0  # weight of the KL loss against the teacher's soft labels
    ce_weight: float = 0.5  # weight of the cross-entropy on the gold labels
    # weight of the token-masked hidden-state MSE; 0 switches it off. It runs the teacher every step: 3.3x the
    # stage's time on CLINC150 (2 cores), for no gain there (-0.2 pt in-scope, benchmarks/README.md)
    hidden_weight: float = 0.0
    heads: int | None = None  # attention heads kept per layer, the most important on train rows; None: all
    ffn: int | None = None  # FFN neurons kept per layer, likewise; None: all (MiniLM: 12 heads, 1536 neurons)
    importance_rows: int = 2048  # train rows that rank heads and neurons for `heads` / `ffn`
    freeze_embeddings: bool = False  # keep the teacher's word-embedding table: AdamW skips most of a student's weights
    seed: int = 0
    # Where the soft labels come from: "teacher" (the teacher checkpoint's logits) or "scores" (the data file's
    # `scores` column: a black-box cloud teacher's answers, from `edgeslm label` or `build --teacher-url`).
    # Out of the repr, which the build cache keys hash, so every cached step keeps its key (pipeline adds it).
    soft_targets: str = field(default="teacher", repr=False)
    # Extra variants of each train and `unlabelled` text, words swapped for their nearest neighbours in the
    # teacher's embedding table and labelled by the teacher alone (TinyBERT's augmentation, compress/augment.py);
    # 0 is off. Each copy costs one more teacher pass over those texts and one more set of them per epoch. Out of
    # the repr like soft_targets.
    augment: int = field(default=0, repr=False)
    # Only texts of at least this many words get `augment` variants; 0: every text. SST-2's train rows are mostly
    # short phrases (63% under 10 words) while its dev rows, like a device's input, are whole sentences (19.5 words
    # on average): a floor spends the teacher's labelling and the student's steps on sentences. Out of the repr.
    augment_min_words: int = field(default=0, repr=False)
    # Residual-stream width kept (Minitron-style width pruning of embeddings, every layer and the head, channels
    # ranked on train rows like `heads`); a multiple of the teacher's head size (32 for MiniLM); None: the teacher's
    # 384. With hidden_weight > 0 a learned projection maps the student's hidden states to the teacher's width.
    hidden: int | None = field(default=None, repr=False)
    # With `hidden`: distill in two stages, first at the teacher's width (cached as a build of its own), then narrow
    # that trained student and distill it again. SST-2, 384 -> 192 channels: +2.1 points over narrowing the teacher.
    # `hidden_weight` applies to the second stage only (the first is shared with the same recipe without it).
    progressive: bool = field(default=False, repr=False)
    # A UTF-8 file of unlabelled texts, one per line, added to the train set with the teacher's soft labels alone
    # (no gold label): in-domain logs, or text no intent covers, so the student learns what the teacher does with
    # out-of-scope input. None: off. Out of the repr like augment; the build cache keys the file's contents.
    # CLINC150 with 15k WikiText-2 pieces: no gain (-0.3 pt in-scope, OOS recall level); the trim's use of them helped.
    # With 3,251 in-domain requests (its validation split, labels dropped): +0.33 pt in-scope, OOS recall +0.029.
    unlabelled: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check(
            self.soft_targets in SOFT_TARGETS,
            f"`soft_targets` must be one of {', '.join(SOFT_TARGETS)}, got {self.soft_targets!r}",
        )
        for name in ("num_layers", "epochs", "learning_rate", "batch_size", "max_length", "temperature"):
            _positive(name, getattr(self, name))
        for name in ("heads", "ffn", "hidden"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        _positive("importance_rows", self.importance_rows)
        _check(
            isinstance(self.augment, int) and 0 <= self.augment <= 100,
            f"`augment` must be a whole number of copies from 0 to 100, got {self.augment!r}",
        )
        _check(
            isinstance(self.augment_min_words, int) and 0 <= self.augment_min_words <= 1000,
            f"`augment_min_words` must be a whole number of words from 0 to 1000, got {self.augment_min_words!r}",
        )
        _check(
            not (self.augment_min_words and not self.augment),
            "`augment_min_words` picks which texts get `augment` variants, and `augment` is 0: set `augment` too",
        )
        _check(
            not (self.augment and self.soft_targets == "scores"),
            '`augment` needs a local teacher to label the new texts; a black-box teacher (soft_targets = "scores") '
            "labelled only the rows in the data file: label augmented rows with `edgeslm label` instead",
        )
        _check(
            not (self.unlabelled and self.soft_targets == "scores"),
            '`unlabelled` needs a local teacher to label the texts; a black-box teacher (soft_targets = "scores") '
            "labelled only the rows in the data file: label the texts with `edgeslm label` instead",
        )
        two_widths = not self.progressive or self.hidden is not None
        _check(two_widths, "`progressive` distills in two widths: set `hidden` too")
        for name in ("kd_weight", "ce_weight", "hidden_weight"):
            _check(getattr(self, name) >= 0, f"`{name}` must be >= 0, got {getattr(self, name)!r}")
        _check(self.kd_weight + self.ce_weight > 0, "`kd_weight` and `ce_weight` cannot both be 0")
        if self.layers is not None:
            _check(len(self.layers) > 0, "`layers` must list at least one teacher layer")
            _check(min(self.layers) >= 0, f"`layers` must be teacher layer indices >= 0, got {self.layers!r}")
        if self.max_minutes is not None:
            _positive("max_minutes", self.max_minutes)


@dataclass(frozen=True)
class TrimConfig:
    """Vocabulary trimming: keep the wordpieces the train texts (and `unlabelled`) use, plus every character."""

    data: DataConfig = field(default_factory=DataConfig)
    enabled: bool = False  # off by default: not lossless on words train never saw (see `trim` check in the report)
    min_count: int = 1  # keep a piece used at least this often in train
    max_tokens: int | None = None  # keep at most the N most frequent pieces (characters and specials always kept)
    # Dropped pieces stay in the tokenizer as aliases of the kept piece nearest in the embedding table, so every
    # text splits exactly as before and a word train never saw reads as its nearest known word, not as characters.
    # Off by default: the microcontroller C tokenizer (`convert --format c-array`) needs one piece per id. Out of
    # the repr, so the cache keys of earlier trims stay as they were (pipeline adds it when on).
    alias: bool = field(default=False, repr=False)
    # A UTF-8 file of more texts, one per line, whose pieces are kept too: the distill's `unlabelled` texts, or text
    # the device will read that train lacks (CLINC150: out-of-scope words keep their own rows instead of an alias
    # of an intent's: OOS recall 0.266 -> 0.304 with 15k WikiText-2 pieces, for 1.4 MB). None: train's pieces only.
    # Out of the repr; the build cache keys the file's contents.
    unlabelled: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _positive("min_count", self.min_count)
        if self.max_tokens is not None:
            _positive("max_tokens", self.max_tokens)


@dataclass(frozen=True)
class ClusterConfig:
    """Weight sharing: a k-means codebook per weight matrix, centroids fine-tuned against the unclustered student."""

    data: DataConfig = field(default_factory=DataConfig)
    enabled: bool = False  # off by default: a fine-tuning pass that pays off in stored and over-the-air bytes
    bits: int = 4  # each encoder matrix keeps 2^bits distinct values (Deep Compression: 4-5 bits for FC layers)
    embedding_bits: int | None = 6  # the word-embedding table's codebook; None leaves the table unclustered
    entropy_code: bool = True  # store the bundle's model xz-compressed (stdlib lzma; the runtime decodes at load)
    epochs: float = 1.0  # centroid fine-tuning passes over the train rows
    max_minutes: float | None = None
    learning_rate: float = 1e-4
    weight_decay: float = 0.0  # centroids are few and shared; decaying them only shrinks the weights
    warmup: float = 0.1
    batch_size: int = 64
    max_length: int = 64
    temperature: float = 2.0  # of the KL term against the unclustered student's logits
    seed: int = 0

    @property
    def freeze_embeddings(self) -> bool:  # the training loop's field: here the codebooks decide what trains
        return False

    def __post_init__(self) -> None:
        _check(1 <= self.bits <= 8, f"`bits` must be between 1 and 8, got {self.bits!r}")
        if self.embedding_bits is not None:
            _check(
                1 <= self.embedding_bits <= 8, f"`embedding_bits` must be between 1 and 8, got {self.embedding_bits!r}"
            )
        for name in ("epochs", "learning_rate", "batch_size", "max_length", "temperature"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export, checked against torch on real sentences."""

    data: DataConfig = field(default_factory=DataConfig)
    opset: int = 17  # ORT 1.32 runs it; 17 has LayerNormalization as one op
    check_rows: int = 128  # dev sentences used to compare ONNX and torch logits
    # Reshape targets as constants instead of shape arithmetic at run time (export/static_shapes.py): a third
    # fewer nodes in a small student, the same logits
    static_shapes: bool = True
    # Padding as one additive attention bias built once, instead of transformers' mask builder traced into the
    # graph (models.run_layers): 80 fewer nodes, a 2-layer INT8 student 14% faster, the same logits
    padding_bias: bool = True

    def __post_init__(self) -> None:
        _check(13 <= self.opset <= 21, f"`opset` must be between 13 and 21, got {self.opset!r}")
        _positive("check_rows", self.check_rows)


@dataclass(frozen=True)
class Int8DynamicConfig:
    """onnxruntime dynamic quantization: INT8 weights, activations quantized on the fly."""

    per_channel: bool = False  # per-output-channel weight scales; measured no gain on MiniLM here
    keep_float: int = 0  # mixed precision: the N MatMuls whose INT8 moves the logits most stay FP32; 0: all INT8
    data: DataConfig = field(default_factory=DataConfig)  # train rows that rank the MatMuls when keep_float > 0
    calibration_rows: int = 64  # how many

    def __post_init__(self) -> None:
        _check(self.keep_float >= 0, f"`keep_float` must be >= 0, got {self.keep_float!r}")
        _positive("calibration_rows", self.calibration_rows)


@dataclass(frozen=True)
class Int8StaticConfig:
    """onnxruntime static quantization (QDQ), activation ranges calibrated on real train sentences."""

    data: DataConfig = field(default_factory=DataConfig)
    calibration_rows: int = 256  # train sentences run through the model to fix activation ranges
    per_channel: bool = True  # per-channel weight scales keep accuracy in static INT8

    def __post_init__(self) -> None:
        _positive("calibration_rows", self.calibration_rows)


@dataclass(frozen=True)
class Int4WeightOnlyConfig:
    """onnxruntime MatMulNBits: 4-bit block-quantized weights, activations kept in float (or int8 compute)."""

    block_size: int = 32  # weights per scale; smaller blocks keep more accuracy and cost more scales
    symmetric: bool = True  # no zero points: smaller and what the fast kernels expect
    accuracy_level: int = 4  # 4 = int8 compute (VNNI / dot-product kernels); 0 = unset, 1 = fp32
    embeddings: bool = True  # also quantize the embedding Gather (most of a small student's bytes)

    def __post_init__(self) -> None:
        _check(
            self.block_size in (16, 32, 64, 128, 256),
            f"`block_size` must be 16, 32, 64, 128 or 256, got {self.block_size!r}",
        )
        _check(self.accuracy_level in (0, 1, 2, 3, 4), f"`accuracy_level` must be 0-4, got {self.accuracy_level!r}")


_STEPS = ("finetune", "distill", "trim", "cluster", "export", "quantize", "eval")
QuantizeConfig = Int8DynamicConfig | Int8StaticConfig | Int4WeightOnlyConfig
QUANTIZE_METHODS: dict[str, type[Int8DynamicConfig] | type[Int8StaticConfig] | type[Int4WeightOnlyConfig]] = {
    "int8-dynamic": Int8DynamicConfig,
    "int8-static": Int8StaticConfig,
    "int4-weight-only": Int4WeightOnlyConfig,
}


QAT_MODES = ("auto", "always", "off")


@dataclass(frozen=True)
class QatConfig:
    """Quantization-aware training: when INT8 costs the student too much, distill it again with INT8 simulated.

    It continues the distilled (and trimmed) student on the same teacher soft labels and train rows, with the
    rounding of the dynamic INT8 export in every forward pass, then exports and quantizes it again; the bundle keeps
    whichever INT8 student scores higher on the eval split. Other quantization methods have no QAT.
    """

    # "auto": only when dynamic INT8 loses more than `max_drop` accuracy points against the FP32 student on the eval
    # split (the report's accuracy); "always"; "off"
    mode: str = "auto"
    max_drop: float = 0.5  # accuracy points INT8 may cost before QAT runs
    # Passes over the distill train rows (augmented ones included) and their learning rate. SST-2's 192-wide student
    # (benchmarks/README.md): 3 epochs at 1e-4 reached 0.8865 INT8, 1 epoch at 2e-5 0.8784, no QAT 0.8716
    epochs: float = 3.0
    learning_rate: float = 1e-4

    def __post_init__(self) -> None:
        _check(self.mode in QAT_MODES, f"`mode` must be one of {', '.join(QAT_MODES)}, got {self.mode!r}")
        _points("max_drop", self.max_drop)
        for name in ("epochs", "learning_rate"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class EvalConfig:
    """How a model or bundle is measured."""

    data: DataConfig = field(default_factory=DataConfig)
    latency_rows: int = 300  # dev sentences timed one by one (batch 1); accuracy always uses the whole dev set
    warmup_rows: int = 30  # untimed calls first, so caches and allocators settle
    threads: int = 1  # onnxruntime / torch intra-op threads while timing

    def __post_init__(self) -> None:
        for name in ("latency_rows", "threads"):
            _positive(name, getattr(self, name))
        _check(self.warmup_rows >= 0, f"`warmup_rows` must be >= 0, got {self.warmup_rows!r}")


@dataclass(frozen=True)
class SearchConfig:
    """The accuracy-aware search over student recipes (`edgeslm build --device D --max-accuracy-drop X`)."""

    trials: int = 8  # finished trials to reach; a resumed search counts the ones already in its storage
    max_accuracy_drop: float = 0.5  # accuracy points the bundle may lose against the fine-tuned teacher
    layers: tuple[int, ...] = (1, 2, 3)  # student depths to try
    quantize: tuple[str, ...] = ("int8-dynamic", "int4-weight-only")  # quantization methods to try
    trim: tuple[bool, ...] = (False, True)  # with and without vocabulary trimming
    # weight clustering ([cluster] settings): (false, true) lets the search keep it only where its size gain costs
    # no more accuracy than the tolerance (it cost 2.2 points on SST-2, 2 layers); off by default: it trains
    cluster: tuple[bool, ...] = (False,)
    # residual widths to try ([distill] hidden, multiples of the teacher's head size); empty: the recipe's own width
    hidden: tuple[int, ...] = ()
    # quantization-aware training ([qat] settings, int8-dynamic trials only): (false, true) lets the search weigh it;
    # off by default: it trains (3 epochs over the distill rows; +1.5 pt INT8 on SST-2's 192-wide student)
    qat: tuple[bool, ...] = (False,)
    storage: str | None = None  # Optuna storage URL (sqlite:///..., postgresql://...); None: a file beside the output
    seed: int = 0

    def __post_init__(self) -> None:
        _positive("trials", self.trials)
        _points("max_accuracy_drop", self.max_accuracy_drop)
        _check(bool(self.layers) and min(self.layers) > 0, f"`layers` must list depths > 0, got {self.layers!r}")
        for name in ("trim", "cluster", "qat"):
            _check(bool(getattr(self, name)), f"`{name}` must list at least one of false, true")
        _check(all(h > 0 for h in self.hidden), f"`hidden` must list widths > 0, got {self.hidden!r}")
        unknown = [q for q in self.quantize if q not in QUANTIZE_METHODS]
        _check(not unknown, f"`quantize` must name methods from {', '.join(QUANTIZE_METHODS)}, got {unknown!r}")


@dataclass(frozen=True)
class Recipe:
    """Everything `edgeslm build` does, as data. Every field has a default."""

    base: str = "minilm"  # "minilm" (the bundled all-MiniLM-L6-v2) or a local Hugging Face BERT checkpoint folder
    device: str | None = None  # a device profile name (see `edgeslm devices`); recorded as the bundle's target
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    trim: TrimConfig = field(default_factory=TrimConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    quantize: QuantizeConfig = field(default_factory=Int8DynamicConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def __post_init__(self) -> None:
        _check(
            self.qat.mode != "always" or isinstance(self.quantize, Int8DynamicConfig),
            f'`[qat] mode = "always"` simulates int8-dynamic, but `quantize.method` is '
            f'{_method_name(self.quantize)!r}; use method = "int8-dynamic" or qat mode "auto" / "off"',
        )
        # One [data] section feeds every step, so steps can never disagree on the dataset.
        for name in _STEPS:
            step = getattr(self, name)
            if hasattr(step, "data") and step.data != self.data:
                object.__setattr__(self, name, dataclasses.replace(step, data=self.data))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in _STEPS:
            out[name].pop("data", None)
        out["quantize"]["method"] = _method_name(self.quantize)
        return out


def _method_name(config: QuantizeConfig) -> str:
    return next(name for name, cls in QUANTIZE_METHODS.items() if isinstance(config, cls))


# ---------------------------------------------------------------------------------------------------------------
# TOML -> typed configs


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "finetune": FinetuneConfig,
    "distill": DistillConfig,
    "trim": TrimConfig,
    "cluster": ClusterConfig,
    "export": ExportConfig,
    "qat": QatConfig,
    "eval": EvalConfig,
    "search": SearchConfig,
}


def _coerce(where: str, key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type hint; lists become tuples."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        origin = typing.get_origin(option)
        if origin is tuple and isinstance(value, list | tuple):
            (item, *_rest) = typing.get_args(option)
            if all(type(v) is item for v in value):
                return tuple(value)
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option in (int, str, bool) and type(value) is option:
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
    raise ConfigError(f"`{where}{key}` must be {names}, got {value!r}")


def _build(cls: type, where: str, table: dict[str, Any], **extra: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"`[{where.rstrip('.')}]` must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)} - {"data"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"unknown key `{where}{unknown[0]}` in the recipe; known keys: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(where, k, v, hints[k]) for k, v in table.items()}
    return cls(**kwargs, **extra)


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    """Resolve a parsed TOML document against the known config types."""
    raw = dict(raw)
    top = {k: raw.pop(k) for k in ("base", "device") if k in raw}
    quant = dict(raw.pop("quantize", {}))
    sections = {name: raw.pop(name, {}) for name in _SECTIONS}
    if raw:
        known = ", ".join(["base", "device", "quantize", *_SECTIONS])
        raise ConfigError(f"unknown section or key `{sorted(raw)[0]}` in the recipe; known: {known}")
    data = _build(DataConfig, "data.", sections.pop("data"))
    steps = {name: _build(cls, f"{name}.", sections[name]) for name, cls in _SECTIONS.items() if name != "data"}
    method = quant.pop("method", "int8-dynamic")
    if method not in QUANTIZE_METHODS:
        raise ConfigError(f"`quantize.method` must be one of {', '.join(QUANTIZE_METHODS)}, got {method!r}")
    steps["quantize"] = _build(QUANTIZE_METHODS[method], "quantize.", quant)
    for key in ("base", "device"):
        if key in top and not isinstance(top[key], str):
            raise ConfigError(f"`{key}` must be a string, got {top[key]!r}")
    return Recipe(data=data, **top, **steps)


def load_recipe(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a TOML recipe (or the defaults) and apply ``overrides`` given as dotted keys (``"data.name"``)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"recipe `{path}` does not exist; pass an existing TOML file to --recipe") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"recipe `{path}` is not valid TOML ({e}); fix the file") from e
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        table = raw
        for part in parents:
            table = table.setdefault(part, {})
        table[leaf] = value
    return recipe_from_dict(raw)
