"""Generative bundles end to end on a 2-layer random llama written as a real GGUF (Q4_1 layers, Q8_0 embedding).

The oracle is transformers reading the same GGUF: the ONNX decoder must give its logits, the INT4 bundle must keep the
GGUF's blocks (only the minimum's residual is rounded, not the weights re-quantized), and the KV-cache loop must give
what a full pass gives.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import modules_after, write_tiny_bundle
from edgeslm.cli import app
from edgeslm.errors import BundleError, ConfigError
from edgeslm.runtime.generate import Generator, Sampling

pytest.importorskip("gguf")

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


def test_int4_keeps_the_blocks_and_rtn_does_not(tiny_llama: dict[str, Path]) -> None:
    reference = Generator(tiny_llama["fp32-0"], threads=1).logits(_IDS)
    kept = Generator(tiny_llama["int4-0"], threads=1).logits(_IDS)  # float compute: only the 4-bit residuals round
    fast = Generator(tiny_llama["int4-4"], threads=1).logits(_IDS)  # int8 activations: close, not exact
    rtn = Generator(tiny_llama["int4-rtn-0"], threads=1).logits(_IDS)
    int8 = Generator(tiny_llama["int8-0"], threads=1).logits(_IDS)
    err = {
        name: float(np.abs(x - reference).mean())
        for name, x in [("kept", kept), ("fast", fast), ("rtn", rtn), ("int8", int8)]
    }
    spread = float(np.abs(reference).mean())
    assert err["kept"] < 0.03 * spread
    assert err["fast"] < 0.05 * spread and err["int8"] < 0.05 * spread
    assert err["rtn"] > 10 * err["kept"] and err["rtn"] > 5 * max(err["fast"], err["int8"])


def test_int4_weights_rebuild_the_gguf_blocks(tiny_llama: dict[str, Path]) -> None:
    """Unpack one Q4_1 matrix from model.onnx (codes, zero points, and the residual columns x block sums): every
    weight is the GGUF's up to the residual's 4-bit rounding, far below the block's own step d."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from edgeslm.generate.gguf_weights import read_gguf

    w = read_gguf(tiny_llama["gguf"]).tensors["blk.1.ffn_down.weight"]
    assert w.scales is not None
    n, k = w.shape
    inits = {
        t.name: numpy_helper.to_array(t)
        for t in onnx.load(str(tiny_llama["int4-0"] / "model.onnx")).graph.initializer
        if t.name.startswith("blk.1.down.")
    }
    packed = inits["blk.1.down.q4"]  # [N, blocks, 16]: two codes a byte, low nibble first
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, -1, 32).astype(np.float32)
    zp = inits["blk.1.down.zero"].reshape(n, -1)
    zero = np.stack([zp & 15, zp >> 4], axis=-1).reshape(n, -1)[:, : codes.shape[1]].astype(np.float32)
    deq = inits["blk.1.down.scales"][..., None] * (codes - zero[..., None])  # [N, blocks + extra, 32]
    nb = k // 32
    residual = deq[:, nb:].reshape(n, -1)[:, :nb]  # the extra columns multiply the block sums of x
    rebuilt = (deq[:, :nb] + residual[..., None]).reshape(n, k)
    diff = np.abs(rebuilt - w.dequantize()).reshape(n, nb, 32)
    assert diff.max() > 0  # the residual is rounded, so not bit-exact ...
    assert (diff.max(-1) <= 0.05 * w.scales).all()  # ... but within 5% of each block's step


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
    tiny = Sampling(max_new_tokens=10, temperature=5e-324, seed=1)  # logits / T overflow: found by the HTTP fuzzer
    assert gen.generate("hello", tiny).text == gen.generate("hello", Sampling(max_new_tokens=10)).text


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
    mods = modules_after("import edgeslm.runtime.generate")
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


