"""Hybrid routing over real loopback HTTP: a second edgeslm server plays the cloud."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import write_tiny_bundle
from edgeslm.errors import ConfigError
from edgeslm.runtime.routing import RoutingConfig
from edgeslm.runtime.serve import ServeConfig, Server


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A "cloud" that answers `pos` for everything, in the Hugging Face shape."""
    bundle = write_tiny_bundle(tmp_path_factory.mktemp("cloud") / "bundle", (-1.0, 1.0))
    with Server([("cloud", bundle)], ServeConfig(port=0, watch_s=0), log=lambda _: None).running() as url:
        yield url


def _device(tmp: Path, weight: tuple[float, float], fallback: str, **kw: float) -> Server:
    """A device server; weight (0, 0) is never sure (0.5/0.5), (1, -1) is always sure of `neg`."""
    bundle = write_tiny_bundle(tmp / "device", weight)
    routing = RoutingConfig(url=fallback, threshold=0.7, **kw)  # type: ignore[arg-type]
    return Server([("device", bundle)], ServeConfig(port=0, watch_s=0, routing=routing), log=lambda _: None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unsure_texts_go_to_the_cloud(cloud: str, tmp_path: Path) -> None:
    with _device(tmp_path, (0.0, 0.0), cloud).running() as url:
        r = httpx.post(url, json={"inputs": ["hmm", "maybe"]})
        metrics = httpx.get(f"{url}/metrics").text
    assert r.status_code == 200 and r.headers["x-edgeslm-route"] == "cloud"
    assert [a[0]["label"] for a in r.json()] == ["pos", "pos"]  # the cloud's answer, not the device's 0.5/0.5
    assert 'edgeslm_routed_texts_total{model="device",path="cloud"} 2.0' in metrics


def test_sure_short_texts_stay_on_the_device_and_long_ones_leave(cloud: str, tmp_path: Path) -> None:
    with _device(tmp_path, (1.0, -1.0), cloud).running() as url:
        r = httpx.post(url, json={"inputs": ["short", "a very long text " * 20]})
    assert r.headers["x-edgeslm-route"] == "mixed"
    assert [a[0]["label"] for a in r.json()] == ["neg", "pos"]  # max_length is 16 tokens: the long one went out


def test_unreachable_cloud_means_the_device_answers(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_free_port()}/"
    with _device(tmp_path, (0.0, 0.0), dead, timeout_s=1.0, cooldown_s=30.0).running() as url:
        first = httpx.post(url, json={"inputs": "hmm"})
        second = httpx.post(url, json={"inputs": "hmm"})  # within the cooldown: no second connection attempt
        metrics = httpx.get(f"{url}/metrics").text
    for r in (first, second):
        assert r.status_code == 200 and r.headers["x-edgeslm-route"] == "device_fallback"
        assert r.json()[0][0]["score"] == pytest.approx(0.5)
    assert 'edgeslm_routed_texts_total{model="device",path="device_fallback"} 2.0' in metrics


def test_a_cloud_answer_in_the_wrong_shape_is_not_trusted(cloud: str, tmp_path: Path) -> None:
    with _device(tmp_path, (0.0, 0.0), f"{cloud}/health").running() as url:  # GET-only route: 405, then not JSON
        r = httpx.post(url, json={"inputs": "hmm"})
    assert r.status_code == 200 and r.headers["x-edgeslm-route"] == "device_fallback"


def test_routing_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="http"):
        RoutingConfig(url="ftp://x")
    with pytest.raises(ConfigError, match="threshold"):
        RoutingConfig(url="http://x", threshold=1.5)
