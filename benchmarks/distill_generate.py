"""Sequence-level distillation for generation (issue 9's stretch), measured: a shallower task model trained on the
135M model's own outputs for one task, bundled by the same builder, and compared with the teacher bundle.

Task: a short title for a voice-assistant request (CLINC150 utterances; the prompt "Write a short title for this
request: ..." through the chat template). Teacher: the INT4 SmolLM2-135M bundle, greedy, 16 tokens, stop at a
newline. Student: 8 of the teacher's 30 layers (evenly spaced), initialised from them, trained with cross-entropy on
the teacher's output tokens (the tied embedding frozen), written as a float GGUF and built into INT8 and INT4 bundles
by `edgeslm.generate.build_generate`. Measured on held-out CLINC150 test utterances: exact match and ROUGE-L F1
against the teacher's outputs (the untrained 8-layer cut as the floor), decode speed and first token, one thread,
each run in a fresh process, and file size.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/distill_generate.py [--train 1500] [--epochs 2]
        # -> benchmarks/results/distill_generate.json (work files in out/distill_generate/)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "out" / "distill_generate"
TEACHER = ROOT / "out" / "bench_generate" / "int4"
RESULT = ROOT / "benchmarks" / "results" / "distill_generate.json"
PROMPT = "Write a short title for this request: {u}"
NEW_TOKENS = 16
KEEP = [round(i * 29 / 7) for i in range(8)]  # 8 of 30 layers, the first and the last among them


def _utterances(split: str, n: int, seed: int) -> list[str]:
    from edgeslm.data import data_dirs
    from edgeslm.recipe import DataConfig

    folder = next(d / "clinc150" for d in data_dirs(DataConfig()) if (d / "clinc150" / "data_full.json").is_file())
    rows = json.loads((folder / "data_full.json").read_text(encoding="utf-8"))[split]
    return [u for u, _ in random.Random(seed).sample(rows, n)]


def _generate(bundle: Path, texts: list[str]) -> list[str]:
    from edgeslm.runtime.generate import Generator, Sampling

    gen = Generator(bundle, threads=2)
    sampling = Sampling(max_new_tokens=NEW_TOKENS, temperature=0, stop=("\n",))
    return ["".join(gen.stream(PROMPT.format(u=u), sampling)).strip() for u in texts]


def _teacher_outputs(texts: list[str], name: str) -> list[str]:
    path = WORK / f"teacher_{name}.json"
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached["inputs"] == texts:
            return list(cached["outputs"])
    t0 = time.monotonic()
    outputs = _generate(TEACHER, texts)
    print(f"teacher: {len(texts)} {name} outputs in {time.monotonic() - t0:.0f} s", flush=True)
    path.write_text(json.dumps({"inputs": texts, "outputs": outputs}), encoding="utf-8")
    return outputs


def _student(gguf: Path) -> Any:
    """The teacher in torch (FP32, dequantized from the GGUF), cut to the KEEP layers."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.model.layers = torch.nn.ModuleList([model.model.layers[i] for i in KEEP])
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = len(KEEP)
    return model


def _train(model: Any, tokenizer: Any, texts: list[str], outputs: list[str], epochs: int, lr: float) -> dict[str, Any]:
    """Cross-entropy on the teacher's output tokens (and its end-of-turn), the prompt masked out."""
    import torch

    torch.manual_seed(0)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    examples = []
    for u, out in zip(texts, outputs, strict=True):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT.format(u=u)}], tokenize=False, add_generation_prompt=True
        )
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        o = tokenizer(out, add_special_tokens=False)["input_ids"] + [end]
        examples.append((p + o, [-100] * len(p) + o))
    model.model.embed_tokens.weight.requires_grad_(False)  # tied with the lm_head: the vocabulary stays the teacher's
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    batch, steps = 8, epochs * -(-len(examples) // 8)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses, step, t0 = [], 0, time.monotonic()
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(examples))
        for b in range(0, len(order), batch):
            chunk = [examples[i] for i in order[b : b + batch]]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([x + [end] * (width - len(x)) for x, _ in chunk])
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in chunk])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in chunk])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(float(loss))
            step += 1
            if step % 20 == 0 or step == steps:
                print(f"train {step}/{steps} loss {np.mean(losses[-20:]):.3f} {time.monotonic() - t0:.0f}s", flush=True)
    model.eval()
    return {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "epochs": epochs,
        "seconds": round(time.monotonic() - t0, 1),
        "loss_first_20": round(float(np.mean(losses[:20])), 3),
        "loss_last_20": round(float(np.mean(losses[-20:])), 3),
    }