def test_serve_answers_openai_chat_completions_and_frees_an_interrupted_stream(
    tiny_llama: dict[str, Path], tmp_path: Path
) -> None:
    import httpx

    from edgeslm.runtime.app import Limits
    from edgeslm.runtime.serve import ServeConfig, Server

    classifier = write_tiny_bundle(tmp_path / "clf")
    db = tmp_path / "telemetry.db"
    config = ServeConfig(port=0, watch_s=0, limits=Limits(max_generations=1), telemetry=db)
    srv = Server([("clf", classifier), ("chat", tiny_llama["int4-4"])], config, log=lambda _: None)
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "temperature": 0}
    with srv.running() as url, httpx.Client(base_url=url, timeout=30) as client:
        whole = client.post("/v1/chat/completions", json=body)  # no `model`: the first text-generation bundle
        assert whole.status_code == 200, whole.text
        answer = whole.json()
        assert answer["model"] == "chat" and answer["usage"]["completion_tokens"] <= 6
        with client.stream("POST", "/v1/chat/completions", json={**body, "model": "chat", "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in r.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert streamed == answer["choices"][0]["message"]["content"]  # greedy: the stream says what the answer says

        # A client that goes away mid-stream: its one generation slot (max_generations=1) must come back.
        with client.stream("POST", "/v1/chat/completions", json={**body, "max_tokens": 100, "stream": True}) as r:
            next(r.iter_lines())
        deadline = time.monotonic() + 10
        while (again := client.post("/v1/chat/completions", json=body)).status_code == 429:
            assert time.monotonic() < deadline, "the interrupted stream never gave its slot back"
            time.sleep(0.05)
        assert again.status_code == 200, again.text

        for bad, status, message in (
            ({**body, "model": "clf"}, 400, "text-classification bundle"),
            ({**body, "model": "nope"}, 404, "no model named"),
            ({**body, "max_tokens": 0}, 422, "greater than or equal to 1"),
            ({**body, "max_tokens": 500}, 400, "context is 128 tokens"),
            ({**body, "stream": True, "max_tokens": 500}, 400, "context is 128 tokens"),
            ({"messages": "hi"}, 422, "messages"),
            ({**body, "n": 2}, 400, "n = 1"),
        ):
            r = client.post("/v1/chat/completions", json=bad)
            assert r.status_code == status and message in r.json()["error"], (bad, r.text)
        assert client.post("/v1/chat/completions", json=[1, 2]).status_code == 422  # not a JSON object
        r = client.post("/models/chat", json={"inputs": "hello"})
        assert r.status_code == 400 and "/v1/chat/completions" in r.json()["error"]
        assert client.get("/health").json()["models"]["chat"]["task"] == "text-generation"
        assert client.post("/", json={"inputs": "fine"}).status_code == 200  # the classifier still answers

    # telemetry: one row per chat (200 answered, 499 closed by the client, errors), never the conversation
    import sqlite3

    conn = sqlite3.connect(db)
    rows = dict(conn.execute("SELECT status, COUNT(*) FROM requests WHERE model = 'chat' GROUP BY status").fetchall())
    assert rows == {200: 3, 499: 1}
    assert conn.execute("SELECT COUNT(*) FROM predictions WHERE model = 'chat'").fetchone() == (0,)
    conn.close()
    assert all(b"hello" not in f.read_bytes() for f in tmp_path.glob("telemetry.db*"))


def test_build_task_generate_writes_a_generative_bundle(tiny_llama: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    built = runner.invoke(app, ["build", "--task", "generate", "--base", str(tiny_llama["gguf"]), "-o", str(tmp_path)])
    assert built.exit_code == 0, built.output
    assert Generator(tmp_path / "bundle", threads=1).generate("hello", Sampling(max_new_tokens=3)).new_tokens <= 3
    for args, message in (
        (["--task", "generate", "--layers", "2"], "--layers apply to classifiers"),
        (["--task", "generate", "--teacher-url", "http://127.0.0.1:9"], "--teacher-url apply to classifiers"),
        (["--task", "translate"], "--task must be classify or generate"),
    ):
        bad = runner.invoke(app, ["build", "-o", str(tmp_path / "x"), *args])
        assert bad.exit_code == 1 and message in bad.output and "Traceback" not in bad.output
