"""Datasets -> (texts, labels): SST-2 and CLINC150 from the shared data folder, CSV / TSV / JSONL files.

Every loader returns the same ``Dataset``: label names, a train split and an eval split of integer labels.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .recipe import DataConfig

__all__ = ["Dataset", "Split", "load_dataset", "read_rows", "read_texts"]

NAMED = ("sst2", "clinc150")
_SAMPLES = Path(__file__).parent / "samples"


@dataclass(frozen=True)
class Split:
    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int) -> Split:
        return Split(self.texts[:n], self.labels[:n])


@dataclass(frozen=True)
class Dataset:
    name: str
    label_names: tuple[str, ...]
    train: Split
    eval: Split
    eval_split: str  # which split `eval` is ("dev" or "test")
    source: str  # where the rows were read from, for the report


def data_dirs(config: DataConfig) -> list[Path]:
    """Folders searched for the named datasets, in order."""
    if config.data_dir:
        return [Path(config.data_dir)]
    dirs = []
    if os.environ.get("EDGESLM_DATA_DIR"):
        dirs.append(Path(os.environ["EDGESLM_DATA_DIR"]))
    dirs.append(Path.cwd().parent / "shared" / "data")
    dirs.append(Path(__file__).resolve().parents[3] / "shared" / "data")  # beside a source checkout
    return dirs


def load_dataset(config: DataConfig) -> Dataset:
    """Load, validate and (optionally) subsample the dataset ``config`` names."""
    ds = _load_named(config) if config.name in NAMED else _load_file(config)
    _validate(ds)
    if config.max_train_rows is not None and config.max_train_rows < len(ds.train):
        keep = _stratified(ds.train.labels, config.max_train_rows, config.seed)
        ds = Dataset(ds.name, ds.label_names, _take(ds.train, keep), ds.eval, ds.eval_split, ds.source)
    return ds


# ---------------------------------------------------------------------------------------------------------------
# named datasets


def _find(config: DataConfig, name: str, probe: str) -> Path | None:
    for folder in data_dirs(config):
        if (folder / name / probe).is_file():
            return folder / name
    return None


def _load_named(config: DataConfig) -> Dataset:
    if config.name == "sst2":
        folder = _find(config, "sst2", "train.tsv")
        if folder is None and not config.data_dir:
            folder = _SAMPLES / "sst2"  # the shipped sample, so the demo runs without ../shared
        if folder is None:
            raise DataError(_not_found(config))
        return _load_sst2(folder, config)
    folder = _find(config, "clinc150", "data_full.json")
    if folder is None:
        raise DataError(_not_found(config))
    return _load_clinc(folder, config)


def _not_found(config: DataConfig) -> str:
    where = ", ".join(str(d) for d in data_dirs(config))
    return (
        f"dataset `{config.name}` was not found in {where}; "
        "point --data-dir (or $EDGESLM_DATA_DIR) at the folder holding sst2/ and clinc150/"
    )


def _load_sst2(folder: Path, config: DataConfig) -> Dataset:
    def read(path: Path) -> Split:
        texts, labels = [], []
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            next(reader)  # header: sentence, label
            for row in reader:
                texts.append(row[0].strip())
                labels.append(int(row[1]))
        return Split(tuple(texts), tuple(labels))

    split = config.eval_split or "dev"
    if split != "dev":
        raise DataError("SST-2's test split has no labels; use eval_split = 'dev'")
    return Dataset(
        "sst2",
        ("negative", "positive"),
        read(folder / "train.tsv"),
        read(folder / "dev.tsv"),
        "dev",
        str(folder),
    )


def _load_clinc(folder: Path, config: DataConfig) -> Dataset:
    raw = json.loads((folder / "data_full.json").read_text(encoding="utf-8"))
    split = config.eval_split or "test"
    key = {"dev": "val", "test": "test"}[split]
    train_rows = raw["train"] + raw["oos_train"]
    eval_rows = raw[key] + raw[f"oos_{key}"]
    names = tuple(sorted({intent for _, intent in train_rows}))
    index = {n: i for i, n in enumerate(names)}

    def to_split(rows: list[list[str]]) -> Split:
        return Split(tuple(t for t, _ in rows), tuple(index[i] for _, i in rows))

    return Dataset("clinc150", names, to_split(train_rows), to_split(eval_rows), split, str(folder))


# ---------------------------------------------------------------------------------------------------------------
# user files


def read_rows(path: Path, config: DataConfig) -> list[tuple[str, str]]:
    """(text, label name) of every row of a .csv/.tsv/.jsonl file, checked; no split, any number of labels."""
    if not path.is_file():
        raise DataError(f"data file `{path}` does not exist; pass a .csv, .tsv or .jsonl file, or sst2 / clinc150")
    suffix = path.suffix.lower()
    text_col, label_col = config.text_column, config.label_column
    try:
        if suffix == ".jsonl":
            records = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise DataError(f"`{path}` line {n} is not a JSON object; each line must be {{...}}")
                    records.append(record)
            columns = set().union(*(r.keys() for r in records)) if records else set()
        elif suffix in (".csv", ".tsv"):
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                records = list(reader)
                columns = set(reader.fieldnames or [])
        else:
            raise DataError(f"`{path}` has an unknown extension `{suffix}`; use .csv, .tsv or .jsonl")
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise DataError(f"`{path}` could not be parsed ({e}); check that it is UTF-8 {suffix[1:]}") from e
    if not records:
        raise DataError(f"`{path}` has no rows; a dataset needs labelled examples")
    for col, flag in ((text_col, "--text-column"), (label_col, "--label-column")):
        if col not in columns:
            have = ", ".join(sorted(map(str, columns))) or "none"
            raise DataError(f"`{path}` has no `{col}` column (columns: {have}); name the right one with {flag}")
    rows = []
    for n, r in enumerate(records, 1):
        text, label = r.get(text_col), r.get(label_col)
        if text is None or not str(text).strip() or label is None or str(label) == "":
            raise DataError(f"`{path}` row {n} has an empty `{text_col}` or `{label_col}`; fill or remove it")
        rows.append((str(text).strip(), str(label)))
    return rows


def read_texts(path: Path) -> tuple[str, ...]:
    """Unlabelled texts, one per line of a UTF-8 text file (blank lines skipped), for the teacher to label."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise DataError(f"unlabelled text file `{path}` does not exist; pass a UTF-8 file, one text per line") from e
    except UnicodeDecodeError as e:
        raise DataError(f"unlabelled text file `{path}` is not UTF-8 ({e}); re-save it as UTF-8") from e
    texts = tuple(t for t in (line.strip() for line in lines) if t)
    if not texts:
        raise DataError(f"unlabelled text file `{path}` holds no text; put one text per line")
    return texts


