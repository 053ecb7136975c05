"""The one exception tree of edgeslm.

    EdgeSLMError            anything edgeslm raises on purpose; the CLI prints its message as one red line
    ├── ConfigError         a recipe, option or config value is invalid
    ├── DataError           a dataset is missing, empty, or does not have the shape a task needs
    ├── ModelError          a base model or checkpoint cannot be found, verified or loaded
    ├── BundleError         a bundle is missing a file, fails a hash check, or has an unknown format
    │   └── SignatureError  a bundle's manifest.sig is missing or does not verify against the trusted keys
    ├── UpdateError         an over-the-air update was refused or failed (the old model keeps serving)
    ├── ServeError          the local server cannot start (bad bundle, port in use, bad limits)
    ├── CloudError          a cloud endpoint failed: refused, timed out, HTTP error, or an answer of the wrong shape
    └── MissingExtraError   an optional dependency is not installed (the message names the pip install)

Every message says what happened, why, and how to fix it. Foreign exceptions are wrapped with ``raise ... from e``.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "CloudError",
    "ConfigError",
    "DataError",
    "EdgeSLMError",
    "MissingExtraError",
    "ModelError",
    "ServeError",
    "SignatureError",
    "UpdateError",
]


class EdgeSLMError(Exception):
    """Base class of every error edgeslm raises on purpose."""


class ConfigError(EdgeSLMError, ValueError):
    """A recipe, option or config value is invalid."""


class DataError(EdgeSLMError):
    """A dataset is missing, empty, or unusable for the task."""


class ModelError(EdgeSLMError):
    """A base model or checkpoint cannot be found, verified or loaded."""


class BundleError(EdgeSLMError):
    """A bundle is incomplete, tampered with, malformed, or of an unknown format version."""


class SignatureError(BundleError):
    """A bundle's signature is missing or does not verify against the trusted keys."""


class UpdateError(EdgeSLMError):
    """An over-the-air update was refused or failed; the installed model keeps serving."""


class ServeError(EdgeSLMError):
    """The local inference server cannot start."""


class CloudError(EdgeSLMError):
    """A cloud endpoint refused, timed out, failed, or answered in a shape or label set edgeslm cannot use."""


class MissingExtraError(EdgeSLMError, ImportError):
    """An optional dependency is missing; the message names the ``pip install`` that fixes it."""


def require(module: str, extra: str) -> None:
    """Fail with an actionable message when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(
            f"`{module}` is not installed, and this command needs it; fix: pip install 'edgeslm[{extra}]'"
        )
