"""Planning with stage dtypes and link encodings (issue 17): two scenarios, JSON + a plot.

    .venv/bin/python benchmarks/precision_plans.py [--part memory|pipeedge|all] [--images 1024] [--batch 4]

memory: the trained ViT of `edgesplit quality -t vit-fashion` (real weights, Fashion-MNIST),
profiled here per dtype at micro-batch 4 (weights, not activations, fill memory), on 3 emulated
devices whose memory lies between what an int8 plan and what a float32 plan needs (both
thresholds found by the planner itself and recorded). float32 alone is infeasible; the joint
planner (float32/bfloat16/int8 stages, float32/float16/int8-token links, the measured quality
table, a 0.5-point budget) and an int8-only plan each run for real through the runtime (Ray
actors, TCP frames, compute="real") on test images; accuracy is set beside float32's on the
same images and the plan's predicted loss, and the run's outputs beside the same stages chained
in process.

pipeedge: PipeEdge's 8 Minnowboard + 8 RCC-VE cluster with ViT-Large (their published
per-sublayer board times, micro-batch 8) at 100 Mbps (and a sweep 1000/300/100/30/10 Mbps).
The boards' int8/bfloat16 times are not published, so each sublayer's time and weight bytes
are scaled by the ratio measured here for the same kind of unit (attention or MLP half of a
ViT-Base block, `edgesplit profile --dtype`, batch 1, one thread); the quality table is the
measured ViT Fashion-MNIST table (whole-model dtype losses; each encoding's worst measured cut)
standing in for ViT-Large. Periods are the cost model's (planning only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import DOCS, write_result
from edgesplit import api
from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
from edgesplit.core.plan import Plan
from edgesplit.core.profile import ModelProfile, UnitDtypeProfile, UnitProfile
from edgesplit.core.quality import LinkQuality, QualityTable
from edgesplit.errors import PlanInfeasibleError

DTYPES = ("float32", "bfloat16", "int8")
ENCODINGS = ("float32", "float16", "int8-token")
KIND = "bench-host"
BUDGET_POINTS = 0.5
BANDWIDTHS = (1000, 300, 100, 30, 10)


def _joint_plan(profile: ModelProfile, cluster: Cluster, table: QualityTable) -> Plan:
    """Every dtype and link encoding allowed, under the table's budget of BUDGET_POINTS."""
    return api.plan(
        profile,
        cluster,
        dtypes=DTYPES,  # type: ignore[arg-type]
        link_encodings=ENCODINGS,  # type: ignore[arg-type]
        quality=table,
        max_quality_loss=BUDGET_POINTS,
    )


# -- memory scenario ---------------------------------------------------------------------------
def _cluster(memory_mb: float, names: tuple[str, ...] = ("a", "b", "c")) -> Cluster:
    return Cluster(
        source=names[0],
        defaults=LinkDefaults(bandwidth_mbps=1000, latency_ms=0.5),
        devices=tuple(DeviceSpec(name=n, kind=KIND, memory_mb=memory_mb) for n in names),
    )


def _threshold_mb(profile: ModelProfile, dtypes: tuple[str, ...]) -> float:
    """Smallest per-device memory (MB, 0.01 MB) at which the planner finds a plan."""
    lo, hi = 0.01, 4 * sum(u.param_bytes for u in profile.units) / 1e6 + 100
    while hi - lo > 0.01:
        mid = (lo + hi) / 2
        try:
            api.plan(profile, _cluster(mid), dtypes=dtypes)  # type: ignore[arg-type]
            hi = mid
        except PlanInfeasibleError:
            lo = mid
    return hi


