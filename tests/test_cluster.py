"""Weight sharing + entropy coding, for real: the tiny model through `build` with clustering on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeslm
from edgeslm import Predictor, build
from edgeslm.compress.cluster import kmeans_1d
from edgeslm.models import load_checkpoint
from edgeslm.recipe import ClusterConfig, DistillConfig, EvalConfig, ExportConfig, FinetuneConfig, Recipe


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, tiny_data: edgeslm.DataConfig) -> Path:
    out = tmp_path_factory.mktemp("cluster") / "out"
    recipe = Recipe(
        base=str(tiny_base),
        data=tiny_data,
        finetune=FinetuneConfig(epochs=1, batch_size=16, learning_rate=1e-3),
        distill=DistillConfig(num_layers=1, epochs=1, batch_size=16, learning_rate=1e-3),
        cluster=ClusterConfig(enabled=True, bits=3, embedding_bits=4, epochs=1, batch_size=16),
        export=ExportConfig(check_rows=8),
        eval=EvalConfig(latency_rows=10, warmup_rows=1),
    )
    build(recipe, out)
    return out


def test_kmeans_finds_the_clusters() -> None:
    values = torch.tensor([0.0, 0.1, -0.1, 5.0, 5.1, 4.9, -3.0, -3.1])
    centroids, idx = kmeans_1d(values, 3)
    np.testing.assert_allclose(centroids.numpy(), [-3.05, 0.0, 5.0], atol=1e-5)
    assert idx.tolist() == [1, 1, 1, 2, 2, 2, 0, 0]


def test_clustered_weights_share_few_values(clustered: Path) -> None:
    report = json.loads((clustered / "report.json").read_text())
    ckpt = load_checkpoint(Path(report["artifacts"]["student"]))
    layer = ckpt.model.encoder.encoder.layer[0]
    for linear in (layer.attention.self.query, layer.intermediate.dense, layer.output.dense):
        assert linear.weight.unique().numel() <= 2**3
    assert ckpt.model.encoder.embeddings.word_embeddings.weight.unique().numel() <= 2**4
    assert ckpt.model.head.weight.unique().numel() > 2**4  # the head is left alone
    assert ckpt.meta["cluster"]["max_distinct_values"] <= 2**4


def test_bundle_stores_the_model_entropy_coded_and_runs(clustered: Path) -> None:
    bundle = clustered / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"] == "model.onnx.xz" and not (bundle / "model.onnx").exists()
    report = json.loads((clustered / "report.json").read_text())
    onnx = Path(report["artifacts"]["student_quantized"]) / "model.onnx"
    assert (bundle / "model.onnx.xz").stat().st_size < onnx.stat().st_size / 2
    predictor = Predictor(bundle, threads=1)
    assert predictor.predict("a moving, funny film").label in predictor.labels


def test_damaged_xz_model_is_refused(clustered: Path, tmp_path: Path) -> None:
    import shutil

    from edgeslm.bundle import parse_manifest
    from edgeslm.runtime.predictor import model_bytes

    manifest = parse_manifest((clustered / "bundle" / "manifest.json").read_bytes())
    with pytest.raises(edgeslm.BundleError, match="not valid xz data"):
        model_bytes(manifest, {manifest.model: b"\xfd7zXZ\x00 garbage"})
    copy = tmp_path / "bundle"
    shutil.copytree(clustered / "bundle", copy)
    (copy / "model.onnx.xz").write_bytes(b"not xz")
    with pytest.raises(edgeslm.BundleError):  # the hash check stops it before any decoding
        Predictor(copy)


def test_cluster_config_is_validated() -> None:
    with pytest.raises(edgeslm.ConfigError, match="`bits` must be between 1 and 8, got 9"):
        ClusterConfig(bits=9)
    with pytest.raises(edgeslm.ConfigError, match="`embedding_bits` must be between 1 and 8, got 0"):
        ClusterConfig(embedding_bits=0)
