"""`edgeslm federate --superlink` on Flower's deployment engine: a SuperLink and three SuperNodes as real processes
on 127.0.0.1, each SuperNode with its own SST-2 rows and its copy of the demo build, one SIGKILLed while it trains
in round 1, two LoRA rounds to the end, every process stopped.

    .venv/bin/python benchmarks/federated_deploy.py [--build out/demo] [--rows 300]
        # -> benchmarks/results/federated_deploy.json

The pytest twin (tests/test_federate_deploy.py) runs the same scenario on the tiny test student.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from federated import RESULTS, ROOT, write_result

sys.path.insert(0, str(ROOT / "tests"))
from _fleet import LocalFleet  # the tests' fleet: one way to start and stop the processes


def deploy(build: Path, rows: int) -> dict[str, Any]:
    from edgeslm.data import load_dataset
    from edgeslm.learn.deploy import SuperLink
    from edgeslm.learn.federate import FederateConfig, federate
    from edgeslm.recipe import DataConfig

    work = Path(tempfile.mkdtemp(prefix="edgeslm-deploy-"))
    ds = load_dataset(DataConfig(name="sst2"))
    files = []
    for i in range(3):  # device i holds every third train row from i: its own rows, which never leave it
        path = work / f"device{i}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for j in range(i, 3 * rows, 3):
                writer.writerow([ds.train.texts[j], ds.label_names[ds.train.labels[j]]])
        files.append(path)
    config = FederateConfig(data=DataConfig(name="sst2"), clients=3, per_round=3, rounds=2, eval_rows=500)
    with LocalFleet(work / "fleet", [f"data='{f}' student='{build.resolve()}'" for f in files]) as fleet:

        def kill_node2_while_it_trains() -> None:
            deadline = time.monotonic() + 600
            while "Start `flwr-clientapp`" not in fleet.log("node2") and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2.0)  # inside its local training, past the model load
            fleet.kill("node2")

        threading.Thread(target=kill_node2_while_it_trains, daemon=True).start()
        t0 = time.monotonic()
        result = federate(build, work / "out", config, superlink=SuperLink(fleet.address, wait_for_fleet=300))
        seconds = time.monotonic() - t0
    s = result.summary
    return {
        "scenario": "3 SuperNodes with 300 SST-2 train rows each and the demo build; node2 SIGKILLed in round 1",
        "events": fleet.events,
        "left_running": fleet.alive(),
        "rounds": s["rounds"],
        "accuracy_per_round": s["accuracy"],
        "eval_rows": s["eval_rows"],
        "bundle_accuracy": s.get("bundle_accuracy"),
        "upload_bytes_per_client_round": s["upload_bytes_per_client_round"],
        "wire": {k: v for k, v in s["wire"].items() if k != "per_round"},
        "federate_seconds": round(seconds, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=ROOT / "out" / "demo")
    parser.add_argument("--rows", type=int, default=300)
    args = parser.parse_args()
    write_result(RESULTS / "federated_deploy.json", deploy(args.build, args.rows))
