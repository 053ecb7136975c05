"""Device profiles are data files (``*.toml`` beside this module), never code. This module only reads them."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["check_device", "known_devices"]

_HERE = Path(__file__).parent


def known_devices() -> dict[str, dict[str, Any]]:
    """Every profile, by name."""
    return {p.stem: {"name": p.stem, **tomllib.loads(p.read_text())} for p in sorted(_HERE.glob("*.toml"))}


def check_device(name: str) -> dict[str, Any]:
    """The profile called ``name``; a ConfigError listing the known names otherwise."""
    devices = known_devices()
    if name not in devices:
        raise ConfigError(f"unknown device `{name}`; known devices: {', '.join(devices) or 'none'}")
    return devices[name]
