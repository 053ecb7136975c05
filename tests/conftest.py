"""Shared fixtures: a tiny randomly initialised BERT with the real MiniLM tokenizer, and real SST-2 rows.

Tests run the real pipeline (real tokenizer, real transformer, real ONNX Runtime, real files) on these, so the
whole suite stays fast on two cores.
"""

from __future__ import annotations

import csv
import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeslm.data import data_dirs
from edgeslm.recipe import DataConfig

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "edgeslm" / "samples" / "sst2"


def _minilm_dir() -> Path:
    from edgeslm.models import resolve_base

    return resolve_base("minilm")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and all-MiniLM-L6-v2's real tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_base")
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(out, safe_serialization=True)
    shutil.copyfile(_minilm_dir() / "tokenizer.json", out / "tokenizer.json")
    return out


@pytest.fixture(scope="session")
def sst2_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 real SST-2 train rows and 100 dev rows as text/label CSV files (dev beside train as dev.csv)."""
    out = tmp_path_factory.mktemp("sst2csv")
    for name, n in (("train", 400), ("dev", 100)):
        with (SAMPLE / f"{name}.tsv").open() as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1 : n + 1]
        with (out / f"{name}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows([(t.strip(), "positive" if y == "1" else "negative") for t, y in rows])
    return out / "train.csv"


@pytest.fixture(scope="session")
def tiny_data(sst2_csv: Path) -> DataConfig:
    return DataConfig(name=str(sst2_csv), dev_path=str(sst2_csv.parent / "dev.csv"))


def shared_data_available() -> bool:
    return any((d / "sst2" / "train.tsv").is_file() for d in data_dirs(DataConfig()))


@functools.cache
def _minilm_tokenizer() -> Path:
    """The real MiniLM tokenizer.json, hash-checked once per session (the check reads 90 MB)."""
    return _minilm_dir() / "tokenizer.json"


def modules_after(code: str) -> set[str]:
    """Every module in ``sys.modules`` after ``code`` runs in a fresh interpreter (what an import really pulls in)."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def write_random_classifier(out: Path, tokenizer: Path, hidden: int, ffn: int, seed: int) -> Path:
    """An untrained 2-layer, 2-head BERT classifier checkpoint: for tests of conversion fidelity, not accuracy."""
    import torch
    from transformers import BertConfig, BertModel

    from edgeslm.models import TextClassifier, save_checkpoint

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=ffn)
    model = TextClassifier(BertModel(config, add_pooling_layer=False), 2)
    save_checkpoint(model, out, tokenizer, ("negative", "positive"), 16, {"step": "test"})
    return out


def write_tiny_bundle(out: Path, weight: tuple[float, float] = (1.0, -1.0), **extra: object) -> Path:
    """A real, runnable bundle in milliseconds: logits = mean(input_ids) * weight, the real MiniLM tokenizer.

    ``weight`` (1, -1) answers "neg" for every text and (-1, 1) answers "pos"; ``extra`` lands in the manifest's
    ``extra`` field, so two calls with different extras give two distinct releases of the same model.
    """
    import onnx
    from onnx import TensorProto, helper

    from edgeslm.bundle import write_bundle

    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 2])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 2], list(weight))
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["m", "w"], ["logits"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, [logits], [w]), opset_imports=[helper.make_opsetid("", 17)]
    )
    src = out.parent / f".{out.name}.src"
    src.mkdir(parents=True, exist_ok=True)
    onnx.save(model, src / "model.onnx")
    write_bundle(
        {"model.onnx": src / "model.onnx", "tokenizer.json": _minilm_tokenizer()},
        out,
        {
            "task": "text-classification",
            "labels": ("neg", "pos"),
            "max_length": 16,
            "inputs": ("input_ids", "attention_mask", "token_type_ids"),
            "model": "model.onnx",
            "tokenizer": "tokenizer.json",
            "extra": dict(extra),
        },
    )
    shutil.rmtree(src)
    return out


class OtaWorld:
    """A signing key, a TUF repository served on 127.0.0.1, and helpers to build, publish and update (OTA tests)."""

    def __init__(self, tmp: Path, url: str) -> None:
        from edgeslm.ota.repository import Repository
        from edgeslm.secure.signing import generate_keypair, load_public_key

        self.tmp, self.url = tmp, url
        self.key, pub = generate_keypair(tmp / "keys" / "release")
        self.trusted = [load_public_key(pub)]
        self.repo = Repository(tmp / "repo")
        self.public = self.repo.path / "public"
        self.root = (self.repo.metadata / "1.root.json").read_bytes()  # shipped read-only with the device
        self.device = tmp / "device"
        self._n = 0

    def bundle(self, weight: tuple[float, float] = (1.0, -1.0), *, key: Path | None = None, **extra: object) -> Path:
        """A new signed bundle (distinct bytes every call)."""
        from edgeslm.secure.signing import sign_bundle

        self._n += 1
        out = write_tiny_bundle(self.tmp / "bundles" / f"b{self._n}", weight, n=self._n, **extra)
        sign_bundle(out, key or self.key)
        return out

    def publish(self, bundle: Path | None = None, **kw: object) -> object:
        kw.setdefault("channel", "stable")
        kw.setdefault("device_classes", ["pixel-7"])
        return self.repo.publish(bundle or self.bundle(), **kw)  # type: ignore[arg-type]

    def update(self, **kw: object) -> object:
        from edgeslm.ota.updater import update

        kw.setdefault("device_class", "pixel-7")
        return update(
            kw.pop("device_dir", self.device),  # type: ignore[arg-type]
            kw.pop("url", self.url),  # type: ignore[arg-type]
            bootstrap_root=self.root,
            trusted_keys=kw.pop("trusted_keys", self.trusted),  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )

    def serving_release(self) -> int:
        """The release the device serves now, after checking its bundle loads with the trusted keys."""
        from edgeslm.ota.disk import OsDisk
        from edgeslm.ota.slots import active_bundle, load_state
        from edgeslm.runtime import Predictor

        folder = active_bundle(self.device)
        assert folder is not None, "the device serves nothing"
        Predictor(folder, trusted_keys=self.trusted).predict("still serving")
        state = load_state(OsDisk(), self.device)
        info = state.slots[state.active or ""]
        assert info is not None
        return info.release


