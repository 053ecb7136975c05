"""Split inference on the device: the device runs the first k layers and sends activations, the server the rest.

A split folder (from ``learn.split_export.export_split``) has two halves that never need each other's files:
``device/`` (``front.onnx``: embeddings + layers 0..k-1, ``tokenizer.json``, ``split.json``) and ``server/``
(``back.onnx``: layers k.. + mean pooling + head, ``split.json``). Each ``split.json`` pins its files by sha256 and
both name the base bundle they were cut from.

What travels per example is one payload (``pack``): the layer-k hidden state of the real tokens only (padding never
leaves the device), as float32, float16 or int8 with one float32 scale per token row (symmetric absmax). The
server needs nothing else: every row it gets is a real token, so its attention mask is all ones.

The payload is **not** private: ``learn.inversion`` recovers the input tokens from it (measured in
``benchmarks/split_learning.py``). Split learning here saves the device the back half's compute and weights; it
does not hide the text from the server.

Imports numpy and onnxruntime only (plus tokenizers through the runtime): the device half must run where the
runtime runs.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, DataError
from ..runtime.predictor import encode, load_tokenizer, session_options
from ..runtime.providers import build_session

__all__ = ["CODECS", "SPLIT_FORMAT", "SplitDevice", "SplitHalf", "SplitServer", "pack", "read_split", "unpack"]

SPLIT_FORMAT = 1  # bump on any change an older reader would misread
SPLIT_MANIFEST = "split.json"
CODECS = ("fp32", "fp16", "int8")  # how the activations travel; int8 is per-token-row absmax with a float32 scale
_HEADER = struct.Struct("<4sBHH")  # magic, codec index, tokens, hidden: 9 bytes
_MAGIC = b"ESL1"
_MAX_TOKENS = 4096  # a payload claiming more rows than any bundle's max_length is refused before allocating


def pack(hidden: np.ndarray, codec: str = "int8") -> bytes:
    """One example's activations (tokens, hidden) as bytes: a 9-byte header, then the rows in ``codec``."""
    if codec not in CODECS:
        raise DataError(f"unknown activation codec `{codec}`; use one of {', '.join(CODECS)}")
    h = np.asarray(hidden, dtype=np.float32)
    if h.ndim != 2 or not 0 < h.shape[0] <= _MAX_TOKENS:
        raise DataError(f"activations must be (tokens, hidden) with 1..{_MAX_TOKENS} tokens, got {h.shape}")
    header = _HEADER.pack(_MAGIC, CODECS.index(codec), h.shape[0], h.shape[1])
    if codec == "fp32":
        return header + h.astype("<f4").tobytes()
    if codec == "fp16":
        return header + h.astype("<f2").tobytes()
    scale = np.maximum(np.abs(h).max(axis=1), 1e-12) / 127.0  # one scale per token row
    q = np.clip(np.rint(h / scale[:, None]), -127, 127).astype(np.int8)
    return header + scale.astype("<f4").tobytes() + q.tobytes()


def unpack(payload: bytes, hidden: int | None = None) -> np.ndarray:
    """The (tokens, hidden) float32 activations in ``payload``; a malformed or wrongly sized payload is refused."""
    if len(payload) < _HEADER.size:
        raise DataError(f"activation payload of {len(payload)} bytes is shorter than its {_HEADER.size}-byte header")
    magic, codec, n, width = _HEADER.unpack_from(payload)
    if magic != _MAGIC or codec >= len(CODECS) or not 0 < n <= _MAX_TOKENS or width == 0:
        raise DataError("the payload is not an edgeslm activation payload (bad magic, codec or size)")
    if hidden is not None and width != hidden:
        raise DataError(f"the payload has hidden size {width}, this server's half takes {hidden}; wrong split")
    body = memoryview(payload)[_HEADER.size :]
    name = CODECS[codec]
    size = {"fp32": 4 * n * width, "fp16": 2 * n * width, "int8": 4 * n + n * width}[name]
    if len(body) != size:
        raise DataError(
            f"the {name} payload for {n}x{width} activations needs {size} bytes after the header, got {len(body)}"
        )
    if name == "fp32":
        out = np.frombuffer(body, dtype="<f4").reshape(n, width)
    elif name == "fp16":
        out = np.frombuffer(body, dtype="<f2").reshape(n, width)
    else:
        scale = np.frombuffer(body[: 4 * n], dtype="<f4")
        out = np.frombuffer(body[4 * n :], dtype=np.int8).reshape(n, width) * scale[:, None]
    out = out.astype(np.float32)
    if not np.isfinite(out).all():
        raise DataError("the activation payload holds NaN or Inf; refused")
    return out


