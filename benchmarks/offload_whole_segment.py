"""Replay experiment (issue 5): the whole image at WebP q10 as the LAST progressive segment.

THIS IS A REPLAY EXPERIMENT OF A PROTOCOL EXTENSION THAT DOES NOT EXIST YET. The protocol, server,
client and committed policy are unchanged; nothing here can be sent over HTTP today.

Question: the adaptive two-round policy gives up accuracy against a fixed whole WebP q10 image on
Wi-Fi 150 ms and LTE 250 ms because its safe choice is a progressive round 1 of server-order WebP
q50 patch segments (4/8/16/32/64 patches, 875 B at the full cap). Would a progressive option whose
first segment(s) are server-order patches as now and whose last segment is the *whole image* at
WebP q10 (natural layout, superseding the patches) remove that loss?

Method (virtual-time replay of benchmarks/offload.py, same policy code and config):
- One measurement shared by every policy: val (600 held-out training images, the tables) and test
  (1000 test images, the replay) outcomes of every setting, the existing progressive outcomes and
  batch-1 server-time samples, exactly as benchmarks/offload.py measures them.
- Variant options: patch segments `ends` (default (4,), (4, 8), (4, 16), (4, 8, 16)) at WebP q50
  measured with `measure_progressive(ends=...)` (actual encoding + MAE + ViT on the same images),
  then a last segment = the whole image encoded with `encode_patches(all 64 patches, "webp", 10)`
  (the k = N mosaic is the image in its natural layout); after it the server would classify the
  whole q10 image, so its correctness/confidence are the measured full-image WebP q10 outcomes,
  and its server time is the (64, 0) samples, as for the fixed full-image options. Header: the
  existing progressive header code (`segment_ends` = ends + [64], `segment_bytes`) plus the
  msgpack bytes of one field naming the last segment's codec (`last_segment_codec: ["webp", 10]`)
  that the extension would need. Only the option whose cap is the whole segment is added per
  variant (the prefixes without it exist already); no round 2 after a whole image.
- The variants' options are appended to the tables; `choose` / `segment_fits` / the replay are
  the committed ones (a dispatcher hands each progressive decision the outcomes of its own
  segment plan). Baseline = the same replay without the variants. Fixed settings are replayed
  once per run and serve both; verdicts as `slo_verdicts` (best fixed setting that meets as many
  feasible SLOs, paired bootstrap).
- Pilot trace seeds only (default 0-3 and 4-7; the reported 100-103 are refused).

Usage: .venv/bin/python benchmarks/offload_whole_segment.py [--pilot-seeds 0-3 4-7]
       [--cache /tmp/x.pkl]   (optional local cache of the shared measurement; never committed)
Writes benchmarks/results/offload_whole_segment.json. With --cache (and --ablation: each plan
alone on the critical runs) about 7 minutes on one thread; measuring first adds about 5.
"""

from __future__ import annotations

import argparse
import copy
import pickle
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import offload as B
from common import write_result
from edgesplit.offload.calibrate import (
    K1_VALUES,
    Outcome,
    ProgressiveOutcome,
    _progressive_header_bytes,
    build_tables,
    measure_all,
    measure_progressive,
    p95_table,
    progressive_options,
    server_profile,
)
from edgesplit.offload.codec import encode_patches
from edgesplit.offload.data import load_fashion_mnist, upscale
from edgesplit.offload.emulation import make_trace
from edgesplit.offload.patches import patchify
from edgesplit.offload.policy import HTTP_OVERHEAD_BYTES, OffloadOption, PolicyConfig
from edgesplit.offload.server import DEFAULT_WEIGHTS_DIR, load_pipeline
from edgesplit.offload.training import VALIDATION_SIZE

NAME = "offload_whole_segment"
WHOLE_CODEC = ("webp", 10)
DEFAULT_VARIANTS = ((4,), (4, 8), (4, 16), (4, 8, 16))
CRITICAL = (("wifi", 0.15), ("wifi", 0.25), ("lte", 0.15), ("lte", 0.25), ("random_walk", 0.15))
ADAPTIVE = "adaptive two-round"
# What the extension's header would add: one field naming the last segment's codec.
EXTRA_HEADER_BYTES = len(msgpack.packb({"last_segment_codec": list(WHOLE_CODEC)})) - 1


