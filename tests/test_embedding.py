"""Embedding bundles: built from the base model, checked against the teacher, served in the OpenAI shape."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from edgeslm.bundle import verify_bundle
from edgeslm.cli import app as cli_app
from edgeslm.embedding import EmbeddingConfig, _load, teacher_embeddings
from edgeslm.errors import ConfigError
from edgeslm.runtime import Predictor
from edgeslm.runtime.serve import ServeConfig, Server

TEXTS = ["How do I reset my password?", "reset password please", "book a table for two tonight", ""]


def test_bundle_is_verified_unit_length_and_close_to_the_teacher(tiny_base: Path, tiny_embedding_bundle: Path) -> None:
    manifest, _ = verify_bundle(tiny_embedding_bundle)
    assert manifest.task == "embedding" and manifest.labels == () and manifest.metrics["precision"] == "int8"
    assert manifest.extra["export_check"]["min_cosine"] >= 0.9
    p = Predictor(tiny_embedding_bundle)
    vectors = p.embed(TEXTS)
    assert vectors.shape == (4, manifest.metrics["dim"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    model, folder = _load(tiny_base)
    ref = teacher_embeddings(model, (folder / "tokenizer.json").read_text(), manifest.max_length, TEXTS)
    assert (ref * vectors).sum(1).min() > 0.9  # cosine per sentence against the torch teacher
    with pytest.raises(ConfigError, match="use embed"):
        p.predict("x")


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="max_length"):
        EmbeddingConfig(max_length=4)


def test_openai_embeddings_endpoint(tiny_embedding_bundle: Path) -> None:
    server = Server([("emb", tiny_embedding_bundle)], ServeConfig(port=0, watch_s=0), log=lambda _: None)
    with server.running() as url:
        r = httpx.post(f"{url}/v1/embeddings", json={"input": ["hello", "world"], "model": "emb"})
        default = httpx.post(f"{url}/v1/embeddings", json={"input": "hello"})
        hf = httpx.post(url, json={"inputs": "hello"})  # HF feature-extraction shape: one vector
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "emb" and [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == 6  # [CLS] hello [SEP] + [CLS] world [SEP]
    assert default.status_code == 200 and len(default.json()["data"]) == 1
    vec = np.array(hf.json())
    assert vec.shape == (len(body["data"][0]["embedding"]),)
    np.testing.assert_allclose(vec, default.json()["data"][0]["embedding"], atol=1e-5)
    assert json.loads(r.text)  # plain JSON floats, no NaN


def test_embed_command(tiny_embedding_bundle: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["embed", str(tiny_embedding_bundle), "hello", "world"])
    assert result.exit_code == 0, result.output
    vectors = np.array(json.loads(result.output))
    assert vectors.shape[0] == 2
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    wrong = CliRunner().invoke(cli_app, ["embed", str(tmp_path), "x"])
    assert wrong.exit_code == 1 and "no manifest.json" in wrong.output