def memory_scenario(num_images: int, batch: int) -> dict[str, Any]:
    import torch

    from edgesplit.profile.quality import load_quality_task

    torch.set_num_threads(1)
    task = load_quality_task("vit-fashion", num_samples=num_images)
    model_dir = str(task.spec.checkpoint)
    table = api.precision.load_quality_table(
        Path(__file__).parent / "results" / "quality_vit-fashion.json"
    )
    started = time.perf_counter()
    profile = api.profile(model_dir, batch, repeats=3, warmup=1, device_kind=KIND, dtypes=DTYPES)  # type: ignore[arg-type]
    profile_s = time.perf_counter() - started
    table = table.model_copy(update={"model": profile.model})
    need_float32 = _threshold_mb(profile, ("float32",))
    need_int8 = _threshold_mb(profile, ("int8",))
    memory_mb = round((need_float32 + need_int8) / 2, 2)
    cluster = _cluster(memory_mb)
    float32_error = ""
    try:
        api.plan(profile, cluster)
    except PlanInfeasibleError as e:
        float32_error = str(e)
    assert float32_error, "float32 should not fit"
    images = np.concatenate([b["pixel_values"].numpy() for b in task.batches])[:num_images]
    int8_only = api.plan(
        profile,
        cluster,
        dtypes=("int8",),
        quality=table,
        max_quality_loss=BUDGET_POINTS,
    )
    runs = {
        "joint": _run_for_real(
            task, _joint_plan(profile, cluster, table), cluster, profile, images
        ),
        "int8 only": _run_for_real(task, int8_only, cluster, profile, images),
    }
    return {
        "model": model_dir,
        "profile": {
            "batch_size": batch,
            "seconds": round(profile_s, 1),
            "weights_mb": {d: sum(profile.param_bytes_for(d)) / 1e6 for d in DTYPES},
            "whole_model_s": {d: sum(profile.times_for(KIND, d)) for d in DTYPES},
        },
        "memory_per_device_mb": memory_mb,
        "float32_needs_mb_per_device": need_float32,
        "int8_needs_mb_per_device": need_int8,
        "float32_only": float32_error,
        "budget_points": BUDGET_POINTS,
        "runs": runs,
    }


def _run_for_real(
    task: Any, plan: Plan, cluster: Cluster, profile: ModelProfile, images: np.ndarray
) -> dict[str, Any]:
    """Run `plan` through the runtime (real compute) on `images`; accuracy beside float32's."""
    batch = profile.batch_size
    requests = [{"pixel_values": images[i : i + batch]} for i in range(0, len(images), batch)]
    outputs: dict[int, np.ndarray] = {}
    report = api.run(
        plan,
        cluster,
        profile,
        config=api.RuntimeConfig(compute="real", placement="local"),
        requests=requests,
        on_result=lambda rid, out: outputs.__setitem__(rid, out["logits"]),
    )
    logits = np.concatenate([outputs[i] for i in range(len(requests))])
    accuracy = float((logits.argmax(-1) == _labels(len(images))).mean())
    stages = [(s.start, s.end, s.dtype) for s in plan.stages]
    encodings = [s.link_encoding for s in plan.stages[:-1]]
    in_process, float32_accuracy, same = _in_process(task, stages, encodings, logits, batch)
    predicted = plan.predicted.quality
    assert predicted is not None
    return {
        "plan": json.loads(plan.model_dump_json()),
        "predicted_loss_points": predicted.loss,
        "images": len(images),
        "requests": len(requests),
        "lost": report.requests.lost,
        "errored": report.requests.errored,
        "accuracy": accuracy,
        "float32_unsplit_accuracy": float32_accuracy,
        "measured_loss_points": 100 * (float32_accuracy - accuracy),
        "in_process_same_stages_accuracy": in_process,
        "outputs_equal_in_process": same,
        "measured_period_s": report.measured.period_s,
    }


def _labels(count: int) -> np.ndarray:
    from edgesplit.models.train_vit import load_image_dataset

    return np.asarray(load_image_dataset("fashion").test_y[:count])


def _in_process(
    task: Any, stages: list[tuple[int, int, str]], encodings: list[str], got: np.ndarray, batch: int
) -> tuple[float, float, bool]:
    """(accuracy of the same stages chained in process, float32 accuracy, run == in process)."""
    import torch

    from edgesplit.core.link_codec import decode_tensors, encode_tensors
    from edgesplit.models import build_stage

    built = [build_stage(task.spec, a, b, d) for a, b, d in stages]  # type: ignore[arg-type]
    plain = build_stage(task.spec, 0, task.end)
    images = np.concatenate([b["pixel_values"].numpy() for b in task.batches])[: len(got)]
    labels = _labels(len(got))
    mine, reference = [], []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            act: dict[str, Any] = {"pixel_values": torch.from_numpy(images[i : i + batch])}
            reference.append(plain(dict(act))["logits"].numpy())
            for index, stage in enumerate(built):
                act = stage(act)
                if index < len(encodings):
                    arrays = {k: v.contiguous().numpy() for k, v in act.items()}
                    decoded = decode_tensors(encode_tensors(arrays, encodings[index]))  # type: ignore[arg-type]
                    act = {k: torch.from_numpy(v) for k, v in decoded.items()}
            mine.append(act["logits"].numpy())
    ours, ref = np.concatenate(mine), np.concatenate(reference)
    return (
        float((ours.argmax(-1) == labels).mean()),
        float((ref.argmax(-1) == labels).mean()),
        bool(np.array_equal(ours, got)),
    )


