"""On-device semantic search: exact and HNSW backends, atomic pickle-free index folders, the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import edgeslm.runtime.search as search_mod
from conftest import modules_after
from edgeslm.cli import app as cli_app
from edgeslm.errors import ConfigError, DataError, MissingExtraError
from edgeslm.runtime import Predictor
from edgeslm.runtime.search import IndexConfig, SemanticIndex, VectorIndex, build_index

NOTES = [
    "The meeting moved to Thursday at 3 pm.",
    "Buy milk, eggs and bread on the way home.",
    "Call the dentist to book a cleaning.",
    "The quarterly report is due on Friday.",
    "Water the plants on the balcony.",
    "Flight to Lisbon leaves at 7:40 from terminal 2.",
]


def _clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_backend_matches_brute_force() -> None:
    vectors, queries = _clustered(300), _clustered(7, seed=1)
    scores, idx = VectorIndex.build(vectors, IndexConfig(backend="exact")).search(queries, 5)
    brute = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    np.testing.assert_array_equal(idx, brute)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, brute, axis=1), rtol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    _, i_all = VectorIndex.build(vectors[:3], IndexConfig(backend="exact")).search(queries, 10)
    assert i_all.shape == (7, 3) and sorted(i_all[0].tolist()) == [0, 1, 2]  # k beyond n: every row, sorted


def test_hnsw_backend_agrees_with_exact_search() -> None:
    vectors, rng = _clustered(3000), np.random.default_rng(2)
    queries = vectors[rng.integers(0, 3000, 50)] + 0.1 * rng.normal(size=(50, 32)).astype(np.float32)  # near data
    exact = VectorIndex.build(vectors, IndexConfig(backend="exact")).search(queries, 10)[1]
    hnsw = VectorIndex.build(vectors, IndexConfig(backend="hnsw"))
    assert hnsw.backend == "hnsw"
    scores, approx = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95
    np.testing.assert_allclose(
        scores[:, 0], (queries * vectors[approx[:, 0]]).sum(1) / np.linalg.norm(queries, axis=1), rtol=1e-4
    )  # cosines


def test_auto_backend_switches_at_the_crossover_and_bad_input_is_refused() -> None:
    config = IndexConfig(crossover=100)
    assert config.choose(99) == "exact" and config.choose(100) == "hnsw"
    assert VectorIndex.build(_clustered(150), config).backend == "hnsw"
    assert IndexConfig(backend="exact", crossover=1).choose(10**9) == "exact"
    with pytest.raises(ConfigError, match="backend"):
        IndexConfig(backend="annoy")
    index = VectorIndex.build(_clustered(10), IndexConfig())
    with pytest.raises(DataError, match="dimensions"):
        index.search(np.ones((1, 5), np.float32), 3)
    with pytest.raises(DataError, match="finite"):
        VectorIndex.build(np.full((3, 4), np.nan), IndexConfig())


def test_auto_falls_back_to_exact_without_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_mod, "_has_faiss", lambda: False)  # as on a device where faiss-cpu is not installed
    assert VectorIndex.build(_clustered(150), IndexConfig(crossover=100)).backend == "exact"
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(MissingExtraError, match="pip install faiss-cpu"):
        VectorIndex.build(_clustered(150), IndexConfig(backend="hnsw"))


@pytest.mark.parametrize("backend", ["exact", "hnsw"])
def test_build_load_search_round_trip(tiny_embedding_bundle: Path, tmp_path: Path, backend: str) -> None:
    predictor = Predictor(tiny_embedding_bundle)
    out = tmp_path / "idx"
    build_index(predictor, NOTES, out, IndexConfig(backend=backend), bundle=tiny_embedding_bundle)
    files = {p.name for p in out.iterdir()}
    assert files == {"index.json", "texts.json", "hnsw.faiss" if backend == "hnsw" else "vectors.npy"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    loaded = SemanticIndex.load(out)
    assert loaded.index.backend == backend and loaded.meta["count"] == len(NOTES)
    hits = loaded.search(predictor, [NOTES[3], NOTES[0]], k=3)
    assert [h[0].text for h in hits] == [NOTES[3], NOTES[0]]  # a text is its own nearest neighbour
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-3) and len(hits[0]) == 3
    with pytest.raises(ConfigError, match="already exists"):
        build_index(predictor, NOTES, out, IndexConfig(backend=backend))


def test_a_failed_write_leaves_nothing(
    tiny_embedding_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(search_mod.np, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        build_index(Predictor(tiny_embedding_bundle), NOTES, tmp_path / "idx", IndexConfig())
    assert list(tmp_path.iterdir()) == []


def test_load_refuses_pickles_damage_and_another_model(tiny_embedding_bundle: Path, tmp_path: Path) -> None:
    predictor = Predictor(tiny_embedding_bundle)
    out = tmp_path / "idx"
    build_index(predictor, NOTES, out, IndexConfig(backend="hnsw"))
    (out / "hnsw.faiss").write_bytes((out / "hnsw.faiss").read_bytes()[:100])
    with pytest.raises(DataError, match="do not load"):
        SemanticIndex.load(out)

    build_index(predictor, NOTES, out, IndexConfig(backend="exact"), force=True)
    meta = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**meta, "model_sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="another model"):
        SemanticIndex.load(out).search(predictor, ["x"])

    (out / "texts.json").write_text(json.dumps(NOTES[:-1]))
    with pytest.raises(DataError, match="inconsistent"):
        SemanticIndex.load(out)  # one text fewer than vectors

    np.save(out / "vectors.npy", np.array([{"evil": 1}] * len(NOTES), dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="do not load"):
        SemanticIndex.load(out)  # an object array needs pickle; np.load(allow_pickle=False) refuses it
    (out / "index.json").unlink()
    with pytest.raises(DataError, match="not a search index"):
        SemanticIndex.load(out)
    with pytest.raises(DataError, match="nothing to index"):
        build_index(predictor, [], tmp_path / "empty")


def test_search_finds_meaning_with_the_real_model(minilm_embedding_bundle: Path, tmp_path: Path) -> None:
    predictor = Predictor(minilm_embedding_bundle)
    index = build_index(predictor, NOTES, tmp_path / "idx")
    hits = index.search(predictor, ["groceries to pick up", "when is my plane", "teeth appointment"], k=1)
    assert [h[0].text for h in hits] == [NOTES[1], NOTES[5], NOTES[2]]


def test_embed_build_index_and_search_commands(tiny_base: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    bundle = tmp_path / "emb"
    args = ["embed-build", str(bundle), "--base", str(tiny_base), "--max-length", "32", "--min-cosine", "0.9"]
    built = runner.invoke(cli_app, args)
    assert built.exit_code == 0, built.output
    assert "int8" in built.output and "cosine to the teacher" in built.output
    again = runner.invoke(cli_app, args)
    assert again.exit_code == 1 and "exists" in again.output
    collection = tmp_path / "notes.jsonl"
    collection.write_text("".join(json.dumps({"text": t}) + "\n" for t in NOTES))
    made = runner.invoke(cli_app, ["index", str(bundle), str(collection), str(tmp_path / "idx")])
    assert made.exit_code == 0, made.output
    assert "indexed 6 texts" in made.output and "exact" in made.output
    found = runner.invoke(cli_app, ["search", str(tmp_path / "idx"), NOTES[2], "-k", "2", "--json"])
    assert found.exit_code == 0, found.output
    body = json.loads(found.output)
    assert body[0]["query"] == NOTES[2] and body[0]["hits"][0]["text"] == NOTES[2] and len(body[0]["hits"]) == 2
    plain = runner.invoke(cli_app, ["search", str(tmp_path / "idx"), NOTES[4]])
    assert plain.exit_code == 0 and NOTES[4] in plain.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    for args, message in [
        (["index", str(bundle), str(bad), str(tmp_path / "i2")], "bad.jsonl:2"),
        (["index", str(bundle), str(tmp_path / "missing.txt"), str(tmp_path / "i3")], "does not exist"),
        (["search", str(tmp_path), "q"], "not a search index"),
        (["search", str(tmp_path / "idx"), "q", "-k", "0"], "-k must be"),
        (["embed-build", str(tmp_path / "e2"), "--base", str(tiny_base), "--min-cosine", "2"], "min_cosine"),
    ]:
        result = runner.invoke(cli_app, args)
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output


def test_search_and_summarize_import_no_torch() -> None:
    loaded = modules_after("import edgeslm.runtime.search, edgeslm.runtime.summarize")
    heavy = {"torch", "transformers", "onnx", "faiss"} & loaded
    assert not heavy, heavy
