"""Generative bundles: a llama-family GGUF -> an ONNX decoder with a KV cache, packaged like the classifiers.

The build side (this package) reads GGUF files and writes ONNX; the device side is ``edgeslm.runtime.generate``.
"""

from .build import GenerateConfig, build_generate

__all__ = ["GenerateConfig", "build_generate"]
