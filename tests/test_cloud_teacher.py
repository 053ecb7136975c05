"""`edgeslm build --teacher-url URL --unlabeled FILE`: the cloud labels the texts and its scores train the student.

A real build (tiny BERT, real tokenizer, real ONNX Runtime) against a real HTTP stand-in on 127.0.0.1 whose
"model" is a fixed rule, so its labels and scores are known in advance.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeslm.cli import app
from edgeslm.cloud.server import StandIn
from edgeslm.compress.distill import distill, scores_as_logits
from edgeslm.data import load_dataset
from edgeslm.errors import CloudError, ConfigError, DataError, EdgeSLMError
from edgeslm.recipe import DataConfig, DistillConfig

runner = CliRunner()
TINY_RECIPE = """
[finetune]
epochs = 1
batch_size = 16
[distill]
num_layers = 1
epochs = 1
batch_size = 16
[export]
check_rows = 8
[eval]
latency_rows = 10
warmup_rows = 1
"""


class RuleModel:
    """A cloud "model" that needs no weights: P(positive) grows with the share of letters that are vowels."""

    name, task, labels = "rule", "text-classification", ("negative", "positive")

    def probs(self, texts: list[str]) -> list[list[float]]:
        out = []
        for t in texts:
            letters = [c for c in t.lower() if c.isalpha()] or ["x"]
            p = 1 / (1 + math.exp(-40 * (sum(c in "aeiou" for c in letters) / len(letters) - 0.36)))
            out.append([1 - p, p])
        return out

    def embed(self, texts: list[str]) -> None:
        return None

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(t.split()) for t in texts)


@pytest.fixture(scope="module")
def cloud() -> Iterator[StandIn]:
    with StandIn(RuleModel()) as server:  # type: ignore[arg-type]
        yield server


@pytest.fixture(scope="module")
def unlabeled(tiny_data: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("unlabeled") / "texts.txt"
    path.write_text("\n".join(load_dataset(tiny_data).train.texts[:200]) + "\n")
    return path


def _requests(output: str) -> int:
    found = re.search(r"cloud teacher: .*?(\d+) requests", output)
    assert found, output
    return int(found.group(1))


def test_build_with_a_cloud_teacher_end_to_end(
    cloud: StandIn, unlabeled: Path, tiny_base: Path, tiny_data: DataConfig, tmp_path: Path
) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "runs" / "cloud"
    args = ["build", "--out", str(out), "--recipe", str(recipe), "--base", str(tiny_base)]
    args += ["--teacher-url", cloud.url + "/models/rule", "--unlabeled", str(unlabeled), "--budget", "500"]
    args += ["--rate", "1000"]
    args += ["--dev-file", str(tiny_data.dev_path)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    texts = len(set(unlabeled.read_text().split("\n")) - {""})
    assert _requests(r.output) == texts and f"{texts}/{texts} texts labelled" in r.output

    report = json.loads((out / "report.json").read_text())
    labelled = Path(report["data_source"])
    assert labelled.parent == tmp_path / "runs" / ".edgeslm-cache" and labelled.name.startswith("cloud-labels-")
    rows = [json.loads(line) for line in labelled.read_text().splitlines()]
    model = RuleModel()
    for row in rows[:20]:  # the file holds what the cloud answered: top label and every score
        p = model.probs([row["text"]])[0]
        assert row["scores"] == pytest.approx(dict(zip(model.labels, p, strict=True)), abs=1e-6)
        assert row["label"] == model.labels[int(np.argmax(p))]
    assert report["train_rows"] == len(rows)  # the dev file is the labelled set, not a share of the cloud's rows
    student = json.loads((Path(report["artifacts"]["student"]) / "edgeslm.json").read_text())
    assert student["config"]["soft_targets"] == "scores"
    assert report["recipe"]["distill"]["soft_targets"] == "scores"
    assert (out / "bundle" / "manifest.json").is_file() and (out / "report.html").is_file()

    # A re-run pays for nothing and reuses every step (the labelled file's name hashes its content).
    again = runner.invoke(app, [*args, "--force"])
    assert again.exit_code == 0, again.output
    assert _requests(again.output) == 0 and f"{texts} from the cache" in again.output
    assert "distill: reusing" in again.output and "finetune: reusing" in again.output


def test_soft_targets_are_the_clouds_scores(cloud_build: Path, tiny_data: DataConfig, tmp_path: Path) -> None:
    """Scores that say "negative" for every text, hard labels that alternate, no CE: the student follows the scores.

    The tiny teacher answers "positive" for every one of these texts, so a student trained on its logits would too.
    """
    from edgeslm.models import load_checkpoint

    texts = load_dataset(tiny_data).train.texts[:240]
    data = tmp_path / "labelled.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"text": t, "label": ("negative", "positive")[i % 2], "scores": {"negative": 0.97, "positive": 0.03}}
            )
            + "\n"
            for i, t in enumerate(texts)
        )
    )
    cfg = DistillConfig(
        data=DataConfig(name=str(data)), num_layers=1, epochs=2, batch_size=16, learning_rate=2e-3,
        ce_weight=0.0, soft_targets="scores",
    )  # fmt: skip
    student = load_checkpoint(distill(cloud_build / "teacher", tmp_path / "student", cfg))
    from edgeslm._train import predict_logits
    from edgeslm.runtime.predictor import load_tokenizer

    tok = load_tokenizer((cloud_build / "teacher" / "tokenizer.json").read_text(), 64)
    logits = predict_logits(student.model, tok, list(texts[:100]))
    assert (logits.argmax(1) == 0).mean() >= 0.95  # the teacher's logits would give 0, alternating labels half
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert abs(float(probs[:, 0].mean()) - 0.97) < 0.05  # it learnt the calibrated score, not a one-hot label


def test_scores_as_logits(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_text(
        json.dumps({"text": "a", "label": "x", "scores": {"x": 0.7, "y": 0.2, "z": 0.1}})
        + "\n"
        + json.dumps({"text": "b", "label": "y", "scores": {"y": 0.6}})  # an API that returned the top label only
        + "\n"
    )
    got = scores_as_logits(path, ("a", "b"), ("x", "y", "z"))
    soft = np.exp(got) / np.exp(got).sum(1, keepdims=True)
    assert soft[0] == pytest.approx([0.7, 0.2, 0.1], abs=1e-5)
    assert soft[1] == pytest.approx([0.2, 0.6, 0.2], abs=1e-5)  # the 0.4 left over, shared by the labels left out
    path.write_text(json.dumps({"text": "a", "label": "x"}) + "\n")
    with pytest.raises(DataError, match="no `scores` for 'a'"):
        scores_as_logits(path, ("a",), ("x", "y"))


def test_soft_targets_stay_out_of_the_cache_keys() -> None:
    """Every cached distill step keyed before the option existed keeps its key; the option is validated."""
    assert "soft_targets" not in repr(DistillConfig(soft_targets="scores"))
    assert repr(DistillConfig(soft_targets="scores")) == repr(DistillConfig())
    with pytest.raises(ConfigError, match="`soft_targets` must be one of teacher, scores"):
        DistillConfig(soft_targets="cloud")


def test_out_of_repr_fields_change_the_cache_key_only_when_set() -> None:
    """Keys of builds cached before a field existed survive; setting the field gives a build of its own."""
    from edgeslm.pipeline import _key
    from edgeslm.recipe import TrimConfig

    plain = _key("distill", "k", DistillConfig())
    assert plain == hashlib.sha256(json.dumps(["distill", "k", repr(DistillConfig())]).encode()).hexdigest()[:12]
    set_ = [DistillConfig(soft_targets="scores"), DistillConfig(augment=2), DistillConfig(hidden=192)]
    keys = {_key("distill", "k", c) for c in set_}
    assert plain not in keys and len(keys) == 3
    assert _key("trim", "k", TrimConfig(alias=True)) != _key("trim", "k", TrimConfig())


def test_cloud_error_is_its_own_branch() -> None:
    assert issubclass(CloudError, EdgeSLMError)
    assert not issubclass(CloudError, ConfigError | DataError)


def test_build_teacher_url_bad_input(cloud: StandIn, unlabeled: Path, tmp_path: Path) -> None:
    from test_cloud_label import Scripted

    out = tmp_path / "runs" / "x"
    url = cloud.url + "/models/rule"
    cases = [
        (["--teacher-url", url, "--budget", "5"], "--teacher-url and --unlabeled go together"),
        (["--unlabeled", str(unlabeled), "--budget", "5"], "--teacher-url and --unlabeled go together"),
        (["--teacher-url", url, "--unlabeled", str(unlabeled)], "needs --budget N"),
        (
            ["--teacher-url", url, "--unlabeled", str(unlabeled), "--budget", "5", "--data", "sst2"],
            "exclude each other",
        ),
        (["--teacher-url", url, "--unlabeled", str(tmp_path / "none.txt"), "--budget", "5"], "does not exist"),
        (["--teacher-url", url, "--unlabeled", str(unlabeled), "--budget", "0"], "--budget 0 allows no cloud calls"),
    ]
    with Scripted([(200, "text/html", b"<!DOCTYPE html><html>Sign in</html>")]) as portal:
        cases.append((["--teacher-url", portal.url, "--unlabeled", str(unlabeled), "--budget", "9"], "HTML page"))
        for extra, message in cases:
            r = runner.invoke(app, ["build", "--out", str(out), *extra])
            assert r.exit_code == 1, (extra, r.output)
            assert message in r.output and "Traceback" not in r.output, (extra, r.output)
            assert not out.exists()
        assert portal.requests == 1  # an HTML page stops the labelling at once: retrying cannot fix it
    out.mkdir(parents=True)  # an existing output is refused before any cloud call
    with Scripted([(200, "text/html", b"<html></html>")]) as portal:
        args = ["--teacher-url", portal.url, "--unlabeled", str(unlabeled), "--budget", "9"]
        r = runner.invoke(app, ["build", "--out", str(out), *args])
        assert r.exit_code == 1 and "already exists" in r.output and portal.requests == 0, r.output
    out.rmdir()
    assert not list((tmp_path / "runs" / ".edgeslm-cache").glob("cloud-labels-*.jsonl"))  # nothing half-written