def _variants(text: str) -> tuple[tuple[int, ...], ...]:
    out = []
    for part in text.split(";"):
        ends = tuple(int(x) for x in part.split(","))
        if not ends or list(ends) != sorted(set(ends)) or ends[-1] >= 64:
            raise argparse.ArgumentTypeError(f"bad patch ends {part!r}")
        out.append(ends)
    return tuple(out)


def measure_shared(args: argparse.Namespace) -> tuple[dict[str, Any], Any, np.ndarray, dict]:
    """The measurement benchmarks/offload.py makes for the SLO replay (or the local cache)."""
    torch.set_num_threads(1)
    pipeline, order_list = load_pipeline(args.weights)
    order = np.array(order_list)
    train_x, train_y = load_fashion_mnist("train")
    val_x = upscale(train_x[-VALIDATION_SIZE:][: args.num_val])
    val_y = train_y[-VALIDATION_SIZE:][: args.num_val]
    test_raw, test_y_all = load_fashion_mnist("test")
    test_x, test_y = upscale(test_raw[: args.num_test]), test_y_all[: args.num_test]
    data = {"val": (val_x, val_y), "test": (test_x, test_y)}
    if args.cache is not None and args.cache.exists():
        with args.cache.open("rb") as f:
            shared = pickle.load(f)  # local file written by this script (never a socket)
        print(f"[measure] loaded {args.cache}", flush=True)
        return shared, pipeline, order, data
    started = time.monotonic()
    shared = {
        "val_outcomes": measure_all(pipeline, val_x, val_y, order),
        "test_outcomes": measure_all(pipeline, test_x, test_y, order),
        "val_prog": measure_progressive(pipeline, val_x, val_y, order),
        "test_prog": measure_progressive(pipeline, test_x, test_y, order),
        "samples": server_profile(pipeline, test_x[0], repeats=20),
    }
    print(f"[measure] shared measurement {time.monotonic() - started:.0f} s", flush=True)
    if args.cache is not None:
        with args.cache.open("wb") as f:
            pickle.dump(shared, f)
    return shared, pipeline, order, data


def whole_outcome(outcomes: list[Outcome]) -> Outcome:
    codec, quality = WHOLE_CODEC
    return next(
        o
        for o in outcomes
        if o.setting.sampling == "grid"
        and o.setting.k1 == 64
        and o.setting.codec == codec
        and o.setting.quality == quality
    )


def variant_outcome(
    patches: ProgressiveOutcome, whole: Outcome, whole_payload: np.ndarray
) -> ProgressiveOutcome:
    """Patch segments `patches.ends` + the whole image as the last segment."""
    ends = (*patches.ends, 64)
    n, s = len(whole_payload), len(ends)
    segment_bytes = np.concatenate([patches.segment_bytes, whole_payload[:, None]], axis=1)
    header = np.zeros((n, s), np.int64)
    for i in range(n):
        sizes = [int(x) for x in segment_bytes[i]]
        for c in range(s):
            header[i, c] = _progressive_header_bytes(ends[: c + 1], sizes[: c + 1])
        header[i, s - 1] += EXTRA_HEADER_BYTES
    return ProgressiveOutcome(
        ends,
        patches.codec,
        patches.quality,
        header,
        segment_bytes,
        np.concatenate([patches.correct, whole.correct1[:, None]], axis=1),
        np.concatenate([patches.confidence, whole.confidence1[:, None]], axis=1),
    )


def whole_payload_bytes(images: np.ndarray) -> np.ndarray:
    codec, quality = WHOLE_CODEC
    all_patches = [patchify(image, 8) for image in images]
    return np.array([len(encode_patches(p, codec, quality)) for p in all_patches], np.int64)