def _load_file(config: DataConfig) -> Dataset:
    path = Path(config.name)
    rows = read_rows(path, config)
    names = tuple(sorted({label for _, label in rows}))
    if len(names) < 2:
        raise DataError(f"`{path}` has only one label ({names[0]!r}); a classifier needs at least two")
    index = {n: i for i, n in enumerate(names)}
    full = Split(tuple(t for t, _ in rows), tuple(index[label] for _, label in rows))
    if config.dev_path:
        dev_rows = read_rows(Path(config.dev_path), config)
        unseen = sorted({label for _, label in dev_rows} - set(names))
        if unseen:
            raise DataError(
                f"dev file `{config.dev_path}` has labels the train file never saw: {', '.join(map(repr, unseen))}; "
                "add train examples for them or drop those dev rows"
            )
        dev = Split(tuple(t for t, _ in dev_rows), tuple(index[label] for _, label in dev_rows))
        return Dataset(path.stem, names, full, dev, "dev", str(path))
    dev_idx = set(_stratified(full.labels, max(len(names), round(len(full) * config.dev_fraction)), config.seed))
    if len(dev_idx) >= len(full):
        raise DataError(f"`{path}` has {len(full)} rows, too few to hold out a dev split; add rows or a dev file")
    train = _take(full, [i for i in range(len(full)) if i not in dev_idx])
    return Dataset(path.stem, names, train, _take(full, sorted(dev_idx)), "dev", str(path))


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _validate(ds: Dataset) -> None:
    if len(ds.train) == 0 or len(ds.eval) == 0:
        raise DataError(f"dataset `{ds.name}` has an empty train or eval split; it needs rows in both")
    seen = set(ds.train.labels)
    if len(seen) < 2:
        raise DataError(f"dataset `{ds.name}` has only one label in train; a classifier needs at least two")
    unseen = sorted(set(ds.eval.labels) - seen)
    if unseen:
        names = ", ".join(repr(ds.label_names[i]) for i in unseen)
        raise DataError(
            f"the {ds.eval_split} split of `{ds.name}` has labels train never saw: {names}; "
            "add train examples for them or drop those rows"
        )


def _stratified(labels: tuple[int, ...], n: int, seed: int) -> list[int]:
    """``n`` indices drawn per label in proportion to its frequency (at least one each), deterministic."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    counts = Counter(labels)
    chosen: list[int] = []
    for y, idx in sorted(by_label.items()):
        k = max(1, round(n * counts[y] / len(labels)))
        chosen.extend(rng.sample(idx, min(k, len(idx))))
    rng.shuffle(chosen)
    return sorted(chosen[:n])


def _take(split: Split, idx: list[int]) -> Split:
    return Split(tuple(split.texts[i] for i in idx), tuple(split.labels[i] for i in idx))
