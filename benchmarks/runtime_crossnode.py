"""Cross-node pipelining: throughput vs in-flight micro-batches between two per-device Ray nodes.

Writes benchmarks/results/runtime_crossnode.json and docs/runtime_crossnode.png.

Method: `EmulatedCluster` = a Ray head plus one raylet per device (xa, xb) on this machine, so an
activation really crosses from one node's object store/process to another's. For each activation
size (0.6 MB = ViT-Base at micro-batch 1, 6.4 MB = ViT-Large at micro-batch 8) and in-flight
k in 1, 2, 4, 8, 16:
- ray-object-refs: actor on xa returns the array (an object in xa's store), its ref is passed to
  an actor on xb that reads it; the driver keeps k such pairs outstanding (what issue 3 measured).
- tcp-direct (ours): a 2-stage emulated pipeline xa -> xb with zero compute and unshaped links,
  `max_in_flight = k`; activations go xa -> xb over our stream, only 1 KB returns to the driver.
items/s = completions over a fixed window after a warm-up (Ray) / 1 / steady period (ours).

    .venv/bin/python benchmarks/runtime_crossnode.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from common import DOCS, write_result
from edgesplit.core.cluster import Cluster, DeviceSpec
from edgesplit.core.cost import CostModel
from edgesplit.core.plan import Plan, PlannerInfo, StagePlacement
from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.runtime import RuntimeConfig, run_plan
from edgesplit.runtime.cluster import EmulatedCluster

SIZES = {"0.6MB": 600_000, "6.4MB": 6_455_296}
IN_FLIGHT = [1, 2, 4, 8, 16]


@ray.remote(num_cpus=0)
class Producer:
    def __init__(self, num_bytes: int) -> None:
        self.payload = np.zeros(num_bytes, dtype=np.uint8)

    def produce(self, index: int) -> np.ndarray:
        return self.payload


@ray.remote(num_cpus=0)
class Consumer:
    def consume(self, array: np.ndarray) -> int:
        return int(array.nbytes)


def ray_refs_rate(num_bytes: int, in_flight: int, window_s: float) -> float:
    producer = Producer.options(resources={"xa": 0.01}).remote(num_bytes)
    consumer = Consumer.options(resources={"xb": 0.01}).remote()
    ray.get(consumer.consume.remote(producer.produce.remote(-1)))
    outstanding = [consumer.consume.remote(producer.produce.remote(i)) for i in range(in_flight)]
    done, started = 0, None
    index = in_flight
    deadline = None
    while True:
        ready, outstanding = ray.wait(outstanding, num_returns=1, timeout=60)
        if not ready:
            break
        ray.get(ready)
        if started is None and index >= 2 * in_flight:
            started, deadline = time.perf_counter(), time.perf_counter() + window_s
        elif started is not None:
            done += 1
        if deadline is not None and time.perf_counter() >= deadline:
            break
        outstanding.append(consumer.consume.remote(producer.produce.remote(index)))
        index += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    ray.get(outstanding)
    ray.kill(producer)
    ray.kill(consumer)
    return done / elapsed if elapsed > 0 else 0.0


def tcp_rate(num_bytes: int, in_flight: int, requests: int) -> float:
    units = (
        UnitProfile(name="a", param_bytes=1.0, output_bytes=num_bytes, time_s={"k": 0.0}),
        UnitProfile(name="b", param_bytes=1.0, output_bytes=1000, time_s={"k": 0.0}),
    )
    profile = ModelProfile(model="xnode", batch_size=1, input_bytes=1000, units=units)
    cluster = Cluster(
        source="xa",
        devices=(
            DeviceSpec(name="xa", kind="k", memory_mb=1e4),
            DeviceSpec(name="xb", kind="k", memory_mb=1e4),
        ),
    )
    stages = (
        StagePlacement(device="xa", start=0, end=1),
        StagePlacement(device="xb", start=1, end=2),
    )
    plan = Plan(
        model="xnode",
        profile_hash=profile.digest(),
        cluster_hash=cluster.digest(),
        batch_size=1,
        objective="throughput",
        planner=PlannerInfo(name="manual"),
        stages=stages,
        predicted=CostModel(profile, cluster).predict(stages),
    )
    config = RuntimeConfig(placement="resource", link_shaping="off", max_in_flight=in_flight)
    report = run_plan(plan, cluster, profile, config=config, requests=requests)
    assert report.requests.lost == 0
    return 1.0 / report.measured.period_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    window_s = 1.0 if args.quick else 2.0
    rounds = 1 if args.quick else 3
    cluster = EmulatedCluster(RuntimeConfig())
    samples: dict[tuple[str, int], dict[str, list[float]]] = {}
    try:
        cluster.add_device("xa", object_store_bytes=300 * 1024 * 1024)
        cluster.add_device("xb", object_store_bytes=300 * 1024 * 1024)
        # Rounds sweep every setting in turn, so the load of this shared machine drifting over
        # minutes hits all settings alike; each figure is the median over rounds.
        for round_index in range(rounds):
            for label, num_bytes in SIZES.items():
                for k in IN_FLIGHT:
                    ray_rate = ray_refs_rate(num_bytes, k, window_s)
                    # enough micro-batches for ~2 s of steady state per point
                    requests = int(window_s * (800 if num_bytes < 1e6 else 250))
                    ours = tcp_rate(num_bytes, k, requests)
                    print(
                        f"round {round_index} {label} in-flight {k:2d}: ray refs "
                        f"{ray_rate:7.1f}/s  tcp-direct {ours:7.1f}/s"
                    )
                    entry = samples.setdefault((label, k), {"ray": [], "tcp": []})
                    entry["ray"].append(ray_rate)
                    entry["tcp"].append(ours)
    finally:
        cluster.shutdown()
    rows: list[dict[str, Any]] = []
    for (label, k), entry in samples.items():
        rows.append(
            {
                "size": label,
                "bytes": SIZES[label],
                "in_flight": k,
                "ray_object_refs_items_per_s": float(np.median(entry["ray"])),
                "tcp_direct_items_per_s": float(np.median(entry["tcp"])),
                "ray_object_refs_samples": entry["ray"],
                "tcp_direct_samples": entry["tcp"],
            }
        )
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, label in zip(axes, SIZES, strict=True):
        sub = [r for r in rows if r["size"] == label]
        ks = [r["in_flight"] for r in sub]
        ax.plot(ks, [r["ray_object_refs_items_per_s"] for r in sub], "o-", label="Ray object refs")
        ax.plot(ks, [r["tcp_direct_items_per_s"] for r in sub], "s-", label="edgesplit tcp-direct")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("micro-batches in flight")
        ax.set_ylabel("items/s across two Ray nodes")
        ax.set_title(f"{label} activations")
        ax.legend()
    fig.tight_layout()
    DOCS.mkdir(exist_ok=True)
    fig.savefig(DOCS / "runtime_crossnode.png", dpi=110)
    monotone = {}
    for label in SIZES:
        rates = [r["tcp_direct_items_per_s"] for r in rows if r["size"] == label]
        # "does not fall": no setting below 85 % of the rate at 1 in flight (issue 3 saw Ray's
        # object transfers fall to 11 % at 16 in flight); the ratio 16/1 is reported as well.
        monotone[label] = {
            "no_setting_below_85pct_of_in_flight_1": all(r >= 0.85 * rates[0] for r in rates),
            "ratio_16_to_1": rates[-1] / rates[0],
        }
    command = "python benchmarks/runtime_crossnode.py" + (" --quick" if args.quick else "")
    path = write_result(
        "runtime_crossnode",
        {
            "method": __doc__,
            "rows": rows,
            "tcp_direct_does_not_fall": monotone,
            "plot": "docs/runtime_crossnode.png",
        },
        command,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
