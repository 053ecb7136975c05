"""Generative bundles end to end on a 2-layer random llama written as a real GGUF (Q4_1 layers, Q8_0 embedding).

The oracle is transformers reading the same GGUF: the ONNX decoder must give its logits, the INT4 bundle must give
the float logits (the blocks are transcoded, not re-quantized), and the KV-cache loop must give what a full pass gives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_tiny_bundle
from edgeslm.cli import app
from edgeslm.errors import BundleError, ConfigError
from edgeslm.generate import GenerateConfig, build_generate
from edgeslm.runtime.generate import Generator, Sampling

gguf = pytest.importorskip("gguf")

_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Robert Boulter is an English film, television and theatre actor.",
    "Summarize the following text in two or three sentences.",
    "A small language model runs on the device without the cloud.",
] * 20


def _tokenizer(path: Path) -> list[str]:
    """A byte-level BPE (GPT-2 style, like SmolLM2's) with the chat special tokens; returns the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS, trainer)
    tok.save(str(path))
    vocab = tok.get_vocab()
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def _write_gguf(path: Path, vocab: list[str]) -> None:
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    hidden, ffn, layers, heads, kv_heads = 64, 128, 2, 4, 2
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(_TEMPLATE)

    def mat(name: str, n: int, k: int, kind: Q, scale: float = 0.1) -> None:
        data = (rng.standard_normal((n, k)) * scale).astype(np.float32)
        w.add_tensor(name, quantize(data, kind), raw_dtype=kind)

    mat("token_embd.weight", len(vocab), hidden, Q.Q8_0, 0.5)
    for i in range(layers):
        p = f"blk.{i}"
        kv = hidden // heads * kv_heads
        for name, n, k in (("attn_q", hidden, hidden), ("attn_k", kv, hidden), ("attn_v", kv, hidden)):
            mat(f"{p}.{name}.weight", n, k, Q.Q4_1, 0.3)
        mat(f"{p}.attn_output.weight", hidden, hidden, Q.Q4_1)
        mat(f"{p}.ffn_gate.weight", ffn, hidden, Q.Q4_1)
        mat(f"{p}.ffn_up.weight", ffn, hidden, Q.Q4_1)
        mat(f"{p}.ffn_down.weight", hidden, ffn, Q.Q4_1)
        w.add_tensor(f"{p}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        w.add_tensor(f"{p}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The GGUF, its tokenizer and one bundle per precision (about 1 s in all)."""
    root = tmp_path_factory.mktemp("tinyllama")
    vocab = _tokenizer(root / "tokenizer.json")
    _write_gguf(root / "tiny.gguf", vocab)
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


_IDS = [5, 17, 42, 99, 3, 250, 7, 7, 120, 64, 11, 300]


def test_fp32_decoder_matches_transformers_on_the_same_gguf(tiny_llama: dict[str, Path]) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    path = tiny_llama["gguf"]
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        expected = model(torch.tensor([_IDS])).logits[0].numpy()
    got = Generator(tiny_llama["fp32-0"], threads=1).logits(_IDS)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-3)


def test_int4_transcodes_the_blocks_exactly_and_rtn_does_not(tiny_llama: dict[str, Path]) -> None:
    reference = Generator(tiny_llama["fp32-0"], threads=1).logits(_IDS)
    exact = Generator(tiny_llama["int4-0"], threads=1).logits(_IDS)
    fast = Generator(tiny_llama["int4-4"], threads=1).logits(_IDS)  # int8 activations: close, not exact
    rtn = Generator(tiny_llama["int4-rtn-0"], threads=1).logits(_IDS)
    int8 = Generator(tiny_llama["int8-0"], threads=1).logits(_IDS)
    err = {
        name: float(np.abs(x - reference).mean())
        for name, x in [("exact", exact), ("fast", fast), ("rtn", rtn), ("int8", int8)]
    }
    spread = float(np.abs(reference).mean())
    assert err["exact"] < 1e-5 * spread
    assert err["fast"] < 0.05 * spread and err["int8"] < 0.05 * spread
    assert err["rtn"] > 5 * max(err["fast"], err["int8"])  # re-quantizing the 4-bit weights is what loses


def test_kv_cache_decoding_matches_full_passes(tiny_llama: dict[str, Path]) -> None:
    gen = Generator(tiny_llama["int4-0"], threads=1)
    tokens = list(gen.stream_ids(_IDS, Sampling(max_new_tokens=8)))
    seq = list(_IDS)
    for token in tokens:  # greedy with the cache == argmax of a fresh full pass at every step
        assert token == int(np.argmax(gen.logits(seq)[-1]))
        seq.append(token)
    assert len(tokens) == 8 or int(np.argmax(gen.logits(seq)[-1])) == 2  # ran to the limit or hit the eos id


def test_stream_pieces_join_to_the_text_and_respect_stop_and_seed(tiny_llama: dict[str, Path]) -> None:
    gen = Generator(tiny_llama["int4-4"], threads=1)
    stream = gen.stream("the quick brown fox", Sampling(max_new_tokens=12), chat=False)
    pieces = list(stream)
    assert stream.result is not None and "".join(pieces) == stream.result.text
    assert stream.result.new_tokens >= 1 and stream.result.prompt_tokens == len(gen.encode("the quick brown fox"))
    full = stream.result.text
    if len(full) > 3:  # stop at a string that occurs in the greedy text: the output ends right before it
        cut = full[2:4]
        stopped = gen.generate("the quick brown fox", Sampling(max_new_tokens=12, stop=(cut,)), chat=False)
        assert stopped.text == full[: full.index(cut)] and stopped.finish_reason == "stop"
    sample = Sampling(max_new_tokens=10, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    first = gen.generate("hello", sample)
    assert gen.generate("hello", sample).text == first.text  # a seed fixes the sample
    others = {gen.generate("hello", Sampling(max_new_tokens=10, temperature=1.5, seed=s)).text for s in range(4)}
    assert len(others) > 1


def test_chat_template_comes_from_the_gguf(tiny_llama: dict[str, Path]) -> None:
    gen = Generator(tiny_llama["int4-4"], threads=1)
    assert gen.chat_prompt("hi", system="be brief") == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert gen.encode(gen.chat_prompt("hi"))[0] == 1  # <|im_start|> is one special token, not text


def test_bad_input_is_refused_with_a_clear_error(tiny_llama: dict[str, Path], tmp_path: Path) -> None:
    gen = Generator(tiny_llama["int4-4"], threads=1)
    with pytest.raises(ConfigError, match="empty"):
        gen.stream("   ")
    with pytest.raises(ConfigError, match="max_new_tokens must be at least 1"):
        Sampling(max_new_tokens=0)
    with pytest.raises(ConfigError, match="context is 128 tokens"):
        gen.stream("fox " * 200, Sampling(max_new_tokens=4))
    stream, dropped = gen.summarize("the lazy dog. " * 100, Sampling(max_new_tokens=8))
    assert dropped > 0 and stream.result is None  # too long to summarise whole: cut, and the caller is told
    classifier = write_tiny_bundle(tmp_path / "clf")
    with pytest.raises(BundleError, match="text-classification bundle; generation needs a text-generation"):
        Generator(classifier)
    from edgeslm.runtime import Predictor

    with pytest.raises(BundleError, match="is a text-generation bundle; Predictor runs classifiers"):
        Predictor(tiny_llama["int4-4"])


def test_signed_bundle_verifies_and_a_changed_file_is_refused(tiny_llama: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from edgeslm.secure.signing import generate_keypair, load_public_key, sign_bundle

    bundle = tmp_path / "b"
    shutil.copytree(tiny_llama["int4-4"], bundle)
    key, pub = generate_keypair(tmp_path / "key")
    sign_bundle(bundle, key)
    Generator(bundle, trusted_keys=[load_public_key(pub)])
    for name in ("model.onnx", "tokenizer.json"):  # the model is hashed from the open file onnxruntime then reads
        original = (bundle / name).read_bytes()
        (bundle / name).write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(BundleError, match=f"`{name}` does not match its hash"):
            Generator(bundle)
        (bundle / name).write_bytes(original)
    (bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        Generator(bundle)


def test_cli_streams_summarises_and_refuses_a_classifier(tiny_llama: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    bundle = str(tiny_llama["int4-4"])
    ok = runner.invoke(app, ["generate", bundle, "hello there", "-n", "5", "--stats"])
    assert ok.exit_code == 0, ok.output
    assert "prompt +" in ok.output and "new tokens" in ok.output
    doc = tmp_path / "note.txt"
    doc.write_text("A small language model runs on the device. " * 60, encoding="utf-8")
    summary = runner.invoke(app, ["generate-summary", bundle, str(doc), "-n", "4"])
    assert summary.exit_code == 0 and "warning: the document is longer" in summary.output
    dispatched = runner.invoke(app, ["summarize", bundle, str(doc)])  # `summarize` on a generative bundle
    assert dispatched.exit_code == 0 and "warning: the document is longer" in dispatched.output
    for args in (["generate", bundle, "", "-n", "3"], ["generate", bundle, "hi", "-n", "0"]):
        bad = runner.invoke(app, args)
        assert bad.exit_code == 1 and bad.output.startswith("error:") and "Traceback" not in bad.output
    clf = runner.invoke(app, ["generate", str(write_tiny_bundle(tmp_path / "clf")), "hi"])
    assert clf.exit_code == 1 and "text-generation bundle" in clf.output


def test_manifest_describes_the_decoder(tiny_llama: dict[str, Path]) -> None:
    manifest = json.loads((tiny_llama["int4-4"] / "manifest.json").read_text())
    assert manifest["task"] == "text-generation" and manifest["labels"] == []
    gen = manifest["extra"]["generation"]
    assert (gen["num_layers"], gen["num_kv_heads"], gen["head_dim"], gen["eos_token_ids"]) == (2, 2, 16, [2])
    assert manifest["extra"]["source"]["file"] == "tiny.gguf" and len(manifest["extra"]["source"]["sha256"]) == 64


def test_generation_runtime_imports_no_torch_transformers_or_onnx() -> None:
    probe = "import edgeslm.runtime.generate, json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    mods = set(json.loads(out.stdout.splitlines()[-1]))
    assert "onnxruntime" in mods
    assert not {m for m in mods if m.split(".")[0] in {"torch", "transformers", "onnx", "gguf"}}


def test_openai_chat_completion_and_its_stream(tiny_llama: dict[str, Path]) -> None:
    from edgeslm.runtime.chat import completion, completion_chunks, parse_chat_request

    gen = Generator(tiny_llama["int4-4"], threads=1)
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "temperature": 0}
    whole = completion(gen, parse_chat_request(body), "tiny")
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["role"] == "assistant"
    assert whole["usage"]["completion_tokens"] <= 6 and whole["choices"][0]["finish_reason"] in ("stop", "length")
    lines = list(completion_chunks(gen, parse_chat_request({**body, "stream": True}), "tiny"))
    assert lines[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == whole["choices"][0]["message"]["content"]  # greedy: the stream says what the answer says
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    early = completion_chunks(gen, parse_chat_request({**body, "max_tokens": 50, "stream": True}), "tiny")
    next(early), next(early)
    early.close()  # a client that goes away: generation stops here, the cache goes with the closed generator
    for bad, message in (
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "user", "content": " "}]}, "no non-empty user turn"),
        ({**body, "max_tokens": 0}, "max_new_tokens must be at least 1"),
        ({**body, "stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
        ({**body, "n": 2}, "n = 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_chat_request(bad)
    with pytest.raises(ConfigError, match="context is 128 tokens"):
        completion_chunks(gen, parse_chat_request({**body, "max_tokens": 127}), "tiny")
