"""The public surface is small and pinned; the runtime never pulls in torch or transformers."""

from __future__ import annotations

import edgeslm
from conftest import modules_after

PUBLIC = [
    "BundleError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DistillConfig",
    "EdgeSLMError",
    "EvalConfig",
    "ExportConfig",
    "FinetuneConfig",
    "Int4WeightOnlyConfig",
    "Int8DynamicConfig",
    "Int8StaticConfig",
    "MissingExtraError",
    "ModelError",
    "Predictor",
    "Recipe",
    "build",
    "distill",
    "evaluate",
    "export_onnx",
    "finetune",
    "load_dataset",
    "load_recipe",
    "quantize",
]


def test_public_api_is_pinned() -> None:
    assert sorted(edgeslm.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(edgeslm, name) is not None


def test_error_tree() -> None:
    for cls in (edgeslm.ConfigError, edgeslm.DataError, edgeslm.ModelError, edgeslm.BundleError):
        assert issubclass(cls, edgeslm.EdgeSLMError)


def test_runtime_imports_no_torch_and_no_transformers() -> None:
    mods = modules_after("import edgeslm.runtime\nfrom edgeslm.runtime import Predictor")
    assert "onnxruntime" in mods and "tokenizers" in mods
    assert not {m for m in mods if m.split(".")[0] in {"torch", "transformers", "onnx"}}


def test_package_import_is_light() -> None:
    mods = modules_after("import edgeslm")
    assert not {m for m in mods if m.split(".")[0] in {"torch", "transformers", "onnxruntime", "numpy"}}
