"""Generative bundles: a llama-family GGUF -> an ONNX decoder with a KV cache, packaged like the classifiers.

The build side (this package) reads GGUF files and writes ONNX; the device side is ``edgeslm.runtime.generate``.
The names below load on first use (PEP 562): the CLI imports ``generate.cli`` without paying for onnx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["GenerateConfig", "build_generate"]

if TYPE_CHECKING:
    from .build import GenerateConfig, build_generate


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".build", __name__), name)
    raise AttributeError(f"module 'edgeslm.generate' has no attribute {name!r}")
