"""The failure table: batch, decode and shard workloads x kill, stop, crash, cut, one fault API.

Writes benchmarks/results/runtime_failures.json and docs/runtime_failures.png (+ the Gantt of one
batch crash, docs/runtime_failover_gantt.png).

Method: `EmulatedCluster` (a Ray head + one raylet per device on this machine, so a node crash is
real), every fault injected the same way — `ScheduledFault(device, at_s, kind)` through
`StageGroup.inject` (decode: `pipe.fault(device, kind)` at a token count), executed by the
stage actor on itself (kill = SIGKILL of its process, stop = SIGSTOP of it, crash = SIGKILL of
its raylet and itself, cut = its streams and heartbeats go silent).
- batch: PipeEdge's ViT-Base profile (micro-batch 8) on 2 Minnowboard + 2 RCC-VE boards with one
  spare RCC-VE, compute=emulated at a time_scale putting the predicted period at ~0.2 s of wall
  time; 60 micro-batches; the device of the second stage fails at 2.5 s; kill and crash are
  re-planned over the survivors (optimal planner), stop and cut go to the spare.
- decode: GPT-2 tiny (seeded, real compute, one thread) on 3 stage devices + 1 spare, 2
  sequences x 48 new tokens (greedy and sampled); the middle stage fails when sequence 0 has
  its 16th token (a whole decode takes well under a second, so the fault is placed by token);
  the spare takes over and every live sequence is replayed. Output compared with the same run
  without a fault.
- shard: a width plan (a seeded tiny Llama cut into width units, every unit on 2 of 3 devices)
  run by `api.robust.run_robust` (real compute, shaped 100 Mbps links, coordinator on its own
  device), 200 requests one after another; the first device fails 0.5 s in; its units fail over
  to their second replica (detected by a dead actor or the coordinator's 2 s deadline). Output
  compared with the intact model (no unit may be lost).
detected_after_s and recovered_after_s count from the injection (recovered = first result
after recovery). Targets (issue 15): kill < 0.5 s, crash < 2 s, stop < 3 s, cut < 3 s; 0 lost,
0 duplicated; decode outputs identical.

    .venv/bin/python benchmarks/runtime_failures.py [--trials 2] [--workloads batch,decode,shard]
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DOCS, RESULTS, write_result
from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
from edgesplit.core.plan import Plan
from edgesplit.planners import make_plan
from edgesplit.profile.pipeedge import import_pipeedge
from edgesplit.runtime import RuntimeConfig, ScheduledFault, run_plan
from edgesplit.runtime.cluster import EmulatedCluster
from edgesplit.runtime.config import FAULT_ACTIONS
from edgesplit.runtime.generation import GenerationConfig, GenerationPipeline, GenerationRequest
from edgesplit.runtime.report import FailureRecord

TARGETS_S = {"kill": 0.5, "crash": 2.0, "stop": 3.0, "cut": 3.0}
TARGET_PERIOD_S = 0.2
BATCH_FAIL_AT_S = 2.5
BATCH_REQUESTS = 60
DECODE_FAIL_AT_TOKEN = 16
DECODE_TOKENS = 48
DECODE_MODEL = "gpt2-tiny"
DECODE_DEVICES = ("g0", "g1", "g2")
DECODE_SPARE = "gs"
SHARD_DEVICES = ("w0", "w1", "w2")
SHARD_REQUESTS = 200  # ~4 s of requests: the fault at 0.5 s always lands mid-run
SHARD_FAIL_AT_S = 0.5


def _batch_setup() -> tuple[Any, Cluster, Plan, float]:
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
    plan = make_plan(profile, cluster.without({"spare0"}), "throughput")
    return profile, cluster, plan, TARGET_PERIOD_S / plan.predicted.period_s


def batch_trial(emulated: EmulatedCluster, kind: str, trial: int) -> dict[str, Any]:
    profile, cluster, plan, scale = _batch_setup()
    victim = plan.stages[1].device
    for device in cluster.device_names:
        emulated.add_device(device)

    def replanner(survivors: Cluster) -> Plan:
        spare = {"spare0"} & set(survivors.device_names)
        return make_plan(profile, survivors.without(spare), "throughput")

    standby = ("spare0",) if kind in ("stop", "cut") else ()
    config = RuntimeConfig(placement="resource", time_scale=scale, standby_devices=standby)
    order: list[int] = []
    gantt = DOCS / "runtime_failover_gantt.png" if (kind, trial) == ("crash", 0) else None
    report = run_plan(
        plan,
        cluster,
        profile,
        config=config,
        requests=BATCH_REQUESTS,
        replanner=replanner,
        faults=[ScheduledFault(victim, BATCH_FAIL_AT_S, kind)],  # type: ignore[arg-type]
        on_result=lambda rid, out: order.append(rid),
        timeline_path=gantt,
    )
    _forget_dead_node(emulated, victim, kind)
    return _row(
        "batch",
        kind,
        trial,
        victim,
        report.failures,
        submitted=report.requests.submitted,
        lost=report.requests.lost,
        duplicated=report.requests.duplicated,
        replayed=report.requests.replayed,
        in_order=order == list(range(BATCH_REQUESTS)),
        same_output=None,
    )


def _forget_dead_node(emulated: EmulatedCluster, device: str, kind: str) -> None:
    """After a crash the device's node is gone: forget it (the next trial starts a fresh one)."""
    if device in emulated.devices() and (kind == "crash" or not emulated.raylet_alive(device)):
        emulated.crash(device)


