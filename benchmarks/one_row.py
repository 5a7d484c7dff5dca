"""The few-row kernel (models/one_row.py): per-shape timings and SmolLM2 decode, plain vs auto.

    flock /tmp/edgesplit-heavy.lock .venv/bin/python benchmarks/one_row.py [--steps 64]
        [--rounds 2] [--checkpoint checkpoints/smollm2-135m]

Real compute, one torch thread, one process:
- shapes: multiplies of 1, 2, 4 and 8 rows by every Linear shape of SmolLM2-135M (and its
  49152 x 576 LM head), weights out of cache, `F.linear` (plain) against `W @ X^T` (padded),
  timed by the product's own `one_row.measure` with 7 passes each; plus what `auto` chose for
  each (shape, rows) when this process built its stages (`one_row.tune`, and how long it took).
- decode: greedy decode of the same prompt through `KvBatch` (models/kv_batch.py): one sequence
  on the whole model as 1 stage and as 2 stages split at the middle block (in process), and
  steps of 2, 4 and 8 sequences at once on 1 stage, each with the kernel setting plain and
  auto (`EDGESPLIT_ONE_ROW_KERNEL` set before each step): the engines share the same weights
  (their own sequence ids) and are stepped in turn, step by step, so load changes hit all of
  them alike. ms/step = median decode step (prefill excluded), as wall time and as process CPU
  time; auto/plain = median of the per-step ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common import DOCS, RESULTS, write_result

PROMPT = [504, 3575, 282, 4649, 314]  # "The capital of France is"
KERNELS = ("plain", "auto")
BATCHED = (2, 4, 8)  # sequences per step in the batched layouts (1 stage)


def shapes_timings(config: Any, repeats: int = 7) -> list[dict[str, Any]]:
    from edgesplit.models import one_row

    hidden, mlp = config.hidden_size, config.intermediate_size
    kv = hidden * config.num_key_value_heads // config.num_attention_heads
    shapes = {
        "q_proj / o_proj": (hidden, hidden),
        "k_proj / v_proj": (kv, hidden),
        "gate_proj / up_proj": (mlp, hidden),
        "down_proj": (hidden, mlp),
        "lm_head (tied)": (config.vocab_size, hidden),
    }
    rows = []
    for name, (out_features, in_features) in shapes.items():
        for count in one_row.ROW_BUCKETS:
            plain, padded, ratio = one_row.measure(
                (out_features, in_features), count, None, repeats
            )
            row = {
                "linear": name,
                "out_features": out_features,
                "in_features": in_features,
                "rows": count,
                "plain_us": round(plain * 1e6, 1),
                "padded_us": round(padded * 1e6, 1),
                "padded_over_plain": round(ratio, 3),
                "plain_gb_per_s": round(out_features * in_features * 4 / plain / 1e9, 1),
            }
            print(row, flush=True)
            rows.append(row)
    return rows


class Engine:
    """Greedy decode of `rows` sequences (the same prompt) stepped together through KvBatch
    stages with one kernel setting."""

    def __init__(self, name: str, stages: list[Any], kernel: str, first_id: int, rows: int) -> None:
        self.name, self.stages, self.kernel = name, stages, kernel
        self.ids = list(range(first_id, first_id + rows))
        self.tokens: list[list[int]] = []  # per step, one token per row
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.logits: torch.Tensor | None = None

    def step(self) -> None:
        os.environ["EDGESPLIT_ONE_ROW_KERNEL"] = self.kernel
        fed = len(self.tokens)
        prefill = fed == 0
        rows = len(self.ids)
        ids = [PROMPT] * rows if prefill else [[t] for t in self.tokens[-1]]
        started, started_cpu = time.perf_counter(), time.process_time()
        act: dict[str, torch.Tensor] = {"input_ids": torch.tensor(ids)}
        position = 0 if prefill else len(PROMPT) + fed - 1
        for stage in self.stages:
            act = stage.step(self.ids, act, [position] * rows)
        wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
        if not prefill:
            self.wall.append(wall)
            self.cpu.append(cpu)
        self.logits = act["logits"]
        self.tokens.append([int(t) for t in self.logits.argmax(dim=-1)])

    def drop(self) -> None:
        for stage in self.stages:
            for sequence_id in self.ids:
                stage.drop(sequence_id)


def decode(checkpoint: Path, steps: int, rounds: int) -> dict[str, Any]:
    from edgesplit.models import model_spec_from_name, unit_names
    from edgesplit.models.kv_batch import KvBatch

    spec = model_spec_from_name(str(checkpoint))
    n = len(unit_names(spec))
    middle = 1 + 2 * ((n - 2) // 4)  # a block boundary near the middle
    whole = [KvBatch.build(spec, 0, n)]
    halves = [KvBatch.build(spec, 0, middle), KvBatch.build(spec, middle, n)]
    layouts: dict[str, tuple[list[Any], int]] = {"1 stage": (whole, 1), "2 stages": (halves, 1)}
    layouts.update({f"1 stage, {r} sequences": (whole, r) for r in BATCHED})
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {layout: [] for layout in layouts}
    agree: dict[str, Any] = {}
    next_id = 0
    with torch.inference_mode():
        for round_index in range(rounds):
            engines = []
            for layout, (stages, rows) in layouts.items():
                for kernel in KERNELS:
                    engines.append(Engine(f"{layout} {kernel}", stages, kernel, next_id, rows))
                    next_id += rows
            if round_index % 2:
                engines.reverse()  # alternate who goes first in each step
            for _ in range(steps + 1):
                for engine in engines:
                    engine.step()
            by_name = {e.name: e for e in engines}
            for layout in layouts:
                plain, auto = by_name[f"{layout} plain"], by_name[f"{layout} auto"]
                ratios[layout] += [b / a for a, b in zip(plain.wall, auto.wall, strict=True)]
                assert plain.logits is not None
                assert auto.logits is not None
                agree[f"{layout} round {round_index}"] = {
                    "same_greedy_tokens": plain.tokens == auto.tokens,
                    "last_logits_max_abs_diff": float((plain.logits - auto.logits).abs().max()),
                }
            for engine in engines:
                engine.drop()
                wall.setdefault(engine.name, []).extend(engine.wall)
                cpu.setdefault(engine.name, []).extend(engine.cpu)
            print(
                f"round {round_index}:",
                {k: round(statistics.median(v) * 1e3, 1) for k, v in wall.items()},
                flush=True,
            )
    rows = []
    for name in wall:
        layout, kernel = name.rsplit(" ", 1)
        rows.append(
            {
                "layout": layout,
                "kernel": kernel,
                "steps": len(wall[name]),
                "wall_ms_per_step": round(statistics.median(wall[name]) * 1e3, 2),
                "cpu_ms_per_step": round(statistics.median(cpu[name]) * 1e3, 2),
                "wall_ms_p10_p90": [
                    round(q * 1e3, 2) for q in statistics.quantiles(wall[name], n=10)[::8]
                ],
            }
        )
    summary = {
        layout: {
            "auto_over_plain_per_step_median": round(statistics.median(r), 3),
            "auto_over_plain_per_step_p10_p90": [
                round(q, 3) for q in statistics.quantiles(r, n=10)[::8]
            ],
        }
        for layout, r in ratios.items()
    }
    return {
        "model": str(checkpoint),
        "num_units": n,
        "two_stage_cut": middle,
        "rows": rows,
        "summary": summary,
        "agreement": agree,
    }


def plot(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    shapes = result["shapes"]
    short = {
        "q_proj / o_proj": "q, o",
        "k_proj / v_proj": "k, v",
        "gate_proj / up_proj": "gate, up",
        "down_proj": "down",
        "lm_head (tied)": "lm_head",
    }
    names = list(dict.fromkeys(r["linear"] for r in shapes))
    counts = sorted({r["rows"] for r in shapes})
    width = 0.8 / len(counts)
    for k, count in enumerate(counts):
        values = [
            next(r["padded_over_plain"] for r in shapes if r["linear"] == n and r["rows"] == count)
            for n in names
        ]
        offsets = [i - 0.4 + width * (k + 0.5) for i in range(len(names))]
        left.bar(offsets, values, width, label=f"{count} row{'s' if count > 1 else ''}")
    left.axhline(1.0, color="black", linewidth=0.8)
    left.axhline(0.9, color="tab:red", linestyle="--", linewidth=0.8, label="auto: padded below")
    shape_of = {r["linear"]: f"{r['out_features']}x{r['in_features']}" for r in shapes}
    left.set_xticks(range(len(names)), [f"{short[n]}\n{shape_of[n]}" for n in names])
    left.set_ylabel("padded / plain time (multiply, cold weights)")
    left.tick_params(axis="x", labelsize=8)
    left.legend(fontsize=7, ncol=2)
    left.set_title("per Linear shape and rows (SmolLM2-135M)")
    rows = result["decode"]["rows"]
    layouts = list(dict.fromkeys(r["layout"] for r in rows))
    width = 0.38
    for offset, kernel in ((-width / 2, "plain"), (width / 2, "auto")):
        values = [
            next(
                r["wall_ms_per_step"] for r in rows if r["layout"] == lay and r["kernel"] == kernel
            )
            for lay in layouts
        ]
        bars = right.bar([i + offset for i in range(len(layouts))], values, width, label=kernel)
        right.bar_label(bars, fmt="%.0f", fontsize=7)
    right.set_xticks(range(len(layouts)), [lay.replace(", ", "\n") for lay in layouts], fontsize=7)
    right.set_ylabel("decode ms per step (median, wall)")
    right.set_title("SmolLM2-135M float32 decode in one process, one thread")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "one_row.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=64, help="decode steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checkpoint", default="checkpoints/smollm2-135m")
    parser.add_argument("--replot", action="store_true", help="Plot from the result file.")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads((RESULTS / "one_row.json").read_text()))
        return
    torch.set_num_threads(1)
    from edgesplit.models import build_stage, model_spec_from_name, one_row, unit_names
    from edgesplit.models.build import _config
    from edgesplit.models.smollm2 import find_smollm2_checkpoint

    checkpoint = find_smollm2_checkpoint([Path(args.checkpoint)])
    if checkpoint is None:
        sys.exit(f"no SmolLM2 checkpoint at {args.checkpoint}; run `make models`")
    command = "python benchmarks/one_row.py " + " ".join(sys.argv[1:])
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    os.environ.pop(one_row.KERNEL_ENV, None)
    spec = model_spec_from_name(str(checkpoint))
    started = time.perf_counter()
    build_stage(spec, 0, len(unit_names(spec)))  # auto: measures the model's shapes (tune)
    tuned_s = time.perf_counter() - started
    chosen = [
        {"shape": list(c.shape), "rows": c.rows, "ratio": round(c.ratio, 3), "kernel": c.kernel}
        for c in one_row.measured()
    ]
    print(f"auto's choices (build with tuning took {tuned_s:.2f} s): {chosen}", flush=True)
    shapes = shapes_timings(_config(spec))
    decoded = decode(checkpoint, args.steps, args.rounds)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    method = (
        "real compute, torch.set_num_threads(1), one process. shapes: multiplies of 1/2/4/8 "
        "rows, weights out of cache (one_row.measure: copies rotated over 64 MB, or one weight "
        "that large), plain F.linear vs padded W @ X^T interleaved pass by pass, median of 7 "
        "passes. decode: SmolLM2-135M float32 greedy decode through KvBatch, one sequence on 1 "
        "and 2 in-process stages and 2/4/8 sequences per step on 1 stage, kernel setting plain "
        "vs auto (EDGESPLIT_ONE_ROW_KERNEL before each step), engines stepped in turn step by "
        "step (order alternating per round); ms/step = median decode step, prefill excluded; "
        "auto/plain = median of per-step ratios"
    )
    result = {
        "method": method,
        "label": "real compute",
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        "auto": {
            "threshold": one_row.PADDED_BELOW,
            "build_with_tuning_s": round(tuned_s, 3),
            "choices": chosen,
        },
        "shapes": shapes,
        "decode": decoded,
    }
    path = write_result("one_row", result, command)
    plot(result)
    print(f"wrote {path} and {DOCS / 'one_row.png'}")
    print("how measured:", method)
    for row in decoded["rows"]:
        print(row)
    print(decoded["summary"])


if __name__ == "__main__":
    main()
