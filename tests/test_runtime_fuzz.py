"""Hypothesis against Predictor: whatever text arrives, it answers (finite, normalised) and never raises.

Texts: empty, control characters, lone surrogates (legal in a Python str and in JSON, not in UTF-8), emoji,
mixed scripts, strings of 10^4-10^5 characters, and lists of thousands.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_tiny_bundle
from edgeslm.runtime import Predictor

ANY_CHAR = st.characters(codec=None, categories=None)  # every code point, surrogates and controls included
SCRIPTS = st.sampled_from(
    ["hello", "¿qué?", "привет", "你好世界", "مرحبا", "नमस्ते", "😀👍🏽🇫🇷", "\u200b\u202e", "e\u0301"]
)
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=300),
    st.text(st.characters(codec=None, categories=["Cc", "Cf", "Cs", "Zs", "So"]), max_size=200),
    st.lists(SCRIPTS, max_size=30).map(" ".join),
    st.builds(lambda s, n: s * n, st.text(ANY_CHAR, min_size=1, max_size=4), st.integers(2_500, 25_000)),
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor(write_tiny_bundle(tmp_path_factory.mktemp("fuzz") / "bundle"))


@pytest.fixture(scope="module")
def embedder(tiny_embedding_bundle: Path) -> Predictor:
    return Predictor(tiny_embedding_bundle)


@FAST
@given(texts=st.lists(TEXT, min_size=1, max_size=8))
def test_classifier_answers_any_text(classifier: Predictor, texts: list[str]) -> None:
    preds = classifier.predict(texts)
    assert len(preds) == len(texts)
    for p in preds:
        assert p.label in classifier.labels
        assert np.isfinite(list(p.scores.values())).all()
        assert sum(p.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert classifier.predict(texts[0]).label == preds[0].label


@FAST
@given(texts=st.lists(TEXT, min_size=1, max_size=8))
def test_embedder_answers_any_text(embedder: Predictor, texts: list[str]) -> None:
    vectors = embedder.embed(texts)
    assert vectors.shape[0] == len(texts) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(texts=st.lists(st.text(ANY_CHAR, max_size=40), min_size=2_000, max_size=4_000))
def test_thousands_of_texts_in_one_call(classifier: Predictor, embedder: Predictor, texts: list[str]) -> None:
    assert len(classifier.predict(texts)) == len(texts)
    assert embedder.embed(texts).shape[0] == len(texts)


def test_edges_by_name(classifier: Predictor) -> None:
    assert classifier.predict([]) == []
    for text in ["", "\x00", "\ud800", "\udfff\ud800", "😀" * 10_000, "a" * 1_000_000]:
        assert classifier.predict(text).label in classifier.labels
    assert classifier.truncated(["short", "word " * 100]) == [False, True]
