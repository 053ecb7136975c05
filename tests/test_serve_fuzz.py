"""Schemathesis against the live server's own OpenAPI document, over real HTTP: no 5xx, no crash.

Every operation is fuzzed with valid bodies (positive) and bodies that break the schema (negative). The pytest
plugin of schemathesis 4.32 does not run under pytest 9, so its strategies drive plain hypothesis here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from conftest import write_tiny_bundle
from edgeslm.runtime.app import Limits
from edgeslm.runtime.serve import ServeConfig, Server

EXAMPLES = 25  # per operation and mode: 6 positive + 4 negative operations x 25, about 15 s here


@pytest.fixture(scope="module")
def api(
    tiny_embedding_bundle: Path, tiny_llama: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Server]]:
    classifier = write_tiny_bundle(tmp_path_factory.mktemp("fuzz") / "bundle")
    config = ServeConfig(port=0, watch_s=0, limits=Limits(max_texts=16, max_text_chars=2_000, max_body_bytes=100_000))
    bundles = [("clf", classifier), ("emb", tiny_embedding_bundle), ("chat", tiny_llama["int4-4"])]
    server = Server(bundles, config, log=lambda _: None)
    with server.running() as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json"), server


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_the_server_fail(api: tuple[Any, Server], mode: GenerationMode) -> None:
    schema, server = api
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    checks = [not_a_server_error, status_code_conformance]
    if mode is GenerationMode.POSITIVE:
        checks.append(response_schema_conformance)
    if mode is GenerationMode.NEGATIVE:  # a GET without parameters has no invalid form
        operations = [op for op in operations if op.method.upper() == "POST"]
    seen: dict[int, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            response = case.call(timeout=30)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            case.validate_response(response, checks=checks)

        run()
    print(f"{mode.value}: status counts {sorted(seen.items())}")
    assert not [code for code in seen if code >= 500]
    assert sum(seen.values()) >= 2 * len(operations)  # it did send requests
    assert server.metrics.render().count(b'status="5') == 0  # the server's own count agrees
