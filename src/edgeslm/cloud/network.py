"""Network profiles are data files (``profiles/*.toml``), each number with its published source; this reads them.

Fields: ``rtt_ms`` (median round trip), ``down_mbps`` / ``up_mbps`` (bandwidth each way), ``loss`` (probability
that a chunk is lost once and resent after a retransmission time-out), ``rtt_quantiles_ms`` (optional measured
spread as ``[quantile, ms]`` pairs), ``sources``. ``nan`` marks a gap (no source found): a gap in the RTT makes the
profile refuse to emulate; a gap in bandwidth or loss means that effect is not emulated (and the report says so).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["NetworkProfile", "known_profiles", "load_profile"]

_HERE = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class NetworkProfile:
    name: str
    description: str
    rtt_ms: float  # median round trip; nan = no source
    down_mbps: float  # server -> client bandwidth; inf = not limited, nan = no source (not limited)
    up_mbps: float  # client -> server bandwidth
    loss: float  # chance a chunk is lost once (costs a retransmission time-out); nan = no source (no loss)
    rtt_quantiles_ms: tuple[tuple[float, float], ...] = ()  # measured spread; empty = constant RTT
    sources: tuple[str, ...] = ()
    path: str = ""  # the file it was read from
    gaps: tuple[str, ...] = field(default=())  # fields with no source, for the report

    @property
    def emulable(self) -> bool:
        """Whether the profile has a sourced RTT to emulate (a bandwidth or loss gap only drops that effect)."""
        return not math.isnan(self.rtt_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "rtt_ms": _num(self.rtt_ms),
            "down_mbps": _num(self.down_mbps),
            "up_mbps": _num(self.up_mbps),
            "loss": _num(self.loss),
            "rtt_quantiles_ms": [list(q) for q in self.rtt_quantiles_ms],
            "sources": list(self.sources),
            "gaps": list(self.gaps),
        }


def _num(x: float) -> float | str | None:
    """JSON has no nan or inf: a gap becomes null, an unlimited link the string "inf"."""
    if math.isnan(x):
        return None
    return "inf" if math.isinf(x) else x


def known_profiles() -> dict[str, NetworkProfile]:
    """Every shipped profile, by name."""
    return {p.stem: _read(p) for p in sorted(_HERE.glob("*.toml"))}


def load_profile(name_or_path: str) -> NetworkProfile:
    """A shipped profile by name, or a profile file of the user's own (same fields)."""
    shipped = _HERE / f"{name_or_path}.toml"
    if shipped.is_file():
        return _read(shipped)
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return _read(path)
    raise ConfigError(
        f"unknown network profile `{name_or_path}`; known: {', '.join(known_profiles())}, "
        "or pass a .toml file with rtt_ms, down_mbps, up_mbps, loss and sources"
    )


def _read(path: Path) -> NetworkProfile:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"network profile `{path}` is not readable TOML ({e}); fix the file") from e
    try:
        values = {k: float(raw[k]) for k in ("rtt_ms", "down_mbps", "up_mbps", "loss")}
        quantiles = tuple((float(q), float(ms)) for q, ms in raw.get("rtt_quantiles_ms", []))
        sources = tuple(str(s) for s in raw["sources"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(
            f"network profile `{path}` lacks or mistypes {e}; it needs rtt_ms, down_mbps, up_mbps, loss (numbers, "
            "nan for a gap) and sources (a list of strings)"
        ) from e
    if not sources:
        raise ConfigError(f"network profile `{path}` names no source; every number needs one")
    bad = [k for k, v in values.items() if v < 0 or (k == "loss" and v >= 1)]
    if bad or any(not 0 <= q <= 1 or ms < 0 for q, ms in quantiles):
        raise ConfigError(f"network profile `{path}` has out-of-range values ({', '.join(bad) or 'quantiles'})")
    if quantiles and [q for q, _ in quantiles] != sorted(q for q, _ in quantiles):
        raise ConfigError(f"network profile `{path}`: rtt_quantiles_ms must be sorted by quantile")
    return NetworkProfile(
        name=path.stem,
        description=str(raw.get("description", path.stem)),
        rtt_quantiles_ms=quantiles,
        sources=sources,
        path=str(path),
        gaps=tuple(k for k, v in values.items() if math.isnan(v)),
        **values,
    )
