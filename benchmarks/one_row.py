"""The one-row kernel (models/one_row.py): per-shape timings and SmolLM2 decode, plain vs padded.

    flock /tmp/edgesplit-heavy.lock .venv/bin/python benchmarks/one_row.py [--steps 64]
        [--rounds 2] [--checkpoint checkpoints/smollm2-135m]

Real compute, one torch thread, one process:
- shapes: one-row multiplies of every Linear shape of SmolLM2-135M (and its 49152 x 576 LM
  head), weights out of cache (a rotation over >= 96 MB of copies), `F.linear` (plain) against
  `W @ [x; 0]^T` (padded), interleaved pass by pass, median per multiply; plus this process's
  own `one_row.probe()` (what `auto` chose here).
- decode: greedy decode of the same prompt through `KvBatch` (models/kv_batch.py), the whole
  model as 1 stage and as 2 stages split at the middle block (in process), each with the kernel
  forced plain and padded (`EDGESPLIT_ONE_ROW_KERNEL` set before each step): the four engines
  share the same weights (one sequence id each) and are stepped in turn, step by step, so load
  changes hit all of them alike. ms/token = median decode step (prefill excluded), as wall time
  and as process CPU time; padded/plain = median of the per-step ratios.
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
ROTATION_BYTES = 96e6  # > 3x a 32 MB last-level cache


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
    kernels = {"plain": torch.nn.functional.linear, "padded": one_row._padded}
    rows = []
    for name, (out_features, in_features) in shapes.items():
        copies = max(2, int(ROTATION_BYTES // (out_features * in_features * 4)))
        weights = [torch.full((out_features, in_features), 0.01) for _ in range(copies)]
        x = torch.full((1, in_features), 0.5)
        times: dict[str, list[float]] = {"plain": [], "padded": []}
        with torch.no_grad():
            for repeat in range(repeats + 1):
                for kernel, call in kernels.items():
                    started = time.perf_counter()
                    for weight in weights:
                        call(x, weight, None)
                    if repeat:  # the first pass warms up
                        times[kernel].append((time.perf_counter() - started) / copies)
        plain, padded = statistics.median(times["plain"]), statistics.median(times["padded"])
        row = {
            "linear": name,
            "out_features": out_features,
            "in_features": in_features,
            "copies_rotated": copies,
            "plain_us": round(plain * 1e6, 1),
            "padded_us": round(padded * 1e6, 1),
            "padded_over_plain": round(padded / plain, 3),
            "plain_gb_per_s": round(out_features * in_features * 4 / plain / 1e9, 1),
        }
        print(row, flush=True)
        rows.append(row)
        del weights
    return rows


class Engine:
    """Greedy decode of one sequence through KvBatch stages with one kernel setting."""

    def __init__(self, name: str, stages: list[Any], kernel: str, sequence_id: int) -> None:
        self.name, self.stages, self.kernel, self.sequence_id = name, stages, kernel, sequence_id
        self.tokens: list[int] = []
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.logits: torch.Tensor | None = None

    def step(self) -> None:
        os.environ["EDGESPLIT_ONE_ROW_KERNEL"] = self.kernel
        fed = len(self.tokens)
        prefill = fed == 0
        ids = PROMPT if prefill else self.tokens[-1:]
        started, started_cpu = time.perf_counter(), time.process_time()
        act: dict[str, torch.Tensor] = {"input_ids": torch.tensor([ids])}
        position = 0 if prefill else len(PROMPT) + fed - 1
        for stage in self.stages:
            act = stage.step([self.sequence_id], act, [position])
        wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
        if not prefill:
            self.wall.append(wall)
            self.cpu.append(cpu)
        self.logits = act["logits"][0]
        self.tokens.append(int(self.logits.argmax()))


def decode(checkpoint: Path, steps: int, rounds: int) -> dict[str, Any]:
    from edgesplit.models import model_spec_from_name, unit_names
    from edgesplit.models.kv_batch import KvBatch

    spec = model_spec_from_name(str(checkpoint))
    n = len(unit_names(spec))
    middle = 1 + 2 * ((n - 2) // 4)  # a block boundary near the middle
    whole = [KvBatch.build(spec, 0, n)]
    halves = [KvBatch.build(spec, 0, middle), KvBatch.build(spec, middle, n)]
    layouts = {"1 stage": whole, "2 stages": halves}
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {layout: [] for layout in layouts}
    agree: dict[str, Any] = {}
    sequence_id = 0
    with torch.inference_mode():
        for round_index in range(rounds):
            engines = []
            for layout, stages in layouts.items():
                for kernel in ("plain", "padded"):
                    sequence_id += 1
                    engines.append(Engine(f"{layout} {kernel}", stages, kernel, sequence_id))
            if round_index % 2:
                engines.reverse()  # alternate who goes first in each step
            for _ in range(steps + 1):
                for engine in engines:
                    engine.step()
            by_name = {e.name: e for e in engines}
            for layout, stages in layouts.items():
                plain, padded = by_name[f"{layout} plain"], by_name[f"{layout} padded"]
                ratios[layout] += [b / a for a, b in zip(plain.wall, padded.wall, strict=True)]
                assert plain.logits is not None
                assert padded.logits is not None
                agree[f"{layout} round {round_index}"] = {
                    "same_greedy_tokens": plain.tokens == padded.tokens,
                    "last_logits_max_abs_diff": float((plain.logits - padded.logits).abs().max()),
                }
                for stage in stages:
                    stage.drop(plain.sequence_id)
                    stage.drop(padded.sequence_id)
            for engine in engines:
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
                "wall_ms_per_token": round(statistics.median(wall[name]) * 1e3, 2),
                "cpu_ms_per_token": round(statistics.median(cpu[name]) * 1e3, 2),
                "wall_ms_p10_p90": [
                    round(q * 1e3, 2) for q in statistics.quantiles(wall[name], n=10)[::8]
                ],
            }
        )
    summary = {
        layout: {
            "padded_over_plain_per_step_median": round(statistics.median(r), 3),
            "padded_over_plain_per_step_p10_p90": [
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

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    shapes = result["shapes"]
    short = {
        "q_proj / o_proj": "q, o",
        "k_proj / v_proj": "k, v",
        "gate_proj / up_proj": "gate, up",
        "down_proj": "down",
        "lm_head (tied)": "lm_head",
    }
    labels = [f"{short[r['linear']]}\n{r['out_features']}x{r['in_features']}" for r in shapes]
    labels.append("probe\n(auto)")
    ratio = [r["padded_over_plain"] for r in shapes] + [result["probe"]["ratio"]]
    left.bar(labels, ratio, color=["tab:green" if v < 0.9 else "tab:gray" for v in ratio])
    left.axhline(1.0, color="black", linewidth=0.8)
    left.axhline(
        0.9, color="tab:red", linestyle="--", linewidth=0.8, label="0.9: auto picks padded below"
    )
    left.set_ylabel("padded / plain time (one-row multiply, cold)")
    left.tick_params(axis="x", labelsize=7)
    left.legend(fontsize=8)
    left.set_title("per Linear shape (SmolLM2-135M)")
    rows = result["decode"]["rows"]
    layouts = list(dict.fromkeys(r["layout"] for r in rows))
    width = 0.38
    for offset, kernel in ((-width / 2, "plain"), (width / 2, "padded")):
        values = [
            next(
                r["wall_ms_per_token"] for r in rows if r["layout"] == lay and r["kernel"] == kernel
            )
            for lay in layouts
        ]
        bars = right.bar([i + offset for i in range(len(layouts))], values, width, label=kernel)
        right.bar_label(bars, fmt="%.1f", fontsize=8)
    right.set_xticks(range(len(layouts)), [f"{lay} (in process)" for lay in layouts])
    right.set_ylabel("decode ms/token (median, wall)")
    right.set_title("SmolLM2-135M float32 decode, one thread")
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
    from edgesplit.models import model_spec_from_name, one_row
    from edgesplit.models.build import _config
    from edgesplit.models.smollm2 import find_smollm2_checkpoint

    checkpoint = find_smollm2_checkpoint([Path(args.checkpoint)])
    if checkpoint is None:
        sys.exit(f"no SmolLM2 checkpoint at {args.checkpoint}; run `make models`")
    command = "python benchmarks/one_row.py " + " ".join(sys.argv[1:])
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    os.environ.pop(one_row.KERNEL_ENV, None)
    started = time.perf_counter()
    probe = one_row.probe()
    probe_s = time.perf_counter() - started
    print(f"probe: {probe} in {probe_s:.3f} s", flush=True)
    shapes = shapes_timings(_config(model_spec_from_name(str(checkpoint))))
    decoded = decode(checkpoint, args.steps, args.rounds)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    method = (
        "real compute, torch.set_num_threads(1), one process. shapes: one-row multiplies, weights "
        "rotated over >= 96 MB of copies (out of a 32 MB L3), plain F.linear vs padded "
        "W @ [x; 0]^T interleaved pass by pass, median of 7 passes per multiply. decode: "
        "SmolLM2-135M float32 greedy decode through KvBatch, whole model (1 stage) and 2 "
        "in-process stages, kernel forced plain/padded by EDGESPLIT_ONE_ROW_KERNEL, the four "
        "engines stepped in turn step by step (order alternating per round); ms/token = median "
        "decode step, prefill excluded; padded/plain = median of per-step ratios"
    )
    result = {
        "method": method,
        "label": "real compute",
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        "probe": {
            "kernel": probe.kernel,
            "plain_us": round(probe.plain_s * 1e6, 1),
            "padded_us": round(probe.padded_s * 1e6, 1),
            "ratio": round(probe.ratio, 3),
            "threshold": one_row.PADDED_BELOW,
            "probe_seconds": round(probe_s, 3),
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
