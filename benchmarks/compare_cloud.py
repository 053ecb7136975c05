"""The on-device bundle against the cloud stand-in serving the FP32 teacher, at every network profile. One run.

    python benchmarks/compare_cloud.py [--build out/demo] [--rows 200] [--cold-rows 30]

Uses the demo build (``out/demo``: its bundle, and the teacher checkpoint its report.json names under
``artifacts``, or the one finetune step in the build cache whose config matches the report's recipe). Builds
``out/demo-cmp`` from the demo recipe only when no demo build exists. Serves the teacher over TLS (self-signed) on
127.0.0.1, runs ``edgeslm.cloud.compare`` with every profile, and writes
``benchmarks/results/compare_demo.json`` plus the HTML report in ``<build>/compare/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeslm._fs import atomic_dir, write_json
from edgeslm.cloud.compare import CompareConfig, compare
from edgeslm.cloud.report import summary, write_compare_report
from edgeslm.cloud.server import StandIn, load_model
from edgeslm.cloud.tls import self_signed
from edgeslm.recipe import DataConfig

HERE = Path(__file__).parent
ROOT = HERE.parent


def _teacher(build: Path) -> Path:
    report = json.loads((build / "report.json").read_text())
    if "artifacts" in report:
        return Path(report["artifacts"]["teacher"])
    wanted = {k: v for k, v in report["recipe"]["finetune"].items() if k != "data"}
    for folder in sorted((build.parent / ".edgeslm-cache").glob("finetune-*")):
        config = json.loads((folder / "edgeslm.json").read_text()).get("config", {})
        if {k: v for k, v in config.items() if k != "data"} == wanted:
            return folder
    raise SystemExit(f"no teacher checkpoint for {build}: rebuild it with `edgeslm build`")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", type=Path, default=ROOT / "out" / "demo")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--cold-rows", type=int, default=30)
    ap.add_argument("--networks", default="loopback,wifi,4g,3g,satellite,flaky")
    args = ap.parse_args()
    build = args.build
    if not (build / "report.json").is_file():
        import subprocess

        build = ROOT / "out" / "demo-cmp"
        if not (build / "report.json").is_file():
            recipe = ROOT / "src" / "edgeslm" / "recipes" / "demo.toml"
            subprocess.run(["edgeslm", "build", "--recipe", str(recipe), "--out", str(build)], check=True)
    teacher = _teacher(build)
    report = json.loads((build / "report.json").read_text())
    data = DataConfig(name=report["dataset"])
    config = CompareConfig(rows=args.rows, cold_rows=args.cold_rows, networks=tuple(args.networks.split(",")))
    started = time.time()
    with tempfile.TemporaryDirectory() as tls:
        cert, key = self_signed(Path(tls))
        with StandIn(load_model(teacher, threads=1), certfile=cert, keyfile=key) as server:
            result: dict[str, Any] = compare(
                build / "bundle", server.url + "/models/teacher-fp32", data, config, cafile=cert, log=print
            )
    result["benchmark"] = {
        "command": "python benchmarks/compare_cloud.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "teacher": str(teacher),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "load_avg_1m_at_start": os.getloadavg()[0]},
        "seconds": round(time.time() - started, 1),
        "note": "device and cloud run on the same shared 2-core host; the cloud server is the FP32 torch teacher "
        "(one thread), the device the INT8 bundle (one thread)",
    }
    with atomic_dir(build / "compare", force=True) as tmp:
        write_compare_report(result, tmp)
    saved = json.loads((build / "compare" / "compare.json").read_text())
    write_json(HERE / "results" / "compare_demo.json", saved)
    for line in summary(result):
        print("-", line)
    print(f"wrote {HERE / 'results' / 'compare_demo.json'} and {build / 'compare' / 'report.html'}")


if __name__ == "__main__":
    main()
