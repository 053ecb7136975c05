from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SAMPLE, shared_data_available
from edgeslm.data import load_dataset
from edgeslm.errors import DataError
from edgeslm.recipe import DataConfig


def test_sst2_shipped_sample_when_shared_is_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("edgeslm.data.data_dirs", lambda _c: [tmp_path / "nowhere"])
    ds = load_dataset(DataConfig("sst2"))
    assert ds.source == str(SAMPLE)
    assert len(ds.train) == 4000 and len(ds.eval) == 872
    assert ds.label_names == ("negative", "positive")


@pytest.mark.skipif(not shared_data_available(), reason="needs ../shared/data")
def test_named_datasets_from_shared() -> None:
    sst2 = load_dataset(DataConfig("sst2"))
    assert len(sst2.train) == 67349 and len(sst2.eval) == 872
    assert not sst2.train.texts[0].endswith(" ")
    clinc = load_dataset(DataConfig("clinc150"))
    assert len(clinc.label_names) == 151 and "oos" in clinc.label_names
    assert len(clinc.train) == 15100 and len(clinc.eval) == 5500 and clinc.eval_split == "test"
    assert len(load_dataset(DataConfig("clinc150", eval_split="dev")).eval) == 3100


def test_max_train_rows_is_stratified_and_deterministic() -> None:
    cfg = DataConfig("sst2", max_train_rows=500)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert a.train == b.train and len(a.train) == 500
    share = sum(a.train.labels) / 500
    full = load_dataset(DataConfig("sst2"))
    assert abs(share - sum(full.train.labels) / len(full.train)) < 0.01


def test_csv_with_automatic_stratified_dev_split(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("body,intent\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(100)))
    ds = load_dataset(DataConfig(str(f), text_column="body", label_column="intent"))
    assert ds.label_names == ("a", "b")
    assert len(ds.eval) == 10 and len(ds.train) == 90
    assert sorted(ds.eval.labels) == [0] * 5 + [1] * 5
    assert not set(ds.eval.texts) & set(ds.train.texts)


def test_jsonl_and_dev_file(tmp_path: Path) -> None:
    train, dev = tmp_path / "t.jsonl", tmp_path / "d.jsonl"
    train.write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 3}) for i in range(30)))
    dev.write_text("\n".join(json.dumps({"text": f"d{i}", "label": i % 3}) for i in range(6)))
    ds = load_dataset(DataConfig(str(train), dev_path=str(dev)))
    assert ds.label_names == ("0", "1", "2") and len(ds.train) == 30 and len(ds.eval) == 6


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (None, ".csv", "does not exist"),
        ("sentence,label\nhi,a\n", ".csv", "has no `text` column"),
        ("", ".csv", "has no rows"),
        ("", ".jsonl", "has no rows"),
        ("text,label\n" + "x,a\n" * 20, ".csv", "only one label"),
        ("text,label\n,a\nb,b\n", ".csv", "row 1 has an empty"),
        ("[1, 2]\n", ".jsonl", "not a JSON object"),
        ("{bad json\n", ".jsonl", "could not be parsed"),
        ("a\tb\n", ".xlsx", "unknown extension"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, content: str | None, suffix: str, message: str) -> None:
    f = tmp_path / f"data{suffix}"
    if content is not None:
        f.write_text(content)
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(str(f)))


def test_dev_labels_unseen_in_train(tmp_path: Path) -> None:
    train, dev = tmp_path / "t.csv", tmp_path / "d.csv"
    train.write_text("text,label\n" + "".join(f"x{i},{'ab'[i % 2]}\n" for i in range(10)))
    dev.write_text("text,label\ny,a\nz,c\n")
    with pytest.raises(DataError, match="labels the train file never saw: 'c'"):
        load_dataset(DataConfig(str(train), dev_path=str(dev)))


def test_missing_named_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset `clinc150` was not found"):
        load_dataset(DataConfig("clinc150", data_dir=str(tmp_path)))
