"""The device runtime: loads a verified bundle with numpy, onnxruntime and tokenizers only (no torch)."""

from .predictor import Prediction, Predictor, encode, load_tokenizer

__all__ = ["Prediction", "Predictor", "encode", "load_tokenizer"]