# -- PipeEdge 8 + 8 ----------------------------------------------------------------------------
def _pipeedge_cluster(bandwidth_mbps: float) -> Cluster:
    devices = [
        DeviceSpec(name=f"mb{i}", kind="Minnowboard-E3845", memory_mb=2048) for i in range(8)
    ] + [DeviceSpec(name=f"rcc{i}", kind="RCC-VE-C2000", memory_mb=8192) for i in range(8)]
    return Cluster(
        source="mb0",
        defaults=LinkDefaults(bandwidth_mbps=bandwidth_mbps, latency_ms=0),
        devices=tuple(devices),
    )


def _dtype_ratios() -> dict[str, dict[str, dict[str, float]]]:
    """{dtype: {"attn"|"mlp": {"time": ratio, "bytes": ratio}}} from ViT-Base on this host."""
    profile = api.profile("vit-base", 1, repeats=3, warmup=1, device_kind=KIND, dtypes=DTYPES)  # type: ignore[arg-type]
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for dtype in DTYPES:
        times, params = profile.times_for(KIND, dtype), profile.param_bytes_for(dtype)
        base_t, base_p = profile.times_for(KIND), profile.param_bytes_for()
        ratios[dtype] = {}
        for part in ("attn", "mlp"):
            idx = [i for i, u in enumerate(profile.units) if u.name.endswith("." + part)]
            ratios[dtype][part] = {
                "time": sum(times[i] for i in idx) / sum(base_t[i] for i in idx),
                "bytes": sum(params[i] for i in idx) / sum(base_p[i] for i in idx),
            }
    return ratios


def _pipeedge_profile(ratios: dict[str, dict[str, dict[str, float]]]) -> ModelProfile:
    large = api.import_pipeedge_profile("google/vit-large-patch16-224", 8)
    units = []
    for index, unit in enumerate(large.units):
        part = "attn" if index % 4 in (0, 1) else "mlp"  # PipeEdge: 4 sublayers per block
        by_dtype = {
            d: UnitDtypeProfile(
                param_bytes=unit.param_bytes * ratios[d][part]["bytes"],
                time_s={k: v * ratios[d][part]["time"] for k, v in unit.time_s.items()},
            )
            for d in DTYPES
            if d != "float32"
        }
        units.append(UnitProfile(**{**unit.model_dump(), "by_dtype": by_dtype}))
    return ModelProfile.model_validate({**large.model_dump(), "units": units})


def _proxy_table(profile: ModelProfile, measured: QualityTable) -> QualityTable:
    links = []
    for encoding in sorted({r.encoding for r in measured.links}):
        worst = max((r for r in measured.links if r.encoding == encoding), key=lambda r: r.loss)
        links.append(LinkQuality(encoding=encoding, boundary=1, value=worst.value, loss=worst.loss))
    return QualityTable(
        model=profile.model,
        metric=measured.metric,
        loss_unit=measured.loss_unit,
        dataset=f"proxy: {measured.dataset} ({measured.model})",
        num_samples=measured.num_samples,
        float32_value=measured.float32_value,
        unit_names=tuple(u.name for u in profile.units),
        unit_param_bytes=tuple(u.param_bytes for u in profile.units),
        dtypes=measured.dtypes,
        links=tuple(links),
        source="benchmarks/precision_plans.py (ViT Fashion-MNIST table, worst cut per encoding)",
    )


def _row(plan: Plan) -> dict[str, Any]:
    quality = plan.predicted.quality
    return {
        "period_s": plan.predicted.period_s,
        "latency_s": plan.predicted.latency_s,
        "stages": len(plan.stages),
        "dtypes": sorted({s.dtype for s in plan.stages}),
        "link_encodings": sorted({s.link_encoding for s in plan.stages[:-1]}),
        "predicted_loss_points": None if quality is None else quality.loss,
        "plan_s": plan.planner.elapsed_s,
        "optimal": plan.predicted.optimal,
    }


