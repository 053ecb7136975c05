"""A 2-layer random llama written as a real GGUF (Q4_1 layers, Q8_0 embedding) with a byte-level BPE tokenizer:
the generative tests' model, built in about a second (see the ``tiny_llama`` fixture in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def write_tokenizer(path: Path) -> list[str]:
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


def write_gguf(path: Path, vocab: list[str]) -> None:
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    hidden, ffn, layers, heads, kv_heads = 64, 128, 2, 4, 2
    rng = np.random.default_rng(0)
    import gguf

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
