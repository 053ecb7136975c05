"""Execution providers: try the accelerators asked for, in order, and fall back to the CPU with the reason kept.

A phone build of onnxruntime may offer NNAPI, CoreML, QNN or XNNPACK; a desktop build offers CPU (and CUDA or
DirectML in their own wheels). Asking for a provider this build lacks, or one that cannot build a session for the
graph, is not an error: the model still runs on the CPU, and ``Execution.fallbacks`` says why each faster one was
skipped, so `edgeslm doctor`, /health and the logs can show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnxruntime as ort

from ..errors import BundleError, ConfigError

__all__ = ["ALIASES", "Execution", "build_session", "provider_name"]

CPU = "CPUExecutionProvider"
# Short names accepted by `--provider`, in the order `auto` prefers them when this onnxruntime build offers them.
ALIASES: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "cpu": CPU,
}
# Providers `auto` never picks: they need configuration (Azure calls a remote endpoint) or are experimental here.
_NOT_AUTO = {"AzureExecutionProvider", "JsExecutionProvider", "WebGpuExecutionProvider", "WebNNExecutionProvider"}


@dataclass(frozen=True)
class Execution:
    """Where a session runs, and why it does not run on the providers asked for before it."""

    provider: str  # the provider that owns the graph's nodes first (ORT's get_providers()[0])
    requested: tuple[str, ...]  # full ORT names, in the order they were tried
    fallbacks: tuple[tuple[str, str], ...] = ()  # (provider, reason) for each one skipped

    @property
    def fell_back(self) -> bool:
        return bool(self.fallbacks)


def provider_name(name: str) -> str:
    """``cuda`` or ``CUDAExecutionProvider`` -> ``CUDAExecutionProvider``; ConfigError for a name ORT never had."""
    full = ALIASES.get(name.lower(), name)
    if full not in ort.get_all_providers() and full not in ALIASES.values():
        raise ConfigError(
            f"unknown execution provider `{name}`; use `auto` or one of {', '.join(ALIASES)} "
            "(or a full onnxruntime name such as XnnpackExecutionProvider)"
        )
    return full


def _requested(wanted: Sequence[str] | None) -> list[str]:
    """The providers to try in order; `auto` (or nothing) means every accelerator this build offers, then CPU."""
    names: list[str] = []
    for item in wanted or ("auto",):
        if item.lower() == "auto":
            available = ort.get_available_providers()
            names += [p for p in ALIASES.values() if p in available and p != CPU and p not in _NOT_AUTO]
        else:
            names.append(provider_name(item))
    names = list(dict.fromkeys(names))  # keep the first mention of each
    return [p for p in names if p != CPU] + [CPU]


def build_session(
    model: bytes | str, options: ort.SessionOptions, wanted: Sequence[str] | None = None
) -> tuple[ort.InferenceSession, Execution]:
    """An InferenceSession on the first provider in ``wanted`` that works; CPU last, always.

    ``model`` is the graph's bytes, or a path to a file that was hash-checked through the same open descriptor.

    Raises BundleError only when the CPU itself cannot load the graph (the model is broken, not the device).
    """
    order = _requested(wanted)
    available = set(ort.get_available_providers())
    fallbacks: list[tuple[str, str]] = []
    for provider in order[:-1]:
        if provider not in available:
            fallbacks.append((provider, f"not in this onnxruntime build (it offers {', '.join(sorted(available))})"))
            continue
        try:
            session = ort.InferenceSession(model, options, providers=[provider, CPU])
        except Exception as e:  # each provider raises its own kind; the reason is what matters
            fallbacks.append((provider, f"session build failed: {str(e).splitlines()[0][:200]}"))
            continue
        if session.get_providers()[0] == provider:
            return session, Execution(provider, tuple(order), tuple(fallbacks))
        # ORT drops a provider whose shared libraries do not load, with only a log line; record it.
        fallbacks.append((provider, "onnxruntime dropped it at session build (its libraries did not load)"))
    try:
        session = ort.InferenceSession(model, options, providers=[CPU])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BundleError(f"bundle model does not load on the CPU ({e}); rebuild the bundle") from e
    return session, Execution(CPU, tuple(order), tuple(fallbacks))