def pipeedge_scenario() -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    ratios = _dtype_ratios()
    profile = _pipeedge_profile(ratios)
    measured = api.precision.load_quality_table(
        Path(__file__).parent / "results" / "quality_vit-fashion.json"
    )
    table = _proxy_table(profile, measured)
    costly = table.model_copy(
        update={
            "dtypes": tuple(
                r.model_copy(update={"loss": 1.0}) if r.dtype == "int8" else r for r in table.dtypes
            )
        }
    )
    rows = []
    for bandwidth in BANDWIDTHS:
        cluster = _pipeedge_cluster(bandwidth)
        variants = {
            "float32": {},
            "links only": {"link_encodings": ENCODINGS},
            "joint": {"dtypes": DTYPES, "link_encodings": ENCODINGS},
        }
        row: dict[str, Any] = {"bandwidth_mbps": bandwidth}
        for name, options in variants.items():
            plan = api.plan(
                profile,
                cluster,
                quality=table,
                max_quality_loss=BUDGET_POINTS,
                **options,  # type: ignore[arg-type]
            )
            row[name] = _row(plan)
        # What the budget does when int8 is not free: the same table with int8 costing 1 point.
        plan = _joint_plan(profile, cluster, costly)
        row["joint, int8 = 1 point (hypothetical)"] = _row(plan) | {
            "int8_weight_share": sum(
                profile.units[i].param_bytes
                for s in plan.stages
                if s.dtype == "int8"
                for i in range(s.start, s.end)
            )
            / sum(u.param_bytes for u in profile.units)
        }
        rows.append(row)
        hypo = row["joint, int8 = 1 point (hypothetical)"]
        print(
            f"{bandwidth:5d} Mbps: float32 {row['float32']['period_s']:.3f} s, links only "
            f"{row['links only']['period_s']:.3f} s, joint {row['joint']['period_s']:.3f} s "
            f"(loss {row['joint']['predicted_loss_points']:.3f} pts, "
            f"{row['joint']['plan_s']:.2f} s to plan); int8 at 1 pt: {hypo['period_s']:.3f} s, "
            f"loss {hypo['predicted_loss_points']:.3f}, int8 share {hypo['int8_weight_share']:.2f}",
            flush=True,
        )
    return {"dtype_ratios_vit_base": ratios, "budget_points": BUDGET_POINTS, "rows": rows}


def plot(pipeedge: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = pipeedge["rows"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = ("float32", "links only", "joint", "joint, int8 = 1 point (hypothetical)")
    for offset, name in zip((-0.3, -0.1, 0.1, 0.3), names, strict=True):
        ax.bar(x + offset, [r[name]["period_s"] for r in rows], 0.2, label=name)
    ax.set_xticks(x, [f"{r['bandwidth_mbps']} Mbps" for r in rows])
    ax.set_ylabel("predicted period (s)")
    ax.set_title("PipeEdge 8+8, ViT-Large, micro-batch 8: float32 vs planned precision")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["memory", "pipeedge", "all"], default="all")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4, help="micro-batch of the memory run")
    args = parser.parse_args()
    data: dict[str, Any] = {
        "method": "cost-model periods (pipeedge); a real Ray run on 3 emulated devices (memory)",
        "load_average_before": os.getloadavg(),
    }
    out = Path(__file__).parent / "results" / "precision_plans.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    if args.part in ("pipeedge", "all"):
        data["pipeedge"] = pipeedge_scenario()
        plot(data["pipeedge"], DOCS / "precision_plans.png")
    elif "pipeedge" in previous:
        data["pipeedge"] = previous["pipeedge"]
    if args.part in ("memory", "all"):
        data["memory"] = memory_scenario(args.images, args.batch)
        memory = data["memory"]
        print(
            f"memory: {memory['memory_per_device_mb']} MB per device (float32 needs "
            f"{memory['float32_needs_mb_per_device']:.3f}, int8 "
            f"{memory['int8_needs_mb_per_device']:.3f})",
            flush=True,
        )
        for name, run in memory["runs"].items():
            print(
                f"  {name}: accuracy {run['accuracy']:.4f} vs float32 "
                f"{run['float32_unsplit_accuracy']:.4f}; predicted loss "
                f"{run['predicted_loss_points']:.3f} pts; equal in process: "
                f"{run['outputs_equal_in_process']}",
                flush=True,
            )
    elif "memory" in previous:
        data["memory"] = previous["memory"]
    data["load_average_after"] = os.getloadavg()
    path = write_result("precision_plans", data, " ".join(["python", *sys.argv]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