class Dispatch:
    """Stands in for offload._replay_progressive: each progressive decision gets the outcomes of
    its own segment plan; records which plan ran and how many segments went out."""

    def __init__(self, variants: dict[tuple[int, ...], ProgressiveOutcome]) -> None:
        self.variants = variants
        self.original = B._replay_progressive
        self.log: list[tuple[tuple[int, ...], int, int, bool]] = []

    def __call__(self, decision: Any, outcome: ProgressiveOutcome, i: int, *rest: Any) -> Any:
        ends = tuple(decision.option.prefix_ends)
        plan = self.variants.get(ends, outcome)
        cap = len(ends) - 1
        start, arrival, slo_s, rtt, bucket, _, server_samples = rest[:7]
        # Diagnostic counterfactual (this frame only): had the whole plan been sent, uncut,
        # would it have met the SLO (median server time)?
        uncut = copy.copy(bucket)
        t = start
        for j in range(cap + 1):
            wire = float(plan.segment_bytes[i, j])
            if j == 0:
                wire += float(plan.header_bytes[i, cap]) + HTTP_OVERHEAD_BYTES
            t = uncut.transmit(wire, t)
        server = float(np.median(server_samples[(ends[-1], 0)][0]))
        uncut_met = t + rtt + server - arrival <= slo_s
        frame = self.original(decision, plan, i, *rest)
        sent1 = frame.sent - frame.sent2
        wire = (
            plan.header_bytes[i, cap]
            + HTTP_OVERHEAD_BYTES
            + np.cumsum(plan.segment_bytes[i, : cap + 1])
        )
        last = int(np.argmin(np.abs(wire - sent1)))
        self.log.append((ends, last, cap, uncut_met))
        return frame

    def __enter__(self) -> Dispatch:
        B._replay_progressive = self
        return self

    def __exit__(self, *exc: object) -> None:
        B._replay_progressive = self.original


def summary(r: dict[str, np.ndarray], slo_s: float, feasible: np.ndarray) -> dict[str, Any]:
    met = r["latency_s"] <= slo_s
    return {
        "slo_attainment_feasible": float(met[feasible].mean()) if feasible.any() else None,
        "accuracy": float(r["correct"].mean()),
        "mean_bytes": float(r["bytes"].mean()),
        "latency_p95_s": float(np.percentile(r["latency_s"], 95)),
        "correct": r["correct"],
    }


