"""Extractive summaries by sentence-embedding centrality: splitting, PageRank, picking, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeslm.cli import app as cli_app
from edgeslm.errors import ConfigError, DataError
from edgeslm.runtime import Predictor
from edgeslm.runtime.summarize import SummaryConfig, centrality, split_sentences, summarize

NOTE = (
    "Team sync, 14 March. We agreed to ship the offline mode in the April release. Anna will finish the offline "
    "sync engine by the end of the month. The offline mode needs the local database migration first, so Ben starts "
    "on it tomorrow. Lunch was pizza again. Testing of offline mode will run on three phones, e.g. a Pixel 7 and two "
    "older Android devices. Marketing wants a short demo video of offline mode for the launch. Someone should fix "
    "the coffee machine."
)


def test_split_sentences_keeps_abbreviations_and_splits_lists() -> None:
    parts = split_sentences(NOTE)
    assert (
        len(parts) == 8 and parts[0] == "Team sync, 14 March." and parts[-1] == "Someone should fix the coffee machine."
    )
    assert any("e.g. a Pixel 7" in p for p in parts)
    assert split_sentences("Intro line\n- first item\n- second item\n\nNew paragraph. Ends here!") == [
        "Intro line",
        "- first item",
        "- second item",
        "New paragraph.",
        "Ends here!",
    ]
    assert split_sentences("   \n\n ") == []
    assert split_sentences('He said "stop." Then he left. (It rained.) Next') == [
        'He said "stop."',
        "Then he left.",
        "(It rained.)",
        "Next",
    ]


def test_centrality_favours_the_hub_and_sums_to_one() -> None:
    hub = np.ones(4) / 2.0
    spokes = np.eye(4)  # each shares one axis with the hub, none with another spoke
    vectors = np.vstack([spokes, hub, [0, 0, 0, 0]]).astype(np.float32)  # plus an all-zero, isolated row
    scores = centrality(vectors)
    assert scores.sum() == pytest.approx(1.0) and int(scores.argmax()) == 4
    assert scores[5] == pytest.approx(scores.min())
    assert centrality(np.zeros((0, 3))).shape == (0,)


def test_summary_is_central_on_topic_and_in_order(minilm_embedding_bundle: Path) -> None:
    summary = summarize(Predictor(minilm_embedding_bundle), NOTE, SummaryConfig(sentences=3))
    assert len(summary.sentences) == 3 and list(summary.indices) == sorted(summary.indices)
    assert all("offline" in s for s in summary.sentences)  # the note is about the offline mode
    assert not any(word in summary.text for word in ("pizza", "coffee"))
    assert len(summary.scores) == 8 and sum(summary.scores) == pytest.approx(1.0)


def test_near_duplicates_are_picked_once(tiny_embedding_bundle: Path) -> None:
    text = "The build failed again. The build failed again. Deploy is blocked. Ping Ana."
    summary = summarize(Predictor(tiny_embedding_bundle), text, SummaryConfig(sentences=2))
    assert summary.sentences.count("The build failed again.") <= 1 and len(summary.sentences) == 2
    short = summarize(Predictor(tiny_embedding_bundle), "Only one sentence here.", SummaryConfig(sentences=5))
    assert short.sentences == ("Only one sentence here.",)


def test_bad_documents_and_configs_are_refused(tiny_embedding_bundle: Path) -> None:
    with pytest.raises(DataError, match="no sentences"):
        summarize(Predictor(tiny_embedding_bundle), " \n ")
    with pytest.raises(ConfigError, match="sentences"):
        SummaryConfig(sentences=0)
    with pytest.raises(ConfigError, match="damping"):
        SummaryConfig(damping=1.0)


def test_summarize_command(tiny_embedding_bundle: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    doc = tmp_path / "note.txt"
    doc.write_text(NOTE, encoding="utf-8")
    result = runner.invoke(cli_app, ["summarize", str(tiny_embedding_bundle), str(doc), "-n", "2", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert len(body["summary"]) == 2 and all(s in NOTE for s in body["summary"])
    piped = runner.invoke(cli_app, ["summarize", str(tiny_embedding_bundle), "-", "-n", "1"], input=NOTE)
    assert piped.exit_code == 0 and piped.output.strip() in NOTE
    for args, message in [
        (["summarize", str(tiny_embedding_bundle), str(tmp_path / "nope.txt")], "does not exist"),
        (["summarize", str(tmp_path), str(doc)], "no manifest.json"),
    ]:
        failed = runner.invoke(cli_app, args)
        assert failed.exit_code == 1 and message in failed.output and "Traceback" not in failed.output
