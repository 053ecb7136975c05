"""Step 3, `quantize`: INT8 / INT4 with onnxruntime's quantization tools. One verb, dispatched on the config's type.

``quantize(src, out, Int8DynamicConfig())`` or ``quantize(src, out, Int8StaticConfig(calibration_rows=256))``;
a new method is a new config class plus a handler registered in ``_HANDLERS``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._fs import atomic_dir
from ..data import load_dataset
from ..errors import ConfigError, ModelError
from ..recipe import Int4WeightOnlyConfig, Int8DynamicConfig, Int8StaticConfig, QuantizeConfig
from ..runtime.predictor import encode, load_tokenizer

__all__ = ["quantize"]


def _dynamic(src: Path, dst: Path, config: Int8DynamicConfig, meta: dict[str, Any]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = _most_sensitive(src, config, meta) if config.keep_float else []
    meta["kept_float"] = keep
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=config.per_channel, nodes_to_exclude=keep)


def _most_sensitive(src: Path, config: Int8DynamicConfig, meta: dict[str, Any]) -> list[str]:
    """The ``keep_float`` MatMuls whose INT8 alone moves the logits most on real train rows (one at a time)."""
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    texts = load_dataset(config.data).train.texts[: config.calibration_rows]
    tokenizer = load_tokenizer((src.parent / "tokenizer.json").read_text(encoding="utf-8"), meta["max_length"])
    feed = encode(tokenizer, texts)

    def logits(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return np.asarray(session.run(None, {k: feed[k] for k in names})[0])

    reference = logits(src)
    matmuls = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node if n.op_type == "MatMul"]
    drift: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        one = Path(scratch) / "one.onnx"
        for name in matmuls:
            quantize_dynamic(src, one, weight_type=QuantType.QInt8, nodes_to_quantize=[name])
            drift[name] = float(np.abs(logits(one) - reference).mean())
    return sorted(drift, key=drift.__getitem__, reverse=True)[: config.keep_float]


def _static(src: Path, dst: Path, config: Int8StaticConfig, meta: dict[str, Any]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    texts = load_dataset(config.data).train.texts[: config.calibration_rows]
    tokenizer = load_tokenizer((src.parent / "tokenizer.json").read_text(encoding="utf-8"), meta["max_length"])

    class Reader(CalibrationDataReader):
        """Real train sentences, batch 1, as the device will see them."""

        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = (encode(tokenizer, [t]) for t in texts)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    quantize_static(
        src,
        dst,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=config.per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def _int4(src: Path, dst: Path, config: Int4WeightOnlyConfig, meta: dict[str, Any]) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src)),
        bits=4,
        block_size=config.block_size,
        is_symmetric=config.symmetric,
        accuracy_level=config.accuracy_level or None,
        op_types_to_quantize=("MatMul", "Gather") if config.embeddings else ("MatMul",),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


_HANDLERS: dict[type, Callable[[Path, Path, Any, dict[str, Any]], None]] = {
    Int8DynamicConfig: _dynamic,
    Int8StaticConfig: _static,
    Int4WeightOnlyConfig: _int4,
}


def quantize(src: Path, out: Path, config: QuantizeConfig, *, force: bool = False) -> Path:
    """Quantize the ONNX model folder ``src`` (from `export`) into ``out``."""
    src = Path(src)
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise ConfigError(
            f"no quantization handler for {type(config).__name__}; use one of "
            f"{', '.join(c.__name__ for c in _HANDLERS)}"
        )
    if not (src / "model.onnx").is_file():
        raise ModelError(f"`{src}` has no model.onnx; run `edgeslm export` first and pass its output folder")
    meta = json.loads((src / "edgeslm.json").read_text(encoding="utf-8"))
    with atomic_dir(Path(out), force=force) as tmp:
        root = logging.getLogger()
        level, root.level = root.level, logging.ERROR  # onnxruntime.quantization logs generic advice as warnings
        # onnxruntime's quantizers write a shape-inferred copy beside their input (`model-inferred.onnx`), so they get
        # a private copy: the step never writes into `src`, and two processes quantizing one cached export (search
        # workers) cannot delete each other's file.
        source = tmp / ".source" / "model.onnx"
        source.parent.mkdir()
        for name in ("model.onnx", "tokenizer.json"):  # the handlers calibrate with the tokenizer beside the model
            shutil.copyfile(src / name, source.parent / name)
        try:
            handler(source, tmp / "model.onnx", config, meta)
        except Exception as e:  # onnxruntime raises plain exceptions
            raise ModelError(f"quantizing `{src}` with {type(config).__name__} failed ({e})") from e
        finally:
            root.setLevel(level)
            shutil.rmtree(source.parent, ignore_errors=True)
        shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
        meta["quantize"] = {"method": type(config).__name__, **dataclasses.asdict(config)}
        meta["quantize"].pop("data", None)
        if "kept_float" in meta:  # mixed precision: which MatMuls stayed FP32
            meta["quantize"]["kept_float"] = meta.pop("kept_float")
        (tmp / "edgeslm.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(out)
