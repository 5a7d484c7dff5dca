"""Planner benchmark: planning time vs devices and kinds, optimality, PipeEdge comparison,
and simulator-vs-cost-model agreement. Writes benchmarks/results/planner.json and
docs/planner_time.png.

Method: wall time (time.perf_counter) of `edgesplit.planners.make_plan`, median of REPEATS runs
in one process, one thread, on whatever load the machine has (reported). The scenarios are in
benchmarks/scenarios.py; PipeEdge's measured board profiles come from src/edgesplit/data/pipeedge.

    .venv/bin/python benchmarks/planner.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from common import DOCS, write_result
from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
from edgesplit.core.plan import Plan
from edgesplit.core.profile import ModelProfile
from edgesplit.planners import make_plan
from edgesplit.profile.pipeedge import import_pipeedge
from edgesplit.sim import SimConfig, simulate
from scenarios import cluster_of, vit_huge_profile

TARGETS = [
    # name, counts per kind, distinct links, target seconds
    ("16 devices, 2 kinds", [8, 8], False, 0.2),
    ("16 devices, 5 kinds", [4, 3, 3, 3, 3], False, 1.0),
    ("16 devices, 4 kinds", [4, 4, 4, 4], False, 1.0),
    ("64 devices, 4 kinds", [16, 16, 16, 16], False, 2.0),
    ("12 distinct devices and links", [1] * 12, True, 2.0),
]
PIPEEDGE = [("4+4", 4, 4, 5.70, 5.04), ("8+8", 8, 8, 3.00, 2.57)]


def timed_plan(
    profile: ModelProfile, cluster: Cluster, objective: str, repeats: int
) -> tuple[Plan, float]:
    times = []
    plan = None
    for _ in range(repeats):
        started = time.perf_counter()
        plan = make_plan(profile, cluster, objective)  # type: ignore[arg-type]
        times.append(time.perf_counter() - started)
    assert plan is not None
    return plan, statistics.median(times)


def sim_ratio(plan: Plan, profile: ModelProfile, cluster: Cluster) -> float:
    result = simulate(
        plan, profile, cluster, SimConfig(num_microbatches=300, record_timeline=False)
    )
    return result.throughput_per_s / plan.predicted.throughput_per_s


def pipeedge_cluster(num_minnow: int, num_rcc: int) -> Cluster:
    devices = [
        DeviceSpec(name=f"mb{i}", kind="Minnowboard-E3845", memory_mb=2048)
        for i in range(num_minnow)
    ] + [DeviceSpec(name=f"rcc{i}", kind="RCC-VE-C2000", memory_mb=8192) for i in range(num_rcc)]
    return Cluster(
        source="mb0",
        defaults=LinkDefaults(bandwidth_mbps=1000, latency_ms=0),
        devices=tuple(devices),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sweep points")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    targets: list[dict[str, Any]] = []
    print(
        f"{'scenario':34} {'objective':10} {'time s':>8} {'target':>7} {'optimal':>8} {'gap':>6} {'period s':>9} {'sim/cost':>9}"
    )
    for name, counts, distinct, target in TARGETS:
        profile = vit_huge_profile(len(counts))
        cluster = cluster_of(counts, distinct_links=distinct)
        for objective in ("throughput", "latency"):
            plan, elapsed = timed_plan(profile, cluster, objective, repeats)
            ratio = sim_ratio(plan, profile, cluster)
            row = {
                "scenario": name,
                "num_devices": sum(counts),
                "num_kinds": len(counts),
                "num_units": profile.num_units,
                "objective": objective,
                "time_s": elapsed,
                "target_s": target,
                "meets_target": elapsed < target,
                "optimal": plan.predicted.optimal,
                "gap": plan.predicted.gap,
                "period_s": plan.predicted.period_s,
                "latency_s": plan.predicted.latency_s,
                "num_stages": len(plan.stages),
                "sim_throughput_over_cost_model": ratio,
            }
            targets.append(row)
            print(
                f"{name:34} {objective:10} {elapsed:8.3f} {target:7.1f} {plan.predicted.optimal!s:>8} "
                f"{(plan.predicted.gap or 0):6.3f} {plan.predicted.period_s:9.3f} {ratio:9.4f}"
            )

    sweep: list[dict[str, Any]] = []
    sizes = [2, 4, 8, 16, 32, 64] if not args.quick else [2, 8, 32]
    for num_kinds in (2, 4):
        profile = vit_huge_profile(num_kinds)
        for size in sizes:
            if size < num_kinds:
                continue
            counts = [size // num_kinds] * num_kinds
            plan, elapsed = timed_plan(profile, cluster_of(counts), "throughput", repeats)
            sweep.append(
                {
                    "series": f"{num_kinds} kinds",
                    "num_devices": size,
                    "time_s": elapsed,
                    "optimal": plan.predicted.optimal,
                }
            )
    for size in [4, 6, 8, 10, 12] if not args.quick else [4, 8, 12]:
        profile = vit_huge_profile(size)
        plan, elapsed = timed_plan(
            profile, cluster_of([1] * size, distinct_links=True), "throughput", repeats
        )
        sweep.append(
            {
                "series": "all distinct",
                "num_devices": size,
                "time_s": elapsed,
                "optimal": plan.predicted.optimal,
            }
        )

    pipeedge_rows = []
    large = import_pipeedge("google/vit-large-patch16-224", 8)
    for name, minnow, rcc, upstream, optimum in PIPEEDGE:
        cluster = pipeedge_cluster(minnow, rcc)
        plan, elapsed = timed_plan(large, cluster, "throughput", repeats)
        pipeedge_rows.append(
            {
                "cluster": name,
                "edgesplit_period_s": plan.predicted.period_s,
                "upstream_scheduler_period_s": upstream,
                "published_optimum_s": optimum,
                "speedup_vs_upstream": upstream / plan.predicted.period_s,
                "time_s": elapsed,
                "sim_throughput_over_cost_model": sim_ratio(plan, large, cluster),
                "stages": [[s.device, s.start, s.end] for s in plan.stages],
            }
        )
        print(
            f"PipeEdge {name}: edgesplit {plan.predicted.period_s:.3f} s vs upstream {upstream} s (optimum {optimum}) in {elapsed:.3f} s"
        )

    plot = DOCS / "planner_time.png"
    DOCS.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for series in ("2 kinds", "4 kinds", "all distinct"):
        points = [r for r in sweep if r["series"] == series]
        ax.plot(
            [r["num_devices"] for r in points],
            [r["time_s"] for r in points],
            marker="o",
            label=series,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("devices")
    ax.set_ylabel("planning time (s, median)")
    ax.set_title("optimal planner, ViT-Huge-sized profile (128 units), throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    plt.close(fig)

    path = write_result(
        "planner",
        {
            "method": f"wall time of make_plan, median of {repeats}; sim = 300 micro-batches, steady state after 25 %",
            "scenarios": {"targets": [t[:3] for t in TARGETS], "pipeedge": PIPEEDGE},
            "targets": targets,
            "sweep": sweep,
            "pipeedge": pipeedge_rows,
            "plot": str(plot.relative_to(DOCS.parent)),
        },
        command="python benchmarks/planner.py" + (" --quick" if args.quick else ""),
    )
    print(f"results: {path}\nplot: {plot}")


if __name__ == "__main__":
    main()
