"""Money and energy per query, from sourced figures only; a figure without a source is reported as a gap (None).

Cost: a cloud price list from ``prices.toml`` (tiered per unit, per token or per hour) against the device's
amortised cost (the bundle's build compute, priced per CPU core-hour, spread over a number of months), and the
monthly volume at which they break even. The device's marginal cost per call (electricity) is not counted: no
sourced electricity price.

Energy: device compute = CPU seconds on the device x the device profile's ``active_power_w``. CPU seconds on the
device = CPU seconds measured here x the profile's ``speed_factor``; where either is ``nan`` the figure is a gap,
and an explicitly labelled "at host speed" figure is given instead when only the speed factor is missing. Radio =
supply voltage x (TX current x time sending + RX current x the rest of the call, listening for the answer), for
devices whose profile has Wi-Fi currents, on the Wi-Fi profile; cellular radio power has no source (a gap).
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["break_even_calls", "device_energy", "load_prices", "monthly_cloud_usd", "radio_energy", "units_per_call"]

HOURS_PER_MONTH = 24 * 365 / 12  # 730: the month hosted endpoints bill by
_PRICES = Path(__file__).parent / "prices.toml"


def load_prices() -> dict[str, dict[str, Any]]:
    return tomllib.loads(_PRICES.read_text(encoding="utf-8"))


def price_entry(name: str) -> dict[str, Any]:
    prices = {k: v for k, v in load_prices().items() if "kind" in v}
    if name not in prices:
        raise ConfigError(f"unknown price list `{name}`; known: {', '.join(prices)}")
    return {"name": name, **prices[name]}


def units_per_call(entry: dict[str, Any], texts: list[str], tokens: list[int]) -> float:
    """Mean billed units per call over these texts (characters rounded up per request, or tokens)."""
    if entry["kind"] == "per_unit":
        per = [max(entry["min_units_per_request"], math.ceil(len(t) / entry["chars_per_unit"])) for t in texts]
        return sum(per) / len(per)
    if entry["kind"] == "per_token":
        return sum(tokens) / len(tokens)
    return 0.0


def monthly_cloud_usd(entry: dict[str, Any], calls: float, units: float) -> float:
    """The month's bill for ``calls`` calls of ``units`` billed units each."""
    if entry["kind"] == "per_hour":
        return float(entry["usd_per_hour"]) * HOURS_PER_MONTH
    total, usd = calls * units, 0.0
    for lo, hi, price in entry["tiers"]:
        if total > lo:
            usd += (min(total, hi) - lo) * price
    return usd


def break_even_calls(entry: dict[str, Any], units: float, device_monthly_usd: float) -> float | None:
    """Calls per month above which the cloud bill exceeds the device's amortised monthly cost; None if never."""
    if monthly_cloud_usd(entry, 1e15, units) <= device_monthly_usd:
        return None
    if monthly_cloud_usd(entry, 0, units) > device_monthly_usd:
        return 0.0
    lo, hi = 0.0, 1e15
    for _ in range(200):  # bisection: the bill is monotone in calls
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if monthly_cloud_usd(entry, mid, units) <= device_monthly_usd else (lo, mid)
    return math.ceil(hi)


def build_cost_usd(build_seconds: float | None, cores: int) -> dict[str, Any]:
    """The one-time compute cost of building the bundle, priced per CPU core-hour (sourced)."""
    entry = load_prices()["build-compute"]
    if build_seconds is None:
        return {"usd": None, "gap": "no build timing found beside the bundle (report.json step_seconds)"}
    usd = build_seconds * cores / 3600 * float(entry["usd_per_core_hour"])
    return {"usd": usd, "build_seconds": build_seconds, "cores": cores, **entry}


def _sourced(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def device_energy(device: dict[str, Any], cpu_seconds_here: float) -> dict[str, Any]:
    """Compute energy per query on ``device`` (joules), or the gap that stops it."""
    speed, power = _sourced(device.get("speed_factor")), _sourced(device.get("active_power_w"))
    gaps = [k for k, v in (("speed_factor", speed), ("active_power_w", power)) if v is None]
    out: dict[str, Any] = {"device": device["name"], "active_power_w": power, "speed_factor": speed, "gaps": gaps}
    out["joules"] = cpu_seconds_here * speed * power if speed is not None and power is not None else None
    out["joules_at_host_speed"] = cpu_seconds_here * power if power is not None else None
    return out


def radio_energy(
    device: dict[str, Any], network: str, up_mbps: float, bytes_sent: float, call_seconds: float
) -> dict[str, Any]:
    """Radio energy per query (joules) for a Wi-Fi device on the Wi-Fi profile; otherwise the gap, named."""
    tx, rx, volts = (_sourced(device.get(k)) for k in ("wifi_tx_ma", "wifi_rx_ma", "supply_v"))
    if network == "loopback":
        return {"joules": None, "gap": "loopback: no radio"}
    if network != "wifi":
        return {"joules": None, "gap": f"no sourced radio power for {network} (cellular/satellite)"}
    if tx is None or rx is None or volts is None:
        return {"joules": None, "gap": f"{device['name']} profile has no sourced Wi-Fi TX/RX current"}
    t_tx = min(bytes_sent * 8 / (up_mbps * 1e6), call_seconds) if math.isfinite(up_mbps) else 0.0
    joules = volts * (tx / 1000 * t_tx + rx / 1000 * (call_seconds - t_tx))
    return {
        "joules": joules,
        "tx_seconds": t_tx,
        "listen_seconds": call_seconds - t_tx,
        "nj_per_byte_sent": volts * tx / 1000 * 8 / (up_mbps * 1e6) * 1e9 if math.isfinite(up_mbps) else None,
        "model": "V x (I_tx x bytes sent / uplink rate + I_rx x rest of the call): the radio listens for the answer",
    }