def _row(
    workload: str,
    kind: str,
    trial: int,
    device: str,
    failures: Sequence[FailureRecord],
    **counts: Any,
) -> dict[str, Any]:
    failure = failures[0] if failures else None
    return {
        "workload": workload,
        "kind": kind,
        "trial": trial,
        "device": device,
        "cause": failure.cause if failure else None,
        "action": failure.action if failure else None,
        "detected_after_s": failure.detected_after_s if failure else None,
        "recovered_after_s": failure.recovered_after_s if failure else None,
        **counts,
    }


def _decode_requests() -> list[GenerationRequest]:
    return [
        GenerationRequest(prompt_ids=[5, 6, 7], max_new_tokens=DECODE_TOKENS),
        GenerationRequest(prompt_ids=[9, 1], max_new_tokens=DECODE_TOKENS, temperature=1.0, seed=5),
    ]


def decode_trial(
    emulated: EmulatedCluster, kind: str, trial: int, reference: list[list[int]] | None
) -> tuple[dict[str, Any], list[list[int]]]:
    from edgesplit.models import model_spec_from_name, unit_names

    spec = model_spec_from_name(DECODE_MODEL)
    n = len(unit_names(spec))
    cuts = [round(i * n / 3) for i in range(4)]
    for device in (*DECODE_DEVICES, DECODE_SPARE):
        emulated.add_device(device)
    stages = [(d, cuts[i], cuts[i + 1]) for i, d in enumerate(DECODE_DEVICES)]
    runtime = RuntimeConfig(compute="real", placement="resource", standby_devices=(DECODE_SPARE,))
    victim = DECODE_DEVICES[1]
    with GenerationPipeline(
        spec, stages, GenerationConfig(max_concurrent=2, runtime=runtime), num_units=n
    ) as pipe:
        if reference is None:
            reference = [s.new_ids for s in pipe.generate(_decode_requests()).sequences]
        seen: list[int] = []

        def on_token(sequence_id: int, _: int) -> None:
            seen.append(sequence_id)
            if sequence_id == 0 and seen.count(0) == DECODE_FAIL_AT_TOKEN:
                pipe.fault(victim, kind)  # type: ignore[arg-type]

        report = pipe.generate(_decode_requests(), on_token=on_token)
    _forget_dead_node(emulated, victim, kind)
    outputs = [s.new_ids for s in report.sequences]
    row = _row(
        "decode",
        kind,
        trial,
        victim,
        report.failures,
        submitted=len(outputs),
        lost=sum(1 for o in outputs if len(o) < DECODE_TOKENS),
        duplicated=0 if all(len(o) == DECODE_TOKENS for o in outputs) else None,
        replayed=report.failures[0].replayed if report.failures else 0,
        in_order=True,
        same_output=outputs == reference,
    )
    return row, reference