def run_pilot(
    first_seed: int,
    *,
    num_frames: int,
    base_options: list[OffloadOption],
    variant_options: list[OffloadOption],
    variants: dict[tuple[int, ...], ProgressiveOutcome],
    ablation: bool,
    shared: dict[str, Any],
    server_p50: dict[int, float],
    config: PolicyConfig,
) -> dict[str, Any]:
    test_outcomes = shared["test_outcomes"]
    test_by_key = {
        (o.setting.sampling, o.setting.k1, o.setting.codec, o.setting.quality): o
        for o in test_outcomes
    }
    fixed = [B.Policy(f"fixed {o.setting.name}", "fixed", outcome=o) for o in test_outcomes]
    adaptive = B.Policy(ADAPTIVE, "adaptive2", robust=True, progressive=True)
    arms = {"baseline": base_options, "with_whole_segment": [*base_options, *variant_options]}
    if ablation:  # each variant alone, on the critical runs only
        for option in variant_options:
            arms["only " + "/".join(map(str, option.prefix_ends))] = [*base_options, option]
    rows: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    usage: dict[str, dict[str, Any]] = {}
    for trace_index, trace_name in enumerate(B.TRACES):
        trace = make_trace(
            trace_name,
            B.MEAN_BANDWIDTH_BYTES_PER_S,  # type: ignore[arg-type]
            duration_s=num_frames * B.FRAME_PERIOD_S,
            seed=first_seed + trace_index,
        )
        for slo_s in B.SLOS_S:
            feasible = B.feasible_frames(trace, slo_s, num_frames, test_outcomes, server_p50)
            common = {
                "num_frames": num_frames,
                "test_outcomes": test_by_key,
                "server_samples": shared["samples"],
                "seed": trace_index,
                "progressive": shared["test_prog"],
                "policy_config": config,
            }

            fixed_results = {}
            for policy in fixed:
                fixed_results[policy.name] = summary(
                    B.replay(policy, trace, slo_s, **{**common, "val_options": base_options}),
                    slo_s,
                    feasible,
                )
            for arm, options in arms.items():
                if arm.startswith("only ") and (trace_name, slo_s) not in CRITICAL:
                    continue
                with Dispatch(variants) as dispatch:
                    r = B.replay(adaptive, trace, slo_s, **{**common, "val_options": options})
                ad = summary(r, slo_s, feasible)
                best = B.best_fixed_meeting_as_many(fixed_results, ad["slo_attainment_feasible"])
                row: dict[str, Any] = {
                    "trace": trace_name,
                    "slo_s": slo_s,
                    "feasible_fraction": float(feasible.mean()),
                    "policies": {ADAPTIVE: {k: v for k, v in ad.items() if k != "correct"}},
                    "best_fixed_meeting_as_many": best,
                }
                if best:
                    rival = fixed_results[best]
                    row["policies"][best] = {k: v for k, v in rival.items() if k != "correct"}
                    row["accuracy_gain_vs_best_fixed"] = B.paired_gain(
                        ad["correct"], rival["correct"]
                    )
                rows[arm].append(row)
                if arm == "with_whole_segment":
                    plans = Counter(
                        "+whole" if ends in variants else "patches only"
                        for ends, _, _, _ in dispatch.log
                    )
                    whole_arrived = sum(
                        1 for ends, last, cap, _ in dispatch.log if ends in variants and last == cap
                    )
                    usage[f"{trace_name} {slo_s}"] = {
                        "progressive_frames_patch_plans": plans.get("patches only", 0),
                        "progressive_frames_whole_plans": plans.get("+whole", 0),
                        "whole_segment_arrived_frames": whole_arrived,
                        "plans": dict(
                            Counter("/".join(map(str, e)) for e, _, _, _ in dispatch.log)
                        ),
                        "whole_cut_frames_uncut_would_have_met": sum(
                            1
                            for e, last, cap, met in dispatch.log
                            if e in variants and last < cap and met
                        ),
                        "whole_plan_segments_delivered": dict(
                            Counter(
                                f"{'/'.join(map(str, e))}:{e[last]}"
                                for e, last, _, _ in dispatch.log
                                if e in variants
                            )
                        ),
                    }
                    print(f"    usage {usage[f'{trace_name} {slo_s}']}", flush=True)
                g = row.get("accuracy_gain_vs_best_fixed")
                print(
                    f"[seeds {first_seed}-{first_seed + 3}] {trace_name:11s} {slo_s} {arm:18s} "
                    f"att {ad['slo_attainment_feasible']:.4f} acc {ad['accuracy']:.3f} "
                    f"bytes {ad['mean_bytes']:.0f} vs {best} "
                    + (
                        f"{g['gain']:+.3f} [{g['ci95_low']:+.3f}, {g['ci95_high']:+.3f}]"
                        if g
                        else ""
                    ),
                    flush=True,
                )
    out: dict[str, Any] = {"seeds": f"{first_seed}-{first_seed + len(B.TRACES) - 1}"}
    for arm, arm_rows in rows.items():
        # (ablation arms: verdicts over the critical runs only)
        out[arm] = {"verdicts": B.slo_verdicts(arm_rows), "runs": arm_rows}
    out["whole_segment_usage"] = usage
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--pilot-seeds",
        nargs="+",
        type=B._seed_range,
        default=[0, 4],
        metavar="A-B",
        help="pilot trace seed sets (default 0-3 4-7); the reported 100-103 are refused",
    )
    parser.add_argument(
        "--variants",
        type=_variants,
        default=DEFAULT_VARIANTS,
        help="patch-segment ends before the whole segment, e.g. '4;4,8;4,16;4,8,16'",
    )
    parser.add_argument("--cache", type=Path, default=None, help="local measurement cache")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR)
    parser.add_argument("--num-frames", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=600)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--ablation", action="store_true", help="also each variant alone, on the critical runs"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    shared, pipeline, order, data = measure_shared(args)
    samples = shared["samples"]
    server_p95 = p95_table(samples)
    server_p50 = {k1: float(np.median(samples[(k1, 0)][0])) for k1 in K1_VALUES}
    tables = build_tables(shared["val_outcomes"], server_p95)
    base_options = [*tables.options, *progressive_options(shared["val_prog"], server_p95)]

    # Variants: patch segments measured for real, then the whole q10 image as the last segment.
    variant_options: list[OffloadOption] = []
    variants: dict[tuple[int, ...], ProgressiveOutcome] = {}
    variant_figures = []
    payload = {split: whole_payload_bytes(x) for split, (x, _) in data.items()}
    for ends in args.variants:
        built = {}
        for split, (x, y) in data.items():
            patches = measure_progressive(pipeline, x, y, order, ends=ends, k2_values=())
            built[split] = variant_outcome(
                patches, whole_outcome(shared[f"{split}_outcomes"]), payload[split]
            )
        full = (*ends, 64)
        option = next(
            o for o in progressive_options(built["val"], server_p95) if o.prefix_ends == full
        )
        variant_options.append(option)
        variants[full] = built["test"]
        test = built["test"]
        cap = len(full) - 1
        variant_figures.append(
            {
                "segment_ends": list(full),
                "test_prefix_accuracy": [float(test.correct[:, j].mean()) for j in range(cap + 1)],
                "test_prefix_body_bytes_mean": [
                    float(test.body_bytes(cap, j).mean()) for j in range(cap + 1)
                ],
                "val_option": option.model_dump(mode="json"),
            }
        )
        print(
            f"[variant] {variant_figures[-1]['segment_ends']} test "
            f"acc {variant_figures[-1]['test_prefix_accuracy']} "
            f"bytes {[round(b) for b in variant_figures[-1]['test_prefix_body_bytes_mean']]} "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    whole = whole_outcome(shared["test_outcomes"])
    config = PolicyConfig()
    pilots = [
        run_pilot(
            first,
            num_frames=args.num_frames,
            base_options=base_options,
            variant_options=variant_options,
            variants=variants,
            ablation=args.ablation,
            shared=shared,
            server_p50=server_p50,
            config=config,
        )
        for first in args.pilot_seeds
    ]
    for pilot in pilots:
        print(
            f"[verdicts seeds {pilot['seeds']}] baseline {pilot['baseline']['verdicts']['counts']}"
            f" with whole segment {pilot['with_whole_segment']['verdicts']['counts']}",
            flush=True,
        )
    critical = {}
    for pilot in pilots:
        for arm in [a for a in pilot if a not in ("seeds", "whole_segment_usage")]:
            for row in pilot[arm]["runs"]:
                if (row["trace"], row["slo_s"]) not in CRITICAL:
                    continue
                ad = row["policies"][ADAPTIVE]
                key = f"seeds {pilot['seeds']} {row['trace']} {row['slo_s']}"
                critical.setdefault(key, {})[arm] = {
                    "slo_attainment_feasible": ad["slo_attainment_feasible"],
                    "accuracy": ad["accuracy"],
                    "mean_bytes": ad["mean_bytes"],
                    "verdict": pilot[arm]["verdicts"]["per_run"][f"{row['trace']} {row['slo_s']}"],
                    "best_fixed": row["best_fixed_meeting_as_many"],
                    "gain_vs_best_fixed": row.get("accuracy_gain_vs_best_fixed"),
                }
    elapsed = time.monotonic() - started
    print(f"[done] {elapsed:.0f} s", flush=True)
    if args.no_write:
        return
    command = "python benchmarks/offload_whole_segment.py " + " ".join(sys.argv[1:])
    result = {
        "status": (
            "REPLAY EXPERIMENT of a protocol extension that does not exist yet: the whole image "
            "as the last progressive segment. Protocol, server, client and committed policy are "
            "unchanged; these numbers are virtual-time replays, not HTTP runs."
        ),
        "method": {
            "description": __doc__,
            "whole_segment_codec": list(WHOLE_CODEC),
            "extra_header_bytes": EXTRA_HEADER_BYTES,
            "variants_patch_ends": [list(e) for e in args.variants],
            "policy_config": config.model_dump(mode="json"),
            "num_val": args.num_val,
            "num_test": args.num_test,
            "num_frames": args.num_frames,
            "measurement": "cache " + str(args.cache)
            if args.cache is not None
            else "measured in this run",
            "wall_s": elapsed,
        },
        "full_webp10_test": {
            "accuracy": float(whole.correct1.mean()),
            "body_bytes_mean": float(whole.bytes1.mean()),
            "payload_bytes_mean": float(payload["test"].mean()),
        },
        "base_progressive_test": {
            "ends": list(shared["test_prog"].ends),
            "prefix_accuracy": [
                float(shared["test_prog"].correct[:, j].mean())
                for j in range(len(shared["test_prog"].ends))
            ],
            "prefix_body_bytes_mean_cap64": [
                float(shared["test_prog"].body_bytes(len(shared["test_prog"].ends) - 1, j).mean())
                for j in range(len(shared["test_prog"].ends))
            ],
        },
        "variants": variant_figures,
        "critical_runs": critical,
        "pilots": pilots,
    }
    path = write_result(NAME, result, command)
    print(f"[write] {path}", flush=True)


if __name__ == "__main__":
    main()
