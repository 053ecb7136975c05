"""``Predictor(bundle).predict(texts)``: labels and scores from a bundle, on the device.

Imports numpy, onnxruntime and tokenizers only; a test checks that torch and transformers never load.
"""

from __future__ import annotations

import lzma
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from ..bundle import Manifest
from ..errors import BundleError, ConfigError, MissingExtraError
from .providers import Execution, build_session
from .verified_file import VerifiedModel, verify_streaming

try:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError(f"the runtime needs {e.name}; fix: pip install 'edgeslm[runtime]'") from e

__all__ = ["Prediction", "Predictor", "encode", "load_tokenizer", "model_bytes"]

MAX_MODEL_BYTES = 1 << 30  # a compressed model file may not unpack to more (a decompression bomb stops here)


def model_bytes(manifest: Manifest, blobs: dict[str, bytes] | bytes) -> bytes:
    """The bundle's ONNX graph (from the verified files, or the model file's bytes); a ``.xz`` model file (a
    weight-clustered bundle, entropy-coded) is decoded here.

    xz because it is in Python's standard library (no new dependency on the device) and codes the few distinct
    byte values of a clustered INT8 matrix close to their entropy; the blob was hash-checked before this.
    """
    blob = blobs if isinstance(blobs, bytes) else blobs[manifest.model]
    if not manifest.model.endswith(".xz"):
        return blob
    try:
        out = lzma.LZMADecompressor().decompress(blob, max_length=MAX_MODEL_BYTES + 1)
    except lzma.LZMAError as e:
        raise BundleError(f"bundle model `{manifest.model}` is not valid xz data ({e}); rebuild the bundle") from e
    if len(out) > MAX_MODEL_BYTES:
        raise BundleError(f"bundle model `{manifest.model}` unpacks to more than {MAX_MODEL_BYTES} bytes; refused")
    return out


def _not_generative(manifest: Manifest) -> None:
    if manifest.task == "text-generation":
        raise BundleError(
            "this is a text-generation bundle; Predictor runs classifiers and embedders: "
            "use `edgeslm generate` (edgeslm.runtime.generate.Generator)"
        )


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float  # probability of `label`
    scores: dict[str, float]  # probability of every label


def load_tokenizer(data: str, max_length: int) -> Tokenizer:
    """A tokenizer that truncates to ``max_length`` and pads a batch to its longest text (not a fixed length)."""
    tok = Tokenizer.from_str(data)
    pad = tok.padding or {}
    pad_id = pad.get("pad_id", tok.token_to_id("[PAD]") or 0)
    pad_token = pad.get("pad_token", "[PAD]")
    tok.no_padding()
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    tok.enable_truncation(max_length=max_length)
    return tok


