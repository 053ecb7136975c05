"""Shared fixtures: a tiny randomly initialised BERT with the real MiniLM tokenizer, and real SST-2 rows.

Tests run the real pipeline (real tokenizer, real transformer, real ONNX Runtime, real files) on these, so the
whole suite stays fast on two cores.
"""

from __future__ import annotations

import csv
import shutil
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
