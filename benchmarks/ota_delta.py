"""Delta size vs full bundle for three kinds of model change, and full vs delta update time on loopback.

    .venv/bin/python benchmarks/ota_delta.py [--student EXPORT/model.onnx] [--bundle out/demo/bundle]

Starts from a real build's fp32 student ONNX and its INT8 bundle (`make demo` writes both) and makes three new
releases of it: a re-quantization (same fp32 weights, per-channel instead of per-tensor INT8), a LoRA-only change
(a rank-8 update merged into every query and value weight, then the same INT8 quantization), and a retrain —
*simulated*, because retraining on this shared 2-core machine is off limits: every float weight moves by
N(0, (0.05 sd)^2) of its tensor, then the same quantization. For each: the full bundle tar, a bsdiff4 delta of the
tar, and a per-tensor delta (the changed ONNX initializers only, lzma-compressed). Then the real updater on
127.0.0.1: a fresh device's full install, and a device's delta update. Writes benchmarks/results/ota_delta.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _initializers(path: Path) -> dict[str, bytes]:
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i).tobytes() for i in onnx.load(str(path)).graph.initializer}


def _variant(fp32: Path, out: Path, change: str, rng: np.random.Generator) -> Path:
    """An fp32 ONNX with one kind of change applied to its weights."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32))
    qv = {
        n.input[1]
        for n in model.graph.node
        if n.op_type == "MatMul" and n.name.endswith(("/query/MatMul", "/value/MatMul"))
    }
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.ndim == 0:
            continue
        if change == "retrain" and w.size > 1:
            w = w + rng.normal(0, 0.05 * float(w.std()) + 1e-12, w.shape).astype(np.float32)
        elif change == "lora" and init.name in qv:
            r = 8
            a = rng.normal(0, 1, (w.shape[0], r)).astype(np.float32)
            b = rng.normal(0, 1, (r, w.shape[1])).astype(np.float32)
            delta = a @ b
            w = w + delta * (0.05 * float(w.std()) / float(delta.std()))
        else:
            continue
        init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), init.name))
    onnx.save(model, str(out))
    return out


def _quantize(src: Path, dst: Path, *, per_channel: bool) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel)
    return dst


def _bundle(model: Path, base_bundle: Path, out: Path, key: Path, note: str) -> Path:
    from edgeslm.bundle import MANIFEST, parse_manifest, write_bundle
    from edgeslm.secure.signing import sign_bundle

    m = parse_manifest((base_bundle / MANIFEST).read_bytes())
    fields = {k: v for k, v in m.to_dict().items() if k not in ("format_version", "files")}
    fields["extra"] = {**fields["extra"], "ota_benchmark_change": note}
    for k in ("labels", "inputs", "target_devices"):
        fields[k] = tuple(fields[k])
    write_bundle({"model.onnx": model, "tokenizer.json": base_bundle / "tokenizer.json"}, out, fields)
    sign_bundle(out, key)
    return out


def _tar(bundle: Path) -> bytes:
    from edgeslm.ota.packing import pack

    return pack({p.name: p.read_bytes() for p in bundle.iterdir()})


def _per_tensor_delta(old: Path, new: Path) -> tuple[int, int, int]:
    """(lzma bytes of the changed initializers, changed count, total count)."""
    a, b = _initializers(old), _initializers(new)
    changed = {k: v for k, v in b.items() if a.get(k) != v}
    payload = b"".join(k.encode() + b"\0" + v for k, v in sorted(changed.items()))
    return len(lzma.compress(payload, preset=6)), len(changed), len(b)