def _valid_utf8(text: str) -> str:
    """The text with lone surrogates (legal in a Python str and in JSON, not in UTF-8) replaced by U+FFFD.

    tokenizers refuses such a string with a TypeError; a fuzzer or a JSON body with "\\ud800" sends one.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def encode(tokenizer: Tokenizer, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Token ids, attention mask and token type ids as int64 arrays of shape (batch, longest)."""
    encodings = tokenizer.encode_batch([_valid_utf8(t) for t in texts])
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def session_options(threads: int | None) -> ort.SessionOptions:
    """One session setup for every measurement: intra-op threads as asked, sequential execution."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


class Predictor:
    """Load a bundle (manifest and every file hash verified before the session is built) and classify texts.

    ``trusted_keys``: raw Ed25519 public keys; when given, the bundle must carry a valid ``manifest.sig`` by one.
    ``providers``: execution providers to try in order (``cuda``, ``xnnpack``, ``auto``, ...); the CPU is always
    the last resort, and ``execution`` records where the session runs and why faster ones were skipped.
    An ``embedding`` bundle answers ``embed`` instead of ``predict``.
    """

    CHUNK = 64  # texts per session run: 64 x 128 tokens of MiniLM activations is about 100 MB

    def __init__(
        self,
        bundle: str | Path,
        *,
        threads: int | None = None,
        trusted_keys: Sequence[bytes] | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        manifest, blobs, model = verify_streaming(Path(bundle), trusted_keys, accept=self._accept)
        self.manifest: Manifest = manifest
        self.labels = manifest.labels
        self.task = manifest.task
        try:
            try:
                self._tokenizer = load_tokenizer(blobs[manifest.tokenizer].decode("utf-8"), manifest.max_length)
            except Exception as e:  # tokenizers raises plain Exception on bad JSON
                raise BundleError(f"bundle tokenizer `{manifest.tokenizer}` does not load ({e}); rebuild it") from e
            try:
                session, execution = build_session(*self._session_input(model, threads), providers)
            except BundleError as e:
                raise BundleError(f"bundle model `{manifest.model}`: {e}") from e
        finally:
            model.close()
        self._session = session
        self.execution: Execution = execution  # the provider it runs on, and why faster ones were skipped
        self._inputs = [i.name for i in self._session.get_inputs()]
        if set(self._inputs) - {"input_ids", "attention_mask", "token_type_ids"}:
            raise BundleError(f"bundle model expects inputs {self._inputs}; this runtime feeds ids, mask and types")

    def _accept(self, manifest: Manifest) -> None:
        """Refuse a bundle this class cannot run from its manifest, before any file is hashed (a subclass narrows)."""
        _not_generative(manifest)

    def _session_input(self, model: VerifiedModel, threads: int | None) -> tuple[str | bytes, ort.SessionOptions]:
        """What the session is built from: the hashed open file rather than bytes (onnxruntime keeps its own copy
        of bytes it is given; an ``.xz`` model must be decoded first), and the options (a subclass adds to them)."""
        name = self.manifest.model
        source = model.read() if name.endswith(".xz") else model.source
        return (model_bytes(self.manifest, source) if isinstance(source, bytes) else source), session_options(threads)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw logits, shape (len(texts), labels); for an embedding bundle, the vectors (len(texts), dim).

        Runs ``CHUNK`` texts at a time, so a list of thousands costs time, not gigabytes of activations.
        """
        parts = []
        for start in range(0, len(texts), self.CHUNK):
            feed = encode(self._tokenizer, texts[start : start + self.CHUNK])
            (out,) = self._session.run(None, {k: feed[k] for k in self._inputs})
            parts.append(np.asarray(out, dtype=np.float32))
        return np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length sentence vectors, shape (len(texts), dim), from an ``embedding`` bundle."""
        if self.task != "embedding":
            raise ConfigError(
                f"this bundle's task is `{self.task}`, not `embedding`; use predict(), or build an "
                "embedding bundle with `edgeslm.embedding.build_embedding_bundle`"
            )
        batch = list(texts)
        if not all(isinstance(t, str) for t in batch):
            raise ConfigError("embed() takes a list of str; convert the inputs to text first")
        if not batch:
            return np.zeros((0, 0), dtype=np.float32)
        return self.logits(batch)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model sees for each text (special tokens included, after truncation)."""
        return [sum(e.attention_mask) for e in self._tokenizer.encode_batch([_valid_utf8(t) for t in texts])]

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text is longer than ``manifest.max_length`` tokens (the model sees only its start)."""
        return [bool(e.overflowing) for e in self._tokenizer.encode_batch([_valid_utf8(t) for t in texts])]

    @overload
    def predict(self, texts: str) -> Prediction: ...  # type: ignore[overload-overlap]
    @overload
    def predict(self, texts: Sequence[str]) -> list[Prediction]: ...

    def predict(self, texts: str | Sequence[str]) -> Prediction | list[Prediction]:
        """Classify one text (returns a Prediction) or a batch (returns a list).

        A dynamic-INT8 bundle picks activation scales per call, so a text's scores can move slightly (not its
        label, in our tests) with its batch neighbours; call with one text at a time for bit-exact repeatability.
        """
        if self.task != "text-classification":
            raise ConfigError(f"this bundle's task is `{self.task}`; use embed() for an embedding bundle")
        single = isinstance(texts, str)
        batch: list[str] = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) for t in batch):
            raise ConfigError("predict() takes a str or a list of str; convert the inputs to text first")
        if not batch:
            return []
        logits = self.logits(batch)
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        out = [
            Prediction(
                label=self.labels[int(p.argmax())],
                score=float(p.max()),
                scores={label: float(x) for label, x in zip(self.labels, p, strict=True)},
            )
            for p in probs
        ]
        return out[0] if single else out