def _write_gguf(model: Any, source: Path, out: Path) -> None:
    """The student as a float32 llama GGUF: the teacher file's metadata, 8 blocks, q/k rows permuted back to the
    layout llama.cpp (and our graph builder) expect (transformers un-permutes them when it reads a GGUF)."""
    import gguf

    from edgeslm.generate.gguf_weights import _field

    reader = gguf.GGUFReader(str(source))
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads

    def permute(w: np.ndarray, n_head: int) -> np.ndarray:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("SmolLM2-135M-Instruct, 8-layer title student")
    w.add_block_count(len(KEEP))
    w.add_context_length(int(_field(reader, "llama.context_length")))
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(float(_field(reader, "llama.rope.freq_base")))
    w.add_layer_norm_rms_eps(float(_field(reader, "llama.attention.layer_norm_rms_epsilon")))
    w.add_rope_dimension_count(cfg.hidden_size // heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_bos_token_id(int(_field(reader, "tokenizer.ggml.bos_token_id")))
    w.add_eos_token_id(int(_field(reader, "tokenizer.ggml.eos_token_id")))
    w.add_add_bos_token(bool(_field(reader, "tokenizer.ggml.add_bos_token", False)))
    w.add_chat_template(str(_field(reader, "tokenizer.chat_template")))

    def f32(t: Any) -> np.ndarray:
        return t.detach().float().numpy().astype(np.float32)

    w.add_tensor("token_embd.weight", f32(model.model.embed_tokens.weight))
    for i, layer in enumerate(model.model.layers):
        a, m = layer.self_attn, layer.mlp
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(f32(a.q_proj.weight), heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(f32(a.k_proj.weight), kv_heads))
        w.add_tensor(f"blk.{i}.attn_v.weight", f32(a.v_proj.weight))
        w.add_tensor(f"blk.{i}.attn_output.weight", f32(a.o_proj.weight))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", f32(m.gate_proj.weight))
        w.add_tensor(f"blk.{i}.ffn_up.weight", f32(m.up_proj.weight))
        w.add_tensor(f"blk.{i}.ffn_down.weight", f32(m.down_proj.weight))
        w.add_tensor(f"blk.{i}.attn_norm.weight", f32(layer.input_layernorm.weight))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", f32(layer.post_attention_layernorm.weight))
    w.add_tensor("output_norm.weight", f32(model.model.norm.weight))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _bundle(gguf_path: Path, precision: str) -> Path:
    from edgeslm.generate import GenerateConfig, build_generate

    out = WORK / f"student_{precision}"
    config = GenerateConfig(gguf=str(gguf_path), precision=precision, tokenizer=str(TEACHER / "tokenizer.json"))
    build_generate(out, config, force=True)
    return out


def _scores(outputs: list[str], reference: list[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(r, o)["rougeL"].fmeasure for o, r in zip(outputs, reference, strict=True)]
    return {
        "exact_match": round(float(np.mean([o == r for o, r in zip(outputs, reference, strict=True)])), 3),
        "rougeL_f1": round(float(np.mean(rouge)), 3),
    }


def _speed_child(bundle: str) -> None:
    """One fresh process: bench_generate's 128-token WikiText prompt, 64 greedy tokens, one thread."""
    from bench_generate import _corpus
    from edgeslm.runtime.generate import Generator, Sampling

    gen = Generator(Path(bundle), threads=1)
    gen._eos = set()  # time 64 tokens whatever the model says: the student ends its titles early, by design
    prompt = _corpus()[1]
    list(gen.stream_ids(prompt[:16], Sampling(max_new_tokens=8)))  # warm-up
    t0 = time.perf_counter()
    first, n = t0, 0
    for _ in gen.stream_ids(prompt, Sampling(max_new_tokens=64)):
        n += 1
        if n == 1:
            first = time.perf_counter()
    end = time.perf_counter()
    print(json.dumps({"ttft_ms": 1000 * (first - t0), "tok_s": (n - 1) / (end - first), "tokens": n}))


def _speed(bundles: dict[str, Path], reps: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in bundles}
    names = list(bundles)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            out = subprocess.run(
                [sys.executable, __file__, "--speed-child", str(bundles[name])],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        n: {k: round(statistics.median(r[k] for r in rs), 1) for k in ("ttft_ms", "tok_s", "tokens")}
        for n, rs in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only-speed", action="store_true", help="re-time the bundles already built")
    parser.add_argument("--speed-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.speed_child:
        _speed_child(args.speed_child)
        return
    if args.only_speed:
        from edgeslm._fs import write_json

        result = json.loads(RESULT.read_text(encoding="utf-8"))
        built = {n: WORK / n for n in ("student_int8", "student_int4")}
        result["speed_one_thread_fresh_processes"] = _speed({"teacher_int4": TEACHER, **built}, args.reps)
        result["command"] += f" ; python benchmarks/distill_generate.py --only-speed --reps {args.reps}"
        write_json(RESULT, result)
        print(json.dumps(result["speed_one_thread_fresh_processes"], indent=1))
        return
    import torch
    from transformers import AutoTokenizer

    from edgeslm._fs import write_json
    from edgeslm.generate.build import default_gguf

    torch.set_num_threads(2)
    WORK.mkdir(parents=True, exist_ok=True)
    source = default_gguf()
    train_texts, test_texts = _utterances("train", args.train, 0), _utterances("test", args.test, 1)
    train_out = _teacher_outputs(train_texts, "train")
    test_out = _teacher_outputs(test_texts, "test")
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = _student(source)
    untrained = WORK / "untrained.gguf"
    _write_gguf(model, source, untrained)
    floor = _generate(_bundle(untrained, "int8"), test_texts)
    training = _train(model, tokenizer, train_texts, train_out, args.epochs, args.lr)
    student_gguf = WORK / "student.gguf"
    _write_gguf(model, source, student_gguf)
    bundles = {"student_int8": _bundle(student_gguf, "int8"), "student_int4": _bundle(student_gguf, "int4")}
    # the export is checked, not assumed: the FP32 bundle's logits against the torch student's on one prompt
    fp32 = _bundle(student_gguf, "fp32")
    from edgeslm.runtime.generate import Generator

    gen = Generator(fp32, threads=2)
    ids = gen.encode(gen.chat_prompt(PROMPT.format(u=test_texts[0])))
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    export_diff = float(np.abs(gen.logits(ids) - ref).max() / np.abs(ref).max())
    outputs = {name: _generate(path, test_texts) for name, path in bundles.items()}
    quality = {"untrained_8_layers_int8": _scores(floor, test_out)}
    quality.update({name: _scores(out, test_out) for name, out in outputs.items()})
    speed = _speed({"teacher_int4": TEACHER, **bundles}, args.reps)
    sizes = {
        name: round(sum(p.stat().st_size for p in path.iterdir()) / 1e6, 1)
        for name, path in {"teacher_int4": TEACHER, **bundles}.items()
    }
    result = {
        "command": " ".join(["python", *sys.argv]),
        "task": f"{PROMPT!r} over CLINC150 utterances; teacher = the INT4 SmolLM2-135M bundle, greedy, "
        f"{NEW_TOKENS} tokens, stop at a newline",
        "student": f"layers {KEEP} of 30, initialised from the teacher, tied embedding frozen",
        "rows": {"train": len(train_texts), "test": len(test_texts)},
        "training": training,
        "export_check_max_rel_logit_diff_fp32": round(export_diff, 6),
        "agreement_with_teacher_on_test": quality,
        "speed_one_thread_fresh_processes": speed,
        "file_mb": sizes,
        "examples": [
            {"input": u, "teacher": t, **{n: outputs[n][i] for n in outputs}}
            for i, (u, t) in enumerate(zip(test_texts[:8], test_out[:8], strict=True))
        ],
    }
    write_json(RESULT, result)
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("training", "agreement_with_teacher_on_test", "speed_one_thread_fresh_processes", "file_mb")
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