@dataclass(frozen=True)
class SplitHalf:
    """One verified half: its manifest and the bytes of its files."""

    path: Path
    meta: dict[str, Any]
    files: dict[str, bytes]


def read_split(path: str | Path, role: str) -> SplitHalf:
    """Read ``path`` (a split folder's ``device/`` or ``server/``, or the split folder itself) and check every hash."""
    path = Path(path)
    if (path / role / SPLIT_MANIFEST).is_file():
        path = path / role
    try:
        meta = json.loads((path / SPLIT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"`{path}` is not a readable split half ({e}); write one with export_split") from e
    if not isinstance(meta, dict) or meta.get("format_version") != SPLIT_FORMAT or meta.get("role") != role:
        raise BundleError(f"`{path / SPLIT_MANIFEST}` is not the {role} half of a split of format {SPLIT_FORMAT}")
    files: dict[str, bytes] = {}
    for name, entry in meta.get("files", {}).items():
        try:
            blob = (path / name).read_bytes()
        except OSError as e:
            raise BundleError(f"`{path / name}` is missing ({e}); copy the whole split half") from e
        if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
            raise BundleError(f"`{path / name}` does not match the hash in its {SPLIT_MANIFEST}; the split is damaged")
        files[name] = blob
    return SplitHalf(path, meta, files)


class SplitDevice:
    """The device half: text -> layer-k activations -> payload bytes. The text itself never leaves."""

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        half = read_split(path, "device")
        self.meta = half.meta
        self.layers = int(half.meta["layers"])  # k: encoder layers on the device
        self.hidden = int(half.meta["hidden"])
        self.tokenizer = load_tokenizer(half.files["tokenizer.json"].decode("utf-8"), int(half.meta["max_length"]))
        self._session, self.execution = build_session(half.files["front.onnx"], session_options(threads), providers)
        self._inputs = {i.name for i in self._session.get_inputs()}  # k = 0 needs no attention mask

    def activations(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's layer-k hidden state, real tokens only: a list of (tokens, hidden) float32 arrays."""
        feed = encode(self.tokenizer, list(texts))
        (hidden,) = self._session.run(None, {n: v for n, v in feed.items() if n in self._inputs})
        lengths = feed["attention_mask"].sum(axis=1)
        return [hidden[i, : int(n)].astype(np.float32) for i, n in enumerate(lengths)]

    def send(self, texts: Sequence[str], codec: str = "int8") -> list[bytes]:
        """The payloads the device would send, one per text."""
        return [pack(h, codec) for h in self.activations(texts)]


class SplitServer:
    """The server half: payloads -> logits (layers k.. + pooling + head)."""

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        half = read_split(path, "server")
        self.meta = half.meta
        self.hidden = int(half.meta["hidden"])
        self.labels = tuple(half.meta["labels"])
        self.max_length = int(half.meta["max_length"])
        self._session, self.execution = build_session(half.files["back.onnx"], session_options(threads), providers)

    def logits(self, payloads: Sequence[bytes]) -> np.ndarray:
        """(n, labels) logits; the rows are padded to the longest payload and masked."""
        rows = [unpack(p, self.hidden) for p in payloads]
        if any(len(r) > self.max_length for r in rows):  # the device truncates; a longer payload did not come from it
            raise DataError(f"an activation payload has more than this split's {self.max_length} tokens; refused")
        if not rows:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        longest = max(len(r) for r in rows)
        hidden = np.zeros((len(rows), longest, self.hidden), dtype=np.float32)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        for i, r in enumerate(rows):
            hidden[i, : len(r)] = r
            mask[i, : len(r)] = 1
        (out,) = self._session.run(None, {"hidden": hidden, "attention_mask": mask})
        return np.asarray(out, dtype=np.float32)

    def predict(self, payloads: Sequence[bytes]) -> list[str]:
        return [self.labels[i] for i in self.logits(payloads).argmax(axis=1)]
