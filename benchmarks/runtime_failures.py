"""Failure handling: detection and recovery times, lost/duplicated requests, over repeated trials.

Writes benchmarks/results/runtime_failures.json and docs/runtime_failover_gantt.png.

Method: `EmulatedCluster` (a Ray head + one raylet per device on this machine), PipeEdge's
ViT-Base profile (micro-batch 8) on 2 Minnowboard + 2 RCC-VE boards with one spare RCC-VE,
compute=emulated at time_scale so the predicted period is ~0.2 s of wall time. The optimal plan
runs; mid-stream (2.5 s) the device of its second stage fails by one of:
- kill9: SIGKILL of its stage process (re-planned over survivors by the optimal planner);
- node-crash: SIGKILL of the device's raylet and stage process (re-planned);
- node-hang: SIGSTOP of the device's raylet and stage process (the spare takes the stage).
Detection = first failure signal (Ray actor death, heartbeat silence, lost stream) minus the
injection time; recovery = first result after re-configuration minus the injection time.

    .venv/bin/python benchmarks/runtime_failures.py [--trials 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DOCS, write_result
from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
from edgesplit.core.plan import Plan
from edgesplit.planners import make_plan
from edgesplit.profile.pipeedge import import_pipeedge
from edgesplit.runtime import RuntimeConfig, ScheduledFault, run_plan
from edgesplit.runtime.cluster import EmulatedCluster

TARGET_PERIOD_S = 0.2
FAIL_AT_S = 2.5
REQUESTS = 60


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    profile = import_pipeedge("google/vit-base-patch16-224", 8)
    devices = [
        DeviceSpec(name="mb0", kind="Minnowboard-E3845", memory_mb=2048),
        DeviceSpec(name="mb1", kind="Minnowboard-E3845", memory_mb=2048),
        DeviceSpec(name="rcc0", kind="RCC-VE-C2000", memory_mb=8192),
        DeviceSpec(name="rcc1", kind="RCC-VE-C2000", memory_mb=8192),
    ]
    spare = DeviceSpec(name="spare0", kind="RCC-VE-C2000", memory_mb=8192)
    cluster = Cluster(
        source="mb0", defaults=LinkDefaults(bandwidth_mbps=1000), devices=(*devices, spare)
    )
    working = cluster.without({"spare0"})
    plan = make_plan(profile, working, "throughput")
    scale = TARGET_PERIOD_S / plan.predicted.period_s
    victim = plan.stages[1].device

    def replanner(survivors: Cluster) -> Plan:
        return make_plan(
            profile,
            survivors.without({"spare0"}) if "spare0" in survivors.device_names else survivors,
            "throughput",
        )

    emulated = EmulatedCluster(RuntimeConfig())
    trials: list[dict[str, Any]] = []
    try:
        for mode in ("kill9", "node-crash", "node-hang"):
            for trial in range(args.trials):
                for device in cluster.device_names:
                    emulated.add_device(device)
                stopped: list[int] = []

                def act(
                    info: dict[str, Any], mode: str = mode, stopped: list[int] = stopped
                ) -> None:
                    if mode == "node-crash":
                        emulated.crash(info["device"])
                    else:
                        stopped.extend(emulated.hang(info["device"], [int(info["pid"])]))

                action: Any = "kill" if mode == "kill9" else act
                standby = ("spare0",) if mode == "node-hang" else ()
                config = RuntimeConfig(
                    placement="resource", time_scale=scale, standby_devices=standby
                )
                order: list[int] = []
                gantt = (
                    DOCS / "runtime_failover_gantt.png"
                    if (mode, trial) == ("node-crash", 0)
                    else None
                )
                try:
                    report = run_plan(
                        plan,
                        cluster,
                        profile,
                        config=config,
                        requests=REQUESTS,
                        replanner=replanner,
                        faults=[ScheduledFault(victim, FAIL_AT_S, action)],
                        on_result=lambda rid, out, o=order: o.append(rid),
                        timeline_path=gantt,
                    )
                finally:
                    if stopped:
                        emulated.resume_and_remove(victim, stopped)
                failure = report.failures[0] if report.failures else None
                row = {
                    "mode": mode,
                    "trial": trial,
                    "device": victim,
                    "detected_after_s": failure.detected_after_s if failure else None,
                    "recovered_after_s": failure.recovered_after_s if failure else None,
                    "cause": failure.cause if failure else None,
                    "action": failure.action if failure else None,
                    "submitted": report.requests.submitted,
                    "completed": report.requests.completed,
                    "lost": report.requests.lost,
                    "duplicated": report.requests.duplicated,
                    "replayed": report.requests.replayed,
                    "replayed_from_stage_output": failure.replayed_from_stage_output
                    if failure
                    else 0,
                    "in_order": order == list(range(REQUESTS)),
                    "new_stages": [f"{s.device}[{s.start},{s.end})" for s in failure.new_stages]
                    if failure
                    else [],
                }
                print(
                    f"{mode} #{trial}: detected {row['detected_after_s']} recovered "
                    f"{row['recovered_after_s']} lost {row['lost']} dup {row['duplicated']}"
                    f" in-order {row['in_order']}"
                )
                trials.append(row)
                if mode == "node-crash":
                    emulated.add_device(victim)
    except BaseException:
        emulated.shutdown()
        raise
    summary = {}
    for mode in ("kill9", "node-crash", "node-hang"):
        sub = [t for t in trials if t["mode"] == mode]
        detected = [t["detected_after_s"] for t in sub if t["detected_after_s"] is not None]
        recovered = [t["recovered_after_s"] for t in sub if t["recovered_after_s"] is not None]
        summary[mode] = {
            "trials": len(sub),
            "max_detected_after_s": max(detected, default=None),
            "max_recovered_after_s": max(recovered, default=None),
            "lost": sum(t["lost"] for t in sub),
            "duplicated": sum(t["duplicated"] for t in sub),
            "all_in_order": all(t["in_order"] for t in sub),
        }
    path = write_result(
        "runtime_failures",
        {
            "method": __doc__,
            "plan": [f"{s.device}[{s.start},{s.end})" for s in plan.stages],
            "predicted_period_s": plan.predicted.period_s,
            "time_scale": scale,
            "fail_at_s": FAIL_AT_S,
            "requests": REQUESTS,
            "trials": trials,
            "summary": summary,
            "gantt_plot": "docs/runtime_failover_gantt.png",
        },
        f"python benchmarks/runtime_failures.py --trials {args.trials}",
    )
    print(f"wrote {path}")
    emulated.shutdown()  # after writing: ray.shutdown() may end the process on this Ray build


if __name__ == "__main__":
    main()
