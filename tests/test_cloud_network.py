"""Network profiles (sourced data files) and the loopback emulator, checked by measuring it on real sockets."""

from __future__ import annotations

import math
import socket
import threading
from pathlib import Path

import pytest

from edgeslm.cloud.linkcheck import measure_link
from edgeslm.cloud.network import NetworkProfile, known_profiles, load_profile
from edgeslm.cloud.proxy import RTO_MIN_S, DelayProxy, LinkModel
from edgeslm.errors import ConfigError


def test_every_profile_cites_sources_and_marks_gaps() -> None:
    profiles = known_profiles()
    assert {"wifi", "4g", "3g", "satellite", "flaky", "loopback"} <= set(profiles)
    for p in profiles.values():
        assert p.sources and all(s.strip() for s in p.sources)
        if p.name != "loopback":
            assert all(s.startswith(("[P]", "[S]")) for s in p.sources), p.name
        assert p.gaps == tuple(k for k in ("rtt_ms", "down_mbps", "up_mbps", "loss") if math.isnan(getattr(p, k)))
    # Numbers straight from the research file (facts_devices_network_energy_price.md, section 2).
    assert (profiles["wifi"].rtt_ms, profiles["wifi"].down_mbps, profiles["wifi"].up_mbps) == (13.0, 213.75, 23.71)
    assert (profiles["4g"].rtt_ms, profiles["4g"].down_mbps, profiles["4g"].up_mbps) == (44.1, 21.3, 6.3)
    assert profiles["satellite"].rtt_ms == 600.0
    assert profiles["3g"].gaps == ("rtt_ms", "down_mbps", "up_mbps", "loss") and not profiles["3g"].emulable


def test_gap_and_unknown_profiles_are_refused() -> None:
    with pytest.raises(ConfigError, match="no sourced RTT"):
        LinkModel(load_profile("3g"))
    with pytest.raises(ConfigError, match="unknown network profile `5g`.*known: 3g, 4g"):
        load_profile("5g")


def test_user_profile_file(tmp_path: Path) -> None:
    f = tmp_path / "mine.toml"
    f.write_text('rtt_ms = 80.0\ndown_mbps = 2.0\nup_mbps = 1.0\nloss = nan\nsources = ["measured at home"]\n')
    p = load_profile(str(f))
    assert (p.name, p.rtt_ms, p.gaps) == ("mine", 80.0, ("loss",))
    f.write_text("rtt_ms = 80.0\nsources = []\n")
    with pytest.raises(ConfigError, match="lacks or mistypes"):
        load_profile(str(f))
    f.write_text('rtt_ms = 80.0\ndown_mbps = 2.0\nup_mbps = 1.0\nloss = 1.5\nsources = ["x"]\n')
    with pytest.raises(ConfigError, match="out-of-range"):
        load_profile(str(f))


def _profile(**kw: float) -> NetworkProfile:
    base = {"rtt_ms": 100.0, "down_mbps": 8.0, "up_mbps": 1.0, "loss": 0.0}
    return NetworkProfile(name="t", description="t", sources=("t",), **{**base, **kw})


def test_link_model_arithmetic() -> None:
    m = LinkModel(_profile())
    # 1000 bytes at 1 Mbps = 8 ms on the wire + 50 ms one way; a new connection adds one handshake RTT.
    assert m.arrival("up", 1000, 0.0) == pytest.approx(0.008 + 0.05)
    assert m.arrival("down", 1000, 10.0, new_connection=True) == pytest.approx(10.0 + 0.001 + 0.05 + 0.1)
    # The link is shared: a second chunk queues behind the first.
    m2 = LinkModel(_profile())
    m2.arrival("up", 125_000, 0.0)  # 1 s of wire time
    assert m2.arrival("up", 125, 0.0) == pytest.approx(1.0 + 0.001 + 0.05)
    # Loss: every chunk lost once at p -> expected extra delay p * (RTT + RTO_MIN) to first order.
    lossy = LinkModel(_profile(loss=0.2, down_mbps=math.inf), seed=1)
    delays = [lossy.arrival("down", 1, 0.0) - 0.05 for _ in range(4000)]
    assert sum(d > 0 for d in delays) / len(delays) == pytest.approx(0.2, abs=0.03)
    assert min(d for d in delays if d > 0) == pytest.approx(0.1 + RTO_MIN_S)


def test_rtt_quantiles_are_sampled() -> None:
    m = LinkModel(load_profile("flaky"), seed=0)
    samples = sorted(m.rtt_s() * 1000 for _ in range(4000))
    assert samples[0] >= 20 and samples[-1] <= 60
    assert samples[len(samples) // 2] == pytest.approx(50, abs=2)
    assert samples[len(samples) // 4] == pytest.approx(40, abs=2)


@pytest.mark.parametrize("name", ["wifi", "4g"])
def test_emulation_measures_like_the_profile(name: str) -> None:
    p = load_profile(name)
    r = measure_link(p, pings=10)
    tol = max(5.0, 0.2 * p.rtt_ms)  # ms: timer and scheduling noise on a loaded 2-core host (a delay never shrinks)
    assert r["rtt_ms_p50"] == pytest.approx(p.rtt_ms, abs=tol)
    assert r["setup_ms"] >= 2 * p.rtt_ms - 1  # TCP handshake + first round trip
    assert r["up_mbps"] == pytest.approx(p.up_mbps, rel=0.3)
    assert r["down_mbps"] == pytest.approx(p.down_mbps, rel=0.3)
    assert r["proxy_bytes"]["up"] >= r["payload_bytes"]["up"]
    assert r["proxy_bytes"]["down"] >= r["payload_bytes"]["down"]


def test_proxy_delivers_every_byte_in_order_and_counts_them() -> None:
    data = bytes(range(256)) * 2000  # 512 KB
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        got = bytearray()

        def sink() -> None:
            conn, _ = srv.accept()
            with conn:
                while chunk := conn.recv(65536):
                    got.extend(chunk)

        t = threading.Thread(target=sink)
        t.start()
        with DelayProxy(load_profile("flaky"), srv.getsockname(), seed=3) as proxy:
            with socket.create_connection(("127.0.0.1", proxy.port)) as c:
                c.sendall(data)
            t.join(30)
        assert bytes(got) == data
        assert proxy.stats.bytes_up == len(data) and proxy.stats.connections == 1
