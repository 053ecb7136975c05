"""edgeslm: move language features from cloud APIs onto devices.

The public API is small and pinned by a test. Steps share one shape, ``step(src, out, config) -> Path``; heavy
modules (torch, transformers) load on first use, so ``import edgeslm`` and ``edgeslm.runtime`` stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import BundleError, ConfigError, DataError, EdgeSLMError, MissingExtraError, ModelError
from .recipe import (
    DataConfig,
    DistillConfig,
    EvalConfig,
    ExportConfig,
    FinetuneConfig,
    Int4WeightOnlyConfig,
    Int8DynamicConfig,
    Int8StaticConfig,
    Recipe,
    load_recipe,
)

__version__ = "0.1.0"

__all__ = [
    "BundleError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DistillConfig",
    "EdgeSLMError",
    "EvalConfig",
    "ExportConfig",
    "FinetuneConfig",
    "Int4WeightOnlyConfig",
    "Int8DynamicConfig",
    "Int8StaticConfig",
    "MissingExtraError",
    "ModelError",
    "Predictor",
    "Recipe",
    "build",
    "distill",
    "evaluate",
    "export_onnx",
    "finetune",
    "load_dataset",
    "load_recipe",
    "quantize",
]

_LAZY = {
    "Predictor": "runtime",
    "build": "pipeline",
    "distill": "compress.distill",
    "evaluate": "evaluate",
    "export_onnx": "export.onnx",
    "finetune": "finetune",
    "load_dataset": "data",
    "quantize": "compress.quantize",
}

if TYPE_CHECKING:
    from .compress.distill import distill
    from .compress.quantize import quantize
    from .data import load_dataset
    from .evaluate import evaluate
    from .export.onnx import export_onnx
    from .finetune import finetune
    from .pipeline import build
    from .runtime import Predictor


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'edgeslm' has no attribute {name!r}")
