"""The device runtime: loads a verified bundle with numpy, onnxruntime and tokenizers only (no torch).

The names below load on first use (PEP 562), so a command that only imports ``edgeslm.runtime.cli`` (``edgeslm
--help``) does not pay for onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Prediction", "Predictor", "encode", "load_tokenizer"]

if TYPE_CHECKING:
    from .predictor import Prediction, Predictor, encode, load_tokenizer


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".predictor", __name__), name)
    raise AttributeError(f"module 'edgeslm.runtime' has no attribute {name!r}")
