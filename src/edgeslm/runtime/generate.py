"""``Generator(bundle).stream(prompt)``: text from a ``text-generation`` bundle, token by token, on the device.

Plain onnxruntime with a numpy decoding loop rather than onnxruntime-genai: the session is built from the verified
bytes (what was hashed is what runs, as for the classifiers), stop strings, sampling and full-sequence logits for
perplexity are a few lines each, and the device needs no second native runtime. Imports numpy, onnxruntime and
tokenizers; jinja2 (sandboxed) renders the model's own chat template, as transformers does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import Manifest
from ..errors import BundleError, ConfigError, MissingExtraError
from .predictor import session_options
from .providers import build_session
from .verified_file import verify_streaming

try:
    import numpy as np
    from tokenizers import Tokenizer
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError(f"the runtime needs {e.name}; fix: pip install 'edgeslm[runtime]'") from e

__all__ = ["SUMMARY_INSTRUCTION", "Completion", "Generator", "Sampling", "Stream"]

SUMMARY_INSTRUCTION = "Summarize the following text in two or three sentences.\n\n"  # the user turn before the text


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 128  # output tokens at most; a 3-sentence summary is about 60-100
    temperature: float = 0.0  # 0 = greedy, the same output every time; 0.7 is a common setting for varied text
    top_k: int = 50  # sample only among the k likeliest tokens (ignored when greedy)
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens with this much probability (1.0 = off)
    seed: int | None = None  # fixes the sampled output, for tests and reproducible demos
    stop: tuple[str, ...] = ()  # end the output before the first of these strings (the end-of-turn token always ends)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ConfigError("a stop sequence is empty; it would end the output before it starts")


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (end-of-turn token or a stop string) or "length" (max_new_tokens or the context)
    prompt_tokens: int
    new_tokens: int
    ttft_s: float  # prompt processed and first token chosen
    decode_tokens_per_s: float  # tokens after the first, per second of decoding (0 if only one)


class Stream:
    """An iterator of text pieces; ``result`` holds the Completion once it is exhausted (or closed early)."""

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.result: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def close(self) -> None:
        """Stop generating now (a client went away); the KV cache is freed with the iterator."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