@pytest.fixture
def ota(tmp_path: Path) -> Iterator[OtaWorld]:
    """An empty repository (root 2-of-3) served over real HTTP on 127.0.0.1 for the test's duration."""
    from edgeslm.ota.repository import Repository
    from edgeslm.ota.server import serving

    Repository.init(tmp_path / "repo")
    with serving(tmp_path / "repo" / "public") as url:
        yield OtaWorld(tmp_path, url)


@pytest.fixture(scope="session")
def cloud_build(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, tiny_data: DataConfig) -> Path:
    """A tiny teacher checkpoint and its exported FP32 bundle (no eval subprocesses: a few seconds), laid out as a
    build folder: bundle/, and report.json with step_seconds and artifacts.teacher, for the cloud tests."""
    import json
    import time

    from edgeslm.bundle import write_bundle
    from edgeslm.export.onnx import export_onnx
    from edgeslm.finetune import finetune
    from edgeslm.recipe import ExportConfig, FinetuneConfig

    out = tmp_path_factory.mktemp("cloud_build")
    t = time.monotonic()
    teacher = finetune(tiny_base, out / "teacher", FinetuneConfig(data=tiny_data, epochs=1, batch_size=16))
    onnx_dir = export_onnx(teacher, out / "onnx", ExportConfig(data=tiny_data, check_rows=4))
    write_bundle(
        {"model.onnx": onnx_dir / "model.onnx", "tokenizer.json": onnx_dir / "tokenizer.json"},
        out / "bundle",
        {
            "task": "text-classification",
            "labels": ("negative", "positive"),
            "max_length": 64,
            "inputs": ("input_ids", "attention_mask", "token_type_ids"),
            "model": "model.onnx",
            "tokenizer": "tokenizer.json",
        },
    )
    report = {"step_seconds": {"all": round(time.monotonic() - t, 1)}, "artifacts": {"teacher": str(teacher)}}
    (out / "report.json").write_text(json.dumps(report))
    return out


@pytest.fixture(scope="session")
def tiny_embedding_bundle(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An INT8 `task = "embedding"` bundle of the tiny BERT (mean pooled, unit length): a real transformer graph."""
    from edgeslm.embedding import EmbeddingConfig, build_embedding_bundle

    out = tmp_path_factory.mktemp("embedding") / "bundle"
    build_embedding_bundle(tiny_base, out, EmbeddingConfig(max_length=32, min_cosine=0.9))
    return out


@pytest.fixture(scope="session")
def minilm_embedding_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real all-MiniLM-L6-v2 as an INT8 embedding bundle (about 10 s): for tests that need meaningful vectors."""
    from edgeslm.embedding import build_embedding_bundle

    out = tmp_path_factory.mktemp("minilm-embedding") / "bundle"
    build_embedding_bundle("minilm", out)
    return out


@pytest.fixture(scope="session")
def learn_build(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, tiny_data: DataConfig) -> Path:
    """A real build folder of the tiny BERT (1-layer INT8 student bundle, report.json naming the student checkpoint),
    for the personalize and federate tests (about 15 s)."""
    import edgeslm
    from edgeslm.recipe import DistillConfig, EvalConfig, ExportConfig, FinetuneConfig, Recipe

    out = tmp_path_factory.mktemp("learn") / "build"
    recipe = Recipe(
        base=str(tiny_base),
        data=tiny_data,
        finetune=FinetuneConfig(epochs=1, batch_size=16),
        distill=DistillConfig(num_layers=1, epochs=1, batch_size=16),
        export=ExportConfig(check_rows=8),
        eval=EvalConfig(latency_rows=10, warmup_rows=1),
    )
    edgeslm.build(recipe, out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The GGUF, its tokenizer and one bundle per precision (about 1 s in all)."""
    pytest.importorskip("gguf")
    from _tiny_llama import write_gguf, write_tokenizer
    from edgeslm.generate import GenerateConfig, build_generate

    root = tmp_path_factory.mktemp("tinyllama")
    vocab = write_tokenizer(root / "tokenizer.json")
    write_gguf(root / "tiny.gguf", vocab)
    out = {"gguf": root / "tiny.gguf", "tokenizer": root / "tokenizer.json"}
    for precision, level in (("fp32", 0), ("int4", 0), ("int4", 4), ("int4-rtn", 0), ("int8", 0)):
        config = GenerateConfig(
            gguf=str(root / "tiny.gguf"),
            tokenizer=str(root / "tokenizer.json"),
            precision=precision,
            accuracy_level=level,
            max_length=128,
        )
        out[f"{precision}-{level}"] = root / f"{precision}-{level}"
        build_generate(root / f"{precision}-{level}", config)
    return out