def sizes(student_fp32: Path, base_bundle: Path, work: Path, key: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    from edgeslm.ota.delta import make_delta

    rng = np.random.default_rng(0)
    base_tar = _tar(base_bundle)
    base_model = base_bundle / "model.onnx"
    bundles: dict[str, Path] = {}
    out: dict[str, Any] = {
        "base": {
            "bundle_tar_bytes": len(base_tar),
            "model_onnx_bytes": base_model.stat().st_size,
            "bundle_tar_lzma_bytes": len(lzma.compress(base_tar, preset=6)),
        },
    }
    for change in ("requantize", "lora", "retrain"):
        if change == "requantize":
            model = _quantize(student_fp32, work / "requantize.onnx", per_channel=True)
        else:
            fp32 = _variant(student_fp32, work / f"{change}-fp32.onnx", change, rng)
            model = _quantize(fp32, work / f"{change}.onnx", per_channel=False)
        bundle = _bundle(model, base_bundle, work / f"bundle-{change}", key, change)
        bundles[change] = bundle
        tar = _tar(bundle)
        started = time.perf_counter()
        patch = make_delta(base_tar, tar)
        diff_s = time.perf_counter() - started
        tensor_bytes, changed, total = _per_tensor_delta(base_model, bundle / "model.onnx")
        out[change] = {
            "full_tar_bytes": len(tar),
            "bsdiff4_bytes": len(patch),
            "bsdiff4_ratio": round(len(patch) / len(tar), 4),
            "bsdiff4_make_s": round(diff_s, 1),
            "per_tensor_lzma_bytes": tensor_bytes,
            "per_tensor_ratio": round(tensor_bytes / len(tar), 4),
            "initializers_changed": f"{changed}/{total}",
            "smaller": "bsdiff4" if len(patch) < tensor_bytes else "per-tensor",
        }
        print(change, out[change], flush=True)
    hidden = 384
    layers = sum(1 for k in _initializers(student_fp32) if k.endswith("attention.self.query.bias"))
    out["lora"]["adapter_fp32_bytes_r8_qv"] = layers * 2 * 8 * (hidden + hidden) * 4  # A (h x r) + B (r x h)
    return out, bundles


def update_times(base_bundle: Path, bundles: dict[str, Path], work: Path, pub: Path) -> dict[str, Any]:
    from edgeslm.ota.repository import Repository
    from edgeslm.ota.server import serving
    from edgeslm.ota.updater import update
    from edgeslm.secure.signing import load_public_key

    repo = Repository.init(work / "repo")
    repo.publish(base_bundle, channel="stable", device_classes=["host"])
    root = (repo.metadata / "1.root.json").read_bytes()
    kw = {"bootstrap_root": root, "trusted_keys": [load_public_key(pub)], "device_class": "host"}
    out: dict[str, Any] = {}
    with serving(repo.path / "public") as url:
        r = update(work / "device", url, **kw)  # type: ignore[arg-type]
        out["full_first_install"] = {"seconds": round(r.seconds, 2), "downloaded_bytes": r.downloaded_bytes}
        started = time.perf_counter()
        published = repo.publish(bundles["lora"], channel="stable", device_classes=["host"])
        publish_s = time.perf_counter() - started
        r = update(work / "device", url, **kw)  # type: ignore[arg-type]
        out["delta_update_lora"] = {
            "seconds": round(r.seconds, 2),
            "downloaded_bytes": r.downloaded_bytes,
            "delta": r.delta,
            "publish_s_incl_bsdiff": round(publish_s, 1),
            "delta_bytes": published.delta_length,
        }
        r = update(work / "device2", url, **kw)  # type: ignore[arg-type]
        out["full_install_lora"] = {
            "seconds": round(r.seconds, 2),
            "downloaded_bytes": r.downloaded_bytes,
            "delta": r.delta,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    students = sorted((ROOT / "out" / ".edgeslm-cache").glob("export-[0-9a-f]*/model.onnx"))
    parser.add_argument("--student", type=Path, default=students[0] if students else None)
    parser.add_argument("--bundle", type=Path, default=ROOT / "out" / "demo" / "bundle")
    args = parser.parse_args()
    if args.student is None or not args.bundle.is_dir():
        sys.exit("run `make demo` first: this benchmark starts from its fp32 student and INT8 bundle")
    from edgeslm.secure.signing import generate_keypair, sign_bundle

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key, pub = generate_keypair(work / "key")
        base = work / "base"
        import shutil

        shutil.copytree(args.bundle, base)
        sign_bundle(base, key)
        started = time.time()
        size, bundles = sizes(args.student, base, work, key)
        times = update_times(base, bundles, work, pub)
    result = {
        "command": "python benchmarks/ota_delta.py",
        "machine": f"{platform.machine()} {os.cpu_count()} cores (shared with a training run), "
        f"Python {platform.python_version()}",
        "student_fp32": str(args.student.relative_to(ROOT)) if args.student.is_relative_to(ROOT) else str(args.student),
        "base_bundle_sha256": hashlib.sha256(_tar(args.bundle)).hexdigest(),
        "retrain_is_simulated": "every float weight + N(0, (0.05 sd)^2); no real retraining on this machine",
        "sizes": size,
        "update_on_loopback": times,
        "wall_s": round(time.time() - started, 1),
    }
    out = ROOT / "benchmarks" / "results" / "ota_delta.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