def _stop_holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could still become a stop string, so must not be shown yet."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class Generator:
    """Load a text-generation bundle (every file hash verified before the session is built) and generate text."""

    def __init__(
        self,
        bundle: str | Path,
        *,
        threads: int | None = None,
        trusted_keys: Sequence[bytes] | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        def generative(manifest: Manifest) -> None:  # checked before any file is hashed or opened
            if manifest.task != "text-generation":
                raise BundleError(
                    f"bundle `{bundle}` is a {manifest.task} bundle; generation needs a text-generation bundle "
                    "(build one with edgeslm.generate.build_generate)"
                )

        # the model is hashed from an open file and not held in memory
        manifest, blobs, model = verify_streaming(Path(bundle), trusted_keys, accept=generative)
        self.manifest: Manifest = manifest
        gen: dict[str, Any] = manifest.extra.get("generation") or {}
        try:
            self._layers = int(gen["num_layers"])
            self._cache_shape = (1, int(gen["num_kv_heads"]), 0, int(gen["head_dim"]))
            self._vocab = int(gen["vocab_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(
                f"manifest extra.generation lacks the cache shape or vocabulary ({e}); rebuild the bundle"
            ) from e
        self._eos = {int(i) for i in gen.get("eos_token_ids") or []}
        self._bos = gen.get("bos_token_id") if gen.get("add_bos_token") else None
        self._chat_template: str | None = gen.get("chat_template")
        try:
            self._tokenizer = Tokenizer.from_str(blobs[manifest.tokenizer].decode("utf-8"))
        except Exception as e:  # tokenizers raises plain Exception on bad JSON
            raise BundleError(f"bundle tokenizer `{manifest.tokenizer}` does not load ({e}); rebuild the bundle") from e
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        try:
            self._session, self.execution = build_session(model.source, session_options(threads), providers)
        except BundleError as e:
            raise BundleError(f"bundle model `{manifest.model}`: {e}") from e
        finally:
            model.close()
        self._past = [f"past.{i}.{kv}" for i in range(self._layers) for kv in ("key", "value")]
        self._outputs = ["logits"] + [f"present.{i}.{kv}" for i in range(self._layers) for kv in ("key", "value")]

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def context(self) -> int:
        """Tokens of prompt plus output the bundle serves."""
        return self.manifest.max_length

    # -- text <-> tokens ------------------------------------------------------------------------------------------
    def chat_prompt(self, user: str, system: str | None = None) -> str:
        """``user`` wrapped in the model's own chat template, ending where the assistant's turn starts."""
        system_turn = [{"role": "system", "content": system}] if system else []
        return self.render_chat([*system_turn, {"role": "user", "content": user}])

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """A conversation ({"role", "content"} dicts, OpenAI's shape) as the model's chat template writes it."""
        if not self._chat_template:
            return "\n".join(m["content"] for m in messages)
        try:
            from jinja2 import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as e:  # pragma: no cover - exercised only without jinja2
            raise MissingExtraError("chat templates need jinja2; fix: pip install 'edgeslm[runtime]'") from e
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # transformers' settings
        try:
            return env.from_string(self._chat_template).render(messages=list(messages), add_generation_prompt=True)
        except TemplateError as e:
            raise ConfigError(f"the bundle's chat template refused these messages ({e})") from e

    def encode(self, text: str) -> list[int]:
        ids = list(self._tokenizer.encode(text, add_special_tokens=False).ids)
        return ([int(self._bos)] if self._bos is not None else []) + ids

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    # -- the model ------------------------------------------------------------------------------------------------
    def _run(self, ids: Sequence[int], keep: int) -> np.ndarray:
        """One pass over ``ids`` with an empty cache; the cache it fills is dropped (perplexity needs none)."""
        feed: dict[str, np.ndarray] = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "logits_to_keep": np.array([keep], dtype=np.int64),
        }
        feed.update((name, np.zeros(self._cache_shape, dtype=np.float32)) for name in self._past)
        return np.asarray(self._session.run(["logits"], feed)[0][0])

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits at every position of ``ids`` (len(ids), vocab) in one pass, for perplexity."""
        if not 0 < len(ids) <= self.context:
            raise ConfigError(f"logits() takes 1..{self.context} tokens, got {len(ids)}")
        return self._run(ids, len(ids))

    def _next(self, logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
        if sampling.temperature == 0:
            return int(np.argmax(logits))
        with np.errstate(over="ignore"):
            z = logits.astype(np.float64) / sampling.temperature
        if not np.isfinite(z).all():  # a temperature so small the logits overflow: sample from its limit, greedy
            return int(np.argmax(logits))
        k = min(sampling.top_k, z.size)
        top = np.argpartition(-z, k - 1)[:k]  # the k likeliest, unordered
        top = top[np.argsort(-z[top])]
        p = np.exp(z[top] - z[top[0]])
        p /= p.sum()
        if sampling.top_p < 1:
            cut = int(np.searchsorted(np.cumsum(p), sampling.top_p)) + 1
            top, p = top[:cut], p[:cut] / p[:cut].sum()
        return int(rng.choice(top, p=p))

    def stream_ids(self, ids: Sequence[int], sampling: Sampling) -> Iterator[int]:
        """Token ids after ``ids``, one per step, until an end-of-turn token or ``max_new_tokens`` (stop strings are
        the text layer's job). Refuses a prompt that leaves no room for ``max_new_tokens`` in the context."""
        if not ids:
            raise ConfigError("the prompt is empty; give some text to continue")
        if len(ids) + sampling.max_new_tokens > self.context:
            raise ConfigError(
                f"the prompt is {len(ids)} tokens and up to {sampling.max_new_tokens} new ones were asked for, but "
                f"this bundle's context is {self.context} tokens; shorten the prompt or lower max_new_tokens"
            )
        return self._decode(list(ids), sampling)

    def _decode(self, ids: list[int], sampling: Sampling) -> Iterator[int]:
        """The decoding loop. The KV cache is one buffer per layer, sized for this request and bound as both the
        past input and the present output: GroupQueryAttention writes each new position in place, so a step copies
        nothing (returning the cache as outputs would copy all of it twice per token). The logits, the attention
        mask and the next token id live in buffers bound once too: a step allocates nothing and wraps no outputs
        (reading logits through ``get_outputs`` wraps every cache value each step: 3% slower decode, measured)."""
        rng = np.random.default_rng(sampling.seed)
        total = len(ids) + sampling.max_new_tokens
        size = (*self._cache_shape[:2], total, self._cache_shape[3])
        cache = [np.zeros(size, dtype=np.float32) for _ in self._past]
        logits = np.zeros((1, 1, self._vocab), dtype=np.float32)
        mask = np.ones((1, total), dtype=np.int64)
        token = np.zeros((1, 1), dtype=np.int64)
        binding = self._session.io_binding()
        for name, buffer in zip(self._past, cache, strict=True):
            binding.bind_input(name, "cpu", 0, np.float32, list(size), buffer.ctypes.data)
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        for name, buffer in zip(self._outputs[1:], cache, strict=True):
            binding.bind_output(name, "cpu", 0, np.float32, list(size), buffer.ctypes.data)
        binding.bind_cpu_input("logits_to_keep", np.array([1], dtype=np.int64))
        prompt = np.asarray([ids], dtype=np.int64)
        binding.bind_input("input_ids", "cpu", 0, np.int64, list(prompt.shape), prompt.ctypes.data)
        seen = 0

        def step(n: int) -> np.ndarray:
            nonlocal seen
            seen += n
            binding.bind_input("attention_mask", "cpu", 0, np.int64, [1, seen], mask.ctypes.data)
            self._session.run_with_iobinding(binding)
            return logits[0, 0]

        logits_now = step(len(ids))
        binding.bind_input("input_ids", "cpu", 0, np.int64, [1, 1], token.ctypes.data)
        for n in range(sampling.max_new_tokens):
            next_id = self._next(logits_now, sampling, rng)
            if next_id in self._eos:
                return
            yield next_id
            if n + 1 < sampling.max_new_tokens:
                token[0, 0] = next_id
                logits_now = step(1)

    def stream(
        self, prompt: str, sampling: Sampling | None = None, *, chat: bool = True, system: str | None = None
    ) -> Stream:
        """Text pieces as they are decided. ``chat`` wraps ``prompt`` in the chat template (an instruction model
        answers; without it the model continues the text). ``Stream.result`` has counts and timings at the end."""
        if not prompt.strip():
            raise ConfigError("the prompt is empty; give some text to answer or continue")
        return self.stream_text(self.chat_prompt(prompt, system) if chat else prompt, sampling)

    def stream_text(self, text: str, sampling: Sampling | None = None) -> Stream:
        """Continue ``text`` exactly as given (already templated, e.g. by ``render_chat``)."""
        sampling = sampling or Sampling()
        ids = self.encode(text)
        tokens = self.stream_ids(ids, sampling)  # validates the length now, before the caller iterates
        stream = Stream(iter(()))
        stream._pieces = self._texts(tokens, len(ids), sampling, stream)
        return stream

    def _texts(self, tokens: Iterator[int], n_prompt: int, sampling: Sampling, stream: Stream) -> Iterator[str]:
        started = time.perf_counter()
        first = started
        out: list[int] = []
        shown, reason, text = 0, "length", ""
        try:
            for token in tokens:
                if not out:
                    first = time.perf_counter()
                out.append(token)
                text = self.decode(out)
                if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
                    continue
                hits = [i for i in (text.find(s, max(0, shown - len(s))) for s in sampling.stop) if i >= 0]
                if hits:
                    reason, text = "stop", text[: min(hits)]
                    break
                safe = len(text) - _stop_holdback(text, sampling.stop)
                if safe > shown:
                    yield text[shown:safe]
                    shown = safe
            else:
                reason = "length" if len(out) == sampling.max_new_tokens else "stop"
            if len(text) > shown:
                yield text[shown:]
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()  # ends the decoding generator: its KV cache is freed now, not at garbage collection
            end = time.perf_counter()
            stream.result = Completion(
                text=text,
                finish_reason=reason,
                prompt_tokens=n_prompt,
                new_tokens=len(out),
                ttft_s=(first - started) if out else end - started,
                decode_tokens_per_s=(len(out) - 1) / (end - first) if len(out) > 1 and end > first else 0.0,
            )

    def summarize(self, text: str, sampling: Sampling | None = None) -> tuple[Stream, int]:
        """A summary of ``text`` and the number of its tokens dropped to fit the context (0 if none).

        A document too long for the context is cut at the end rather than refused: the start of a note is worth
        summarising, and the caller warns with the count. (``stream`` refuses an over-long prompt instead: there,
        cutting would silently change the question.)
        """
        if not text.strip():
            raise ConfigError("the document is empty; nothing to summarize")
        sampling = sampling or Sampling()
        doc = self._tokenizer.encode(text, add_special_tokens=False)
        overhead = len(self.encode(self.chat_prompt(SUMMARY_INSTRUCTION))) + 8  # + tokens merging across the join
        room = self.context - sampling.max_new_tokens - overhead
        if room < 16:
            raise ConfigError(
                f"max_new_tokens={sampling.max_new_tokens} leaves no room for the document in this bundle's "
                f"context of {self.context} tokens; lower it"
            )
        dropped = max(0, len(doc.ids) - room)
        if dropped:
            text = text[: doc.offsets[room - 1][1]]
        return self.stream(SUMMARY_INSTRUCTION + text, sampling), dropped

    def generate(
        self, prompt: str, sampling: Sampling | None = None, *, chat: bool = True, system: str | None = None
    ) -> Completion:
        """The whole completion at once (``stream`` joined)."""
        stream = self.stream(prompt, sampling, chat=chat, system=system)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result
