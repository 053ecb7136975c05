"""Device profiles are data files (``*.toml`` beside this module), never code. This module only reads them.

Each profile: ``description``, ``class`` (mcu, sbc, phone, host), ``ram_mb`` and ``storage_mb`` (the model's
budgets), ``runtimes``, ``dtypes``, ``speed_factor`` (times slower than the host; ``nan`` where no source gives
one), ``active_power_w`` (``nan`` where none), optional benchmark figures, and ``sources`` with [P]rimary or
[S]econdary flags, from shared/research/facts_devices_network_energy_price.md. A gap stays ``nan``: never invented.
"""

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
