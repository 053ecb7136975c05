"""Train issue 3's strong teachers and their students on a lent GPU, and carry them back in small files.

On 2 CPU cores a full-data teacher takes 14-16 minutes and an augmented SST-2 student about 40 (teacher labels
933 s + training 1,299 s, session 14); a lent GPU does them in minutes, but its lease is short and each call
brings back at most 64 MiB. So the GPU trains, and this machine exports, quantizes and measures:

    # on the GPU machine (base: the MiniLM folder; --base accepts any local BERT folder)
    python benchmarks/gpu_train.py train --base DIR --cache /tmp/gpu-cache
    python benchmarks/gpu_train.py pack --cache /tmp/gpu-cache --to $OUT
    # here: rebuild FP32 checkpoints into the build cache, where `edgeslm build` / the benchmarks reuse them
    python benchmarks/gpu_train.py unpack --parts DIR

`pack` keeps every tensor but the word-embedding table (the recipes freeze it: it is the base's, byte for byte)
in FP16, tars the lot and cuts it into 15 MiB parts. `unpack` puts the base's embeddings back, widens to FP32
and writes each checkpoint under the cache key the CPU build computes for the same recipe, so `build` finds the
teacher and the students done. Accuracy is always measured here, after the FP16 round trip.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import random
import shutil
import tarfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edgeslm import load_recipe
from edgeslm._fs import write_bytes
from edgeslm.data import data_dirs
from edgeslm.models import resolve_base
from edgeslm.pipeline import Steps, _texts_key
from edgeslm.recipe import DataConfig, Recipe

HERE = Path(__file__).parent
RECIPES = {"sst2": HERE / "sst2_full.toml", "clinc150": HERE / "clinc150_full.toml"}
WIKITEXT = Path("out/wikitext2-pieces.txt")  # written by wikitext_pieces() when a recipe names it
REQUESTS = Path("out/clinc150-requests.txt")  # written by clinc150_requests() when a recipe names it
_MADE = {str(WIKITEXT): lambda: wikitext_pieces(), str(REQUESTS): lambda: clinc150_requests()}
_PRUNED = {"distill.heads": 6, "distill.ffn": 384}
_AUG4 = {"distill.epochs": 3, "distill.max_minutes": 60, "distill.augment": 4}
_AUG4_CLINC = {**_AUG4, "distill.epochs": 8}  # 15k train rows: more passes
# Students per dataset: name -> overrides on the recipe's [distill] (the recipe's own student is "2L").
STUDENTS: dict[str, dict[str, dict[str, object]]] = {
    "sst2": {
        "2L": {},
        "3L": {"distill.num_layers": 3, "distill.max_minutes": 0.5},
        "2L-h6-f768": {"distill.heads": 6, "distill.ffn": 768},  # structured pruning after layer dropping
        "2L-h6-f384": {"distill.heads": 6, "distill.ffn": 384},
        "1L": {"distill.num_layers": 1, "distill.max_minutes": 0.35},
        "1L-h6-f768": {"distill.num_layers": 1, "distill.heads": 6, "distill.ffn": 768, "distill.max_minutes": 0.35},
        "2L-hidden": {"distill.hidden_weight": 1.0},  # ablation: + token-masked hidden-state MSE
        "2L-ce-only": {"distill.kd_weight": 0.0, "distill.ce_weight": 1.0, "distill.max_minutes": 0.35},  # no teacher
        # Trained on the 2-core CPU (session 6; `train` runs here too, skipping what the cache holds): the same
        # pruned student with a full schedule, without and with TinyBERT-style augmentation (4 variants per row).
        "2L-h6-f384-e5": {**_PRUNED, "distill.epochs": 5, "distill.max_minutes": 30},
        "2L-h6-f384-aug4": {**_PRUNED, **_AUG4},
        # Session 7, CPU: the residual stream narrowed too (384 -> 192 channels, Minitron-style), same recipe
        "2L-h6-f384-w192-aug4": {**_PRUNED, **_AUG4, "distill.hidden": 192},
        # ... and progressively: 2L-h6-f384-aug4 is its first stage, narrowed to 192 and distilled again
        "2L-h6-f384-w192-prog": {**_PRUNED, **_AUG4, "distill.hidden": 192, "distill.progressive": True},
        # ... + the hidden-state loss through a learned 192 -> 384 projection (TinyBERT's intermediate loss). Not
        # trained yet: the teacher's forward pass every step makes it 0.49 s/step here (54 min), a GPU job. Since
        # session 13 only the second stage has the loss (the first is -prog's); on CLINC150 it did not help
        "2L-h6-f384-w192-prog-hs": {
            **_PRUNED,
            **_AUG4,
            "distill.hidden": 192,
            "distill.progressive": True,
            "distill.hidden_weight": 1.0,
        },
    },
    "clinc150": {
        "2L": {},
        "2L-h6-f384": {"distill.heads": 6, "distill.ffn": 384},
        "1L": {"distill.num_layers": 1},
        "2L-h6-f384-aug4": {**_PRUNED, **_AUG4_CLINC},  # CPU
        "2L-h6-f384-w192-aug4": {**_PRUNED, **_AUG4_CLINC, "distill.hidden": 192},  # CPU, session 7
        "2L-h6-f384-w192-prog": {**_PRUNED, **_AUG4_CLINC, "distill.hidden": 192, "distill.progressive": True},
        # Session 9, CPU: + 15,000 WikiText-2 pieces labelled by the teacher (no gold label), so the student sees
        # what the teacher does with text that is no intent (OOS recall was the missed target). It did not help;
        # keeping the pieces' wordpieces in the trim did (bench_compress's wiki-trim). Measured before `augment`
        # covered the unlabelled texts (session 10): trained now, it also gets 4 variants of each piece
        "2L-h6-f384-w192-prog-wiki": {
            **_PRUNED,
            **_AUG4_CLINC,
            "distill.hidden": 192,
            "distill.progressive": True,
            "distill.unlabelled": str(WIKITEXT),
        },
        # Session 10, CPU: + 3,251 in-domain requests without their labels (CLINC150's validation split and the
        # extra out-of-scope requests of its oos_plus release), the stand-in for a user's request logs. After
        # commit dd11556 `augment` covers unlabelled texts too, so it now also learns 4 word-swapped variants of each
        "2L-h6-f384-w192-prog-requests": {
            **_PRUNED,
            **_AUG4_CLINC,
            "distill.hidden": 192,
            "distill.progressive": True,
            "distill.unlabelled": str(REQUESTS),
        },
    },
}
# Session 12, CPU: the requests student with one layer instead of two: 7.8x one-click, 40x torch, 0.985 in-scope
STUDENTS["clinc150"]["1L-h6-f384-w192-prog-requests"] = {
    **STUDENTS["clinc150"]["2L-h6-f384-w192-prog-requests"],
    "distill.num_layers": 1,
}
# Session 13, CPU: between one and two layers, shapes picked by a timing probe of random-weight INT8 graphs (the
# 2-layer student = 1.00): one layer with the teacher's whole FFN (1,536 neurons; 0.84), two thinner layers (0.88)
STUDENTS["clinc150"]["1L-h6-w192-prog-requests"] = {
    k: v for k, v in STUDENTS["clinc150"]["1L-h6-f384-w192-prog-requests"].items() if k != "distill.ffn"
}
STUDENTS["clinc150"]["2L-h4-f256-w192-prog-requests"] = {
    **STUDENTS["clinc150"]["2L-h6-f384-w192-prog-requests"],
    "distill.heads": 4,
    "distill.ffn": 256,
}
# ... and the same with TinyBERT's hidden-state loss in its narrowing stage (through a learned 192 -> 384
# projection; the first stage is the cached one above): the ablation of the intermediate loss on a narrow student
STUDENTS["clinc150"]["2L-h4-f256-w192-prog-requests-hs"] = {
    **STUDENTS["clinc150"]["2L-h4-f256-w192-prog-requests"],
    "distill.hidden_weight": 1.0,
}
# ... and the 1-layer student started from the teacher's first layer instead of its top one: the only layer trained
# on the embeddings as its input
STUDENTS["clinc150"]["1L-h6-f384-w192-prog-requests-first"] = {
    **STUDENTS["clinc150"]["1L-h6-f384-w192-prog-requests"],
    "distill.layers": [0],
}
# Session 15, CPU: -prog's student with its augmentation spent on sentences: 8 variants of each train row of 10 words
# or more (25,152 of 67,349 rows; dev's average is 19.5 words) and none of the short phrases, instead of 4 of every row
STUDENTS["sst2"]["2L-h6-f384-w192-prog-long8"] = {
    **STUDENTS["sst2"]["2L-h6-f384-w192-prog"],
    "distill.augment": 8,
    "distill.augment_min_words": 10,
}
# ... and with one layer (the teacher's top one), as CLINC150's 1-layer student: the speed end of SST-2's front
STUDENTS["sst2"]["1L-h6-f384-w192-prog-long8"] = {
    **STUDENTS["sst2"]["2L-h6-f384-w192-prog-long8"],
    "distill.num_layers": 1,
}
# Session 16, CPU: 12 variants of each of those sentences instead of 8 (299,566 instead of 199,712)
STUDENTS["sst2"]["2L-h6-f384-w192-prog-long12"] = {
    **STUDENTS["sst2"]["2L-h6-f384-w192-prog-long8"],
    "distill.augment": 12,
}
# Session 17, CPU: depth for width. `graph_forms.py --shapes` (random-weight INT8 graphs beside the teachers, strict
# order; results/graph_shapes.json) times 3 layers x 128 channels x 4 heads x 256 neurons at 0.94 of the 2-layer
# student (2L w192 h6 f384) and 3 x 96 x 3 x 192 at 0.80. Teacher layers 0, 2 and 5; the first stage at full width.
STUDENTS["sst2"]["3L-h4-f256-w128-prog-long8"] = {
    **STUDENTS["sst2"]["2L-h6-f384-w192-prog-long8"],
    "distill.num_layers": 3,
    "distill.heads": 4,
    "distill.ffn": 256,
    "distill.hidden": 128,
}
# ... and the same first stage narrowed to other widths: 96 (session 17; 4 heads of 32 channels still: attention
# 96 -> 128 -> 96); 192 (session 18: narrowing to 128 cost the first stage, FP32 0.8819 and the most accurate SST-2
# student, 16 sentences, where the 2-layer students lost 1 going to 192); 160, between 192 (trimmed with QAT 0.8933,
# 0.992 of the teacher, at 22x torch) and 128 (0.957)
for _w in (96, 192, 160):
    STUDENTS["sst2"][f"3L-h4-f256-w{_w}-prog-long8"] = {
        **STUDENTS["sst2"]["3L-h4-f256-w128-prog-long8"],
        "distill.hidden": _w,
    }
# Session 17, CPU: long8's first stage narrowed to 160 channels instead of 192 (6 heads still: attention 160 -> 192
# -> 160), for the 30x torch target (results/graph_shapes.json: 2L w160 h5 f320 runs at 0.83-0.86 of 2L w192)
STUDENTS["sst2"]["2L-h6-f384-w160-prog-long8"] = {
    **STUDENTS["sst2"]["2L-h6-f384-w192-prog-long8"],
    "distill.hidden": 160,
}
# ... and at 192 channels with fewer heads and neurons instead: the trained students' times (results/
# compress_sst2_depth.json) showed the residual width costs little (2L w160: 0.94-0.96 of w192), heads and FFN the rest
STUDENTS["sst2"]["2L-h4-f256-w192-prog-long8"] = {
    **STUDENTS["sst2"]["2L-h6-f384-w192-prog-long8"],
    "distill.heads": 4,
    "distill.ffn": 256,
}
# ... narrowed to 160 channels from its first stage
STUDENTS["sst2"]["2L-h4-f256-w160-prog-long8"] = {
    **STUDENTS["sst2"]["2L-h4-f256-w192-prog-long8"],
    "distill.hidden": 160,
}
# Session 11, CPU: the requests student again with two other seeds (importance rows, augmentation, batch order),
# to measure how far one seed's accuracy moves
REPLICA_SEEDS = (1, 2)
for _s in REPLICA_SEEDS:
    STUDENTS["clinc150"][f"2L-h6-f384-w192-prog-requests-s{_s}"] = {
        **STUDENTS["clinc150"]["2L-h6-f384-w192-prog-requests"],
        "distill.seed": _s,
    }
WORD_EMBEDDINGS = "encoder.embeddings.word_embeddings.weight"
PART = 15 << 20


@functools.cache
def wikitext_pieces(n: int = 15_000, seed: int = 0) -> Path:
    """Unlabelled text that no CLINC150 intent covers, cut to the length of a request, in ``WIKITEXT``.

    WikiText-2's validation and test files (Wikipedia, CC BY-SA 3.0; ../shared/data/wikitext2): headings skipped,
    its tokenization undone, <unk> and punctuation dropped, sentences cut into consecutive pieces of 3-12 words
    (CLINC150 requests average 8), n of them drawn with a fixed seed, so the file is the same on every machine.
    """
    folder = next(d / "wikitext2" for d in data_dirs(DataConfig()) if (d / "wikitext2").is_dir())
    rng = random.Random(seed)
    pieces = []
    for name in ("valid.txt", "test.txt"):
        for line in (folder / name).read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.strip().startswith("="):
                continue
            line = line.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
            for sentence in line.split(" . "):
                words = [w for w in sentence.split() if w != "<unk>" and any(c.isalnum() for c in w)]
                while len(words) >= 3:
                    size = rng.randint(3, 12)
                    pieces.append(" ".join(words[:size]))
                    words = words[size:]
    text = ("\n".join(rng.sample(pieces, n)) + "\n").encode()
    if not WIKITEXT.is_file() or WIKITEXT.read_bytes() != text:
        write_bytes(WIKITEXT, text)
    return WIKITEXT


@functools.cache
def clinc150_requests() -> Path:
    """In-domain requests with no label, the way a user's logs would come, in ``REQUESTS``.

    CLINC150's validation split (3,000 in-scope + 100 out-of-scope requests; the benchmark scores test, and no
    build reads validation) and the 151 out-of-scope train requests that data_oos_plus.json adds to data_full.json;
    labels dropped, texts in file order. None of them is a test text.
    """
    folder = next(d / "clinc150" for d in data_dirs(DataConfig()) if (d / "clinc150").is_dir())
    full = json.loads((folder / "data_full.json").read_text(encoding="utf-8"))
    plus = json.loads((folder / "data_oos_plus.json").read_text(encoding="utf-8"))
    seen = {t for t, _ in full["oos_train"]}
    texts = [t for t, _ in full["val"] + full["oos_val"]] + [t for t, _ in plus["oos_train"] if t not in seen]
    test = {t for t, _ in full["test"] + full["oos_test"]}
    assert not test & set(texts), "a test request would leak into training"
    text = ("\n".join(texts) + "\n").encode()
    if not REQUESTS.is_file() or REQUESTS.read_bytes() != text:
        write_bytes(REQUESTS, text)
    return REQUESTS


def recipe(ds: str, student: str = "2L", base: str | None = None) -> Recipe:
    overrides = dict(STUDENTS[ds][student])
    if "distill.unlabelled" in overrides:
        _MADE[str(overrides["distill.unlabelled"])]()
    if base:
        overrides["base"] = base
    return load_recipe(RECIPES[ds], overrides)


def train(base: str, cache: Path, datasets: list[str], students: list[str] | None) -> None:
    for ds in datasets:  # a misspelt student stops the run before any training
        unknown = sorted(set(students or ()) - set(STUDENTS[ds]))
        if unknown:
            raise SystemExit(f"no student {unknown[0]!r} for {ds}; known: {', '.join(STUDENTS[ds])}")
    index: dict[str, dict[str, str]] = {}
    for ds in datasets:
        steps = Steps(recipe(ds, base=base), cache, print)
        teacher, k = steps.teacher()
        index[ds] = {"teacher": teacher.name}
        for name in students or STUDENTS[ds]:
            folder, _ = steps.distilled(teacher, k, recipe(ds, name, base))
            index[ds][name] = folder.name
        (cache / "index.json").write_text(json.dumps(index, indent=2))


def pack(cache: Path, to: Path) -> None:
    index = json.loads((cache / "index.json").read_text())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(cache / "index.json", "index.json")
        for roles in index.values():
            for folder in roles.values():
                weights = load_file(str(cache / folder / "model.safetensors"))
                weights.pop(WORD_EMBEDDINGS)
                half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
                tmp = cache / folder / "weights.fp16.safetensors"
                save_file(half, str(tmp))
                for file in ("weights.fp16.safetensors", "config.json", "edgeslm.json"):
                    tar.add(cache / folder / file, f"{folder}/{file}")
    blob = buf.getvalue()
    to.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(blob), PART):
        (to / f"models.tar.{i // PART:03d}").write_bytes(blob[i : i + PART])
    print(f"packed {len(blob) / 1e6:.1f} MB into {-(-len(blob) // PART)} parts")


def unpack(parts: list[Path], cache: Path) -> None:
    blob = b"".join(p.read_bytes() for p in sorted(parts))
    base = resolve_base("minilm")
    embeddings = load_file(str(base / "model.safetensors"))["embeddings.word_embeddings.weight"]
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        members = {m.name: m for m in tar.getmembers()}

        def read(name: str) -> bytes:
            f = tar.extractfile(members[name])
            assert f is not None
            return f.read()

        index = json.loads(read("index.json"))
        for ds, roles in index.items():
            steps = Steps(recipe(ds), cache, print)
            k_teacher = steps.teacher_key
            for role, folder in roles.items():
                rc = recipe(ds, role) if role != "teacher" else steps.recipe
                assert rc.finetune.freeze_embeddings and rc.distill.freeze_embeddings, "packed without embeddings"
                key = k_teacher if role == "teacher" else _texts_key("distill", k_teacher, rc.distill)
                out = cache / f"{'finetune' if role == 'teacher' else 'distill'}-{key}"
                if out.is_dir():
                    print(f"{ds} {role}: {out} exists, kept")
                    continue
                from safetensors.torch import load as load_bytes

                weights = {k: v.float() for k, v in load_bytes(read(f"{folder}/weights.fp16.safetensors")).items()}
                weights[WORD_EMBEDDINGS] = embeddings.to(torch.float32)
                tmp = out.with_name(out.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                save_file(weights, str(tmp / "model.safetensors"))
                (tmp / "config.json").write_bytes(read(f"{folder}/config.json"))
                meta = json.loads(read(f"{folder}/edgeslm.json"))
                meta["carried"] = "trained on a lent GPU (benchmarks/gpu_train.py), FP16 round trip, base embeddings"
                (tmp / "edgeslm.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
                shutil.copyfile(base / "tokenizer.json", tmp / "tokenizer.json")
                tmp.rename(out)
                print(f"{ds} {role}: {out} ({meta['train']['epochs_done']} epochs in {meta['train']['seconds']} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--base", default="minilm", help="the MiniLM folder, or any local BERT folder")
    t.add_argument("--cache", type=Path, default=Path("out/.edgeslm-cache"))
    t.add_argument("--only", choices=sorted(RECIPES), nargs="+", default=sorted(RECIPES), help="datasets to train")
    t.add_argument("--students", nargs="+", help="student names (default: all of each dataset's)")
    p = sub.add_parser("pack")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--to", type=Path, required=True)
    u = sub.add_parser("unpack")
    u.add_argument("--parts", type=Path, required=True, help="folder holding models.tar.NNN")
    u.add_argument("--cache", type=Path, default=Path("out/.edgeslm-cache"))
    args = ap.parse_args()
    if args.cmd == "train":
        train(args.base, args.cache, args.only, args.students)
    elif args.cmd == "pack":
        pack(args.cache, args.to)
    else:
        unpack(sorted(args.parts.glob("models.tar.*")), args.cache)


if __name__ == "__main__":
    main()
