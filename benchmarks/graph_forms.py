"""Issue 3: which ONNX graph form runs a student shape fastest, timed the strict way (beside the teachers).

    python benchmarks/graph_forms.py [--layers 2 --hidden 192 --heads 6 --ffn 384] [--rows 872]

Latency does not depend on what the weights learned, so this builds an untrained student of the shape (weights
perturbed off their initial values, so no two tensors are equal and the exporter cannot merge them), exports it
with edgeslm, and times every form of it beside the MiniLM teacher in PyTorch FP32 and through the one-click path
(ORT dynamic INT8), on real SST-2 dev sentences, one thread, batch 1, a new random order per sentence
(`bench_latency.round_robin`): every call follows another system's, as in `bench_compress.py`. Forms: FP32; the
quantizers edgeslm offers (dynamic INT8, per-channel, static QDQ, INT4 MatMulNBits); and onnxruntime's transformer
optimizer applied before dynamic INT8 (it fuses attention into QAttention only on transformers' eager attention with
its own mask, so that form is exported that way). Writes benchmarks/results/graph_forms.json.

    python benchmarks/graph_forms.py --shapes 2x192x6x384 3x128x4x256 ...   (layers x width x heads x FFN)

asks the other question: which shape, in edgeslm's default form (dynamic INT8), before training one. It times each
shape the same way beside the teachers and writes benchmarks/results/graph_shapes.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import BertConfig, BertModel

from bench_latency import round_robin
from edgeslm.compress.quantize import quantize
from edgeslm.data import load_dataset
from edgeslm.export.onnx import export_onnx
from edgeslm.models import TextClassifier, new_classifier, resolve_base, save_checkpoint
from edgeslm.recipe import DataConfig, ExportConfig, Int4WeightOnlyConfig, Int8DynamicConfig, Int8StaticConfig
from edgeslm.runtime import encode, load_tokenizer
from edgeslm.runtime.predictor import session_options

HERE = Path(__file__).parent
LABELS = ("negative", "positive")


Shape = tuple[int, int, int, int]  # layers, width, attention heads (32 channels each), FFN neurons


def _shape(text: str) -> Shape:
    try:
        layers, hidden, heads, ffn = (int(x) for x in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is LAYERSxWIDTHxHEADSxFFN, e.g. 2x192x6x384; got {text!r}") from None
    if hidden != 32 * heads:
        raise argparse.ArgumentTypeError(f"width must be 32 x heads (MiniLM's head size), got {text!r}")
    return layers, hidden, heads, ffn


def _name(shape: Shape) -> str:
    return "{}L w{} h{} f{}".format(*shape)


def _student(shape: Shape, tokenizer: Path, out: Path) -> Path:
    torch.manual_seed(0)
    layers, hidden, heads, ffn = shape
    config = BertConfig(
        vocab_size=load_tokenizer(tokenizer.read_text(encoding="utf-8"), 64).get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=512,
    )
    model = TextClassifier(BertModel(config, add_pooling_layer=False), len(LABELS)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_checkpoint(model, out, tokenizer, LABELS, 64, {})
    return out


def _ort_fused(ckpt: Path, out: Path, heads: int, hidden: int) -> Path:
    """Eager attention + transformers' mask (the pattern ORT's fusion knows), fused, then dynamic INT8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    from edgeslm.export.onnx import _export
    from edgeslm.models import load_checkpoint

    model = load_checkpoint(ckpt).model
    model.encoder.set_attn_implementation("eager")
    _export(model, out / "eager.onnx", 17)
    fused = optimizer.optimize_model(str(out / "eager.onnx"), model_type="bert", num_heads=heads, hidden_size=hidden)
    fused.save_model_to_file(str(out / "fused.onnx"))
    # the fused graph's contrib ops have no ONNX shape inference: the quantizer needs the tensor type named
    quantize_dynamic(
        out / "fused.onnx",
        out / "model.onnx",
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return out / "model.onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--heads", type=int, default=6, help="attention heads (of 32 channels each at MiniLM's width)")
    ap.add_argument("--ffn", type=int, default=384)
    ap.add_argument(
        "--shapes", type=_shape, nargs="+", help="time these shapes in dynamic INT8 instead (LAYERSxWIDTHxHEADSxFFN)"
    )
    ap.add_argument("--rows", type=int, default=872, help="dev sentences timed")
    ap.add_argument("--warmup", type=int, default=60)
    args = ap.parse_args()
    twice = sorted({_name(s) for s in args.shapes or [] if args.shapes.count(s) > 1})
    if twice:  # each shape is timed under its name, so a second one would silently replace the first
        ap.error(f"--shapes names a shape more than once: {', '.join(twice)}; give each shape once")
    base = resolve_base("minilm")
    texts = list(load_dataset(DataConfig()).eval.texts)[: args.rows]
    tok = load_tokenizer((base / "tokenizer.json").read_text(encoding="utf-8"), 64)
    feeds = [encode(tok, [t]) for t in texts]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        export = ExportConfig()
        teacher = new_classifier(base, LABELS).eval()
        save_checkpoint(teacher, tmp / "teacher", base / "tokenizer.json", LABELS, 64, {})
        export_onnx(tmp / "teacher", tmp / "teacher-onnx", export)
        one_click = quantize(tmp / "teacher-onnx", tmp / "one-click", Int8DynamicConfig()) / "model.onnx"
        if args.shapes:  # one form, several shapes
            forms = {}
            for i, shape in enumerate(args.shapes):
                src = export_onnx(_student(shape, base / "tokenizer.json", tmp / f"s{i}"), tmp / f"s{i}-onnx", export)
                forms[_name(shape)] = quantize(src, tmp / f"s{i}-int8", Int8DynamicConfig()) / "model.onnx"
        else:  # one shape, several forms
            shape = (args.layers, args.hidden, args.heads, args.ffn)
            ckpt = _student(shape, base / "tokenizer.json", tmp / "student")
            src = export_onnx(ckpt, tmp / "student-onnx", export)
            per_channel = Int8DynamicConfig(per_channel=True)
            forms = {
                "FP32": src / "model.onnx",
                "INT8 dynamic (edgeslm's default)": quantize(src, tmp / "int8", Int8DynamicConfig()) / "model.onnx",
                "INT8 dynamic per-channel": quantize(src, tmp / "pc", per_channel) / "model.onnx",
                "INT8 static QDQ": quantize(src, tmp / "static", Int8StaticConfig()) / "model.onnx",
                "INT4 MatMulNBits (+ embeddings)": quantize(src, tmp / "int4", Int4WeightOnlyConfig()) / "model.onnx",
            }
            (tmp / "fused").mkdir()
            forms["INT8 after ORT transformer fusion"] = _ort_fused(ckpt, tmp / "fused", args.heads, args.hidden)

        def ort_run(path: Path) -> Callable[[dict[str, np.ndarray]], object]:
            options = session_options(1)
            options.optimized_model_filepath = str(path.with_name("at-run.onnx"))  # the graph as the session runs it
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            return lambda feed: session.run(None, {k: feed[k] for k in names})

        @torch.no_grad()
        def run_torch(feed: dict[str, np.ndarray]) -> object:
            return teacher(**{k: torch.from_numpy(v) for k, v in feed.items()})

        runs = {"teacher torch FP32": run_torch, "teacher one-click": ort_run(one_click)}
        runs.update({f"student {name}": ort_run(path) for name, path in forms.items()})

        def count(path: Path) -> int:
            return len(onnx.load(str(path), load_external_data=False).graph.node)

        nodes = {f"student {n}": (count(p), count(p.with_name("at-run.onnx"))) for n, p in forms.items()}
        mb = {f"student {n}": p.stat().st_size / 1e6 for n, p in forms.items()}
        times, outputs = round_robin(runs, {n: feeds for n in runs}, args.warmup)

    def logits(name: str) -> np.ndarray:
        return np.concatenate([o[0] for o in outputs[name]])  # type: ignore[index]

    p50 = {n: float(np.percentile(t, 50)) for n, t in times.items()}
    if args.shapes:  # each shape's time against the first's
        first = f"student {next(iter(forms))}"
        extra = {n: {"time_vs_first": p50[n] / p50[first]} for n in nodes}
    else:  # each form against the FP32 graph on the same sentences: a form fast because it computes something else
        fp32 = logits("student FP32")
        extra = {n: {"max_abs_logit_diff_vs_fp32": float(np.abs(logits(n) - fp32).max())} for n in nodes}
    result = {
        **({"shapes": [_name(s) for s in args.shapes]} if args.shapes else {"shape": vars(args)}),
        "threads": 1,
        "batch": 1,
        "order": "a new random order of systems per sentence",
        "onnxruntime": ort.__version__,
        "systems": {
            n: {
                "p50_ms": p50[n],
                "p95_ms": float(np.percentile(t, 95)),
                "speedup_vs_one_click": p50["teacher one-click"] / p50[n],
                "speedup_vs_torch": p50["teacher torch FP32"] / p50[n],
                **(
                    {
                        "nodes_in_file": nodes[n][0],
                        "nodes_at_run": nodes[n][1],
                        "model_mb": mb[n],
                        **extra[n],
                    }
                    if n in nodes
                    else {}
                ),
            }
            for n, t in times.items()
        },
    }
    out = HERE / "results" / ("graph_shapes.json" if args.shapes else "graph_forms.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    for n, r in result["systems"].items():
        print(
            f"{n:42s} p50 {r['p50_ms']:6.3f} ms  p95 {r['p95_ms']:6.3f}  "
            f"{r['speedup_vs_one_click']:4.1f}x one-click  {r['speedup_vs_torch']:5.1f}x torch  "
            f"{r.get('nodes_at_run', '')} nodes  {r.get('max_abs_logit_diff_vs_fp32', r.get('time_vs_first', ''))}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