def shard_trial(emulated: EmulatedCluster, kind: str, trial: int) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgesplit.api import robust as api_robust
    from edgesplit.models.width import WidthModel
    from edgesplit.planners.robust import StrategySpec

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=100,
    )
    wm = WidthModel(LlamaForCausalLM(config).eval(), num_ffn_groups=4)
    inputs = {"input_ids": torch.arange(16).reshape(1, 16)}
    problem = api_robust.drill_problem(wm, tokens_per_request=16)
    cluster = Cluster(
        source="wc",
        defaults=LinkDefaults(bandwidth_mbps=100),
        devices=tuple(
            DeviceSpec(name=d, kind="host", memory_mb=1000) for d in ("wc", *SHARD_DEVICES)
        ),
    )
    plan, _, _ = api_robust.robust_plan(
        problem,
        cluster,
        memory_copies=1.0,
        strategies=[StrategySpec(name="uniform", replication=2)],
    )
    for device in SHARD_DEVICES:
        emulated.add_device(device)
    victim = plan.devices[0]
    report = api_robust.run_robust(
        plan,
        cluster,
        wm,
        inputs,
        config=RuntimeConfig(compute="real", placement="resource"),
        requests=SHARD_REQUESTS,
        faults=[ScheduledFault(victim, SHARD_FAIL_AT_S, kind)],  # type: ignore[arg-type]
    )
    _forget_dead_node(emulated, victim, kind)
    return _row(
        "shard",
        kind,
        trial,
        victim,
        report.failures,
        submitted=report.requests,
        lost=report.requests - report.completed,
        duplicated=0,
        replayed=report.failovers,
        in_order=True,
        same_output=not report.lost_units,
    )


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for workload in sorted({r["workload"] for r in rows}, key=["batch", "decode", "shard"].index):
        for kind in FAULT_ACTIONS:
            sub = [r for r in rows if (r["workload"], r["kind"]) == (workload, kind)]
            detected = [r["detected_after_s"] for r in sub if r["detected_after_s"] is not None]
            recovered = [r["recovered_after_s"] for r in sub if r["recovered_after_s"] is not None]
            table[f"{workload}/{kind}"] = {
                "trials": len(sub),
                "detected": len(detected),
                "max_detected_after_s": max(detected, default=None),
                "max_recovered_after_s": max(recovered, default=None),
                "target_detected_s": TARGETS_S[kind],
                "within_target": bool(detected)
                and len(detected) == len(sub)
                and max(detected) < TARGETS_S[kind],
                "lost": sum(r["lost"] or 0 for r in sub),
                "duplicated": sum(r["duplicated"] or 0 for r in sub),
                "causes": sorted({str(r["cause"]) for r in sub}),
                "same_output": all(r["same_output"] for r in sub) if workload != "batch" else None,
            }
    return table


def _plot(table: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    detected = [table[n]["max_detected_after_s"] or 0.0 for n in names]
    recovered = [table[n]["max_recovered_after_s"] or 0.0 for n in names]
    targets = [table[n]["target_detected_s"] for n in names]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], detected, 0.4, label="detected after (max)")
    ax.bar([i + 0.2 for i in x], recovered, 0.4, label="recovered after (max)", alpha=0.7)
    ax.scatter(list(x), targets, marker="_", s=400, color="red", label="detection target")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("seconds after the fault")
    ax.set_title("one fault API: batch, decode and shard x kill/stop/crash/cut")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--workloads", default="batch,decode,shard")
    parser.add_argument(
        "--keep-others",
        action="store_true",
        help="keep the stored rows of the workloads not run now (rerun one workload)",
    )
    args = parser.parse_args()
    workloads = args.workloads.split(",")
    emulated = EmulatedCluster(RuntimeConfig())
    rows: list[dict[str, Any]] = []
    reference: list[list[int]] | None = None
    try:
        for kind in FAULT_ACTIONS:
            for trial in range(args.trials):
                if "batch" in workloads:
                    rows.append(batch_trial(emulated, kind, trial))
                    print(rows[-1], flush=True)
                if "decode" in workloads:
                    row, reference = decode_trial(emulated, kind, trial, reference)
                    rows.append(row)
                    print(row, flush=True)
                if "shard" in workloads:
                    try:
                        rows.append(shard_trial(emulated, kind, trial))
                        print(rows[-1], flush=True)
                    except Exception:  # the other workloads' rows still get written
                        traceback.print_exc()
    except BaseException:
        emulated.shutdown()
        raise
    if args.keep_others:
        stored = json.loads((RESULTS / "runtime_failures.json").read_text())["trials"]
        rows = [r for r in stored if r["workload"] not in workloads] + rows
    table = _summary(rows)
    _plot(table, DOCS / "runtime_failures.png")
    path = write_result(
        "runtime_failures",
        {
            "method": __doc__,
            "trials": rows,
            "summary": table,
            "targets_detected_s": TARGETS_S,
            "plot": "docs/runtime_failures.png",
            "gantt_plot": "docs/runtime_failover_gantt.png",
        },
        f"python benchmarks/runtime_failures.py --trials {args.trials}"
        + ("" if args.workloads == "batch,decode,shard" else f" --workloads {args.workloads}")
        + (" --keep-others" if args.keep_others else ""),
    )
    print(f"wrote {path}")
    emulated.shutdown()  # after writing: ray.shutdown() may end the process on this Ray build


if __name__ == "__main__":
    main()
