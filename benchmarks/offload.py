"""Adaptive offloading benchmark (issue 5): accuracy vs bytes, SLO attainment, round-2 reuse.

Usage: .venv/bin/python benchmarks/offload.py [--quick]
Writes benchmarks/results/offload.json and docs/offload_*.png. About 5-8 minutes on one thread.

How it measures (see docs/offload.md):
- Every accuracy and byte figure comes from running the real pipeline (codec encode/decode, frame
  header, MAE reconstruction, paste, ViT) on Fashion-MNIST test images that no model or table saw.
  The policy's tables are measured on held-out *training* images (the last 2000), never on test.
- Server compute is measured at batch 1 on this host (one torch thread), p95 into the tables.
- SLO runs replay frames over emulated links in *virtual time*: the token bucket on each bandwidth
  trace gives upload times, measured server-time samples are drawn per request, and each frame's
  correctness and bytes are those measured for that test image and setting. A short real-time
  run over HTTP on 127.0.0.1 (uvicorn in a thread, client shaped by the same token bucket) checks
  the replay.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DOCS, write_result
from edgesplit.core.schema import write_json_file
from edgesplit.offload.calibrate import (
    K1_VALUES,
    K2_VALUES,
    REUSE_CODEC,
    Setting,
    build_tables,
    measure_all,
    measure_progressive,
    measure_setting,
    p95_table,
    progressive_options,
    server_profile,
)
from edgesplit.offload.data import load_fashion_mnist, upscale
from edgesplit.offload.emulation import BandwidthTrace, TokenBucket, make_trace
from edgesplit.offload.live import classify_frames
from edgesplit.offload.pipeline import OffloadPipeline
from edgesplit.offload.policy import (
    HTTP_OVERHEAD_BYTES,
    OffloadOption,
    PolicyConfig,
)
from edgesplit.offload.replay import MAIN_POLICIES, LinkScenario, Policy, feasible_frames, replay
from edgesplit.offload.reuse_cost import reuse_costs
from edgesplit.offload.server import DEFAULT_WEIGHTS_DIR, load_pipeline
from edgesplit.offload.training import VALIDATION_SIZE
from edgesplit.offload.verdicts import (
    RunFrames,
    best_fixed_meeting_as_many,
    network_blind_verdicts,
    paired_gain,
    slo_verdicts,
)
from offload_plots import (
    accuracy_vs_bytes,
    curves_from_results,
    plot_accuracy_vs_bytes,
    plot_network_blind,
    plot_reconstructions,
    plot_slo,
)

# The emulated weak device is PipeEdge's Minnowboard (Atom E3845, 4 cores): its measured
# ViT-Base profile (src/edgesplit/data/pipeedge) over ViT-Base timed here on one core gives how much
# slower it runs the same network; a camera-class board is slower still (a floor, not a guess).
WEAK_DEVICE = "Minnowboard-E3845"
TRACES = ("step", "random_walk", "wifi", "lte")
SCENARIO = LinkScenario()  # 100 kbit/s mean, one-way 20 ms, 300 B burst, a frame every 0.5 s
MEAN_BANDWIDTH_BYTES_PER_S = SCENARIO.mean_bandwidth_bytes_per_s
ONE_WAY_LATENCY_S = SCENARIO.one_way_latency_s
BURST_BYTES = SCENARIO.burst_bytes
SLOS_S = (0.15, 0.25, 0.4)
FRAME_PERIOD_S = SCENARIO.frame_period_s


REPORTED_SEED = 100  # the reported runs use trace seeds 100-103; pilots never do


def _seed_range(text: str) -> int:
    """`A-B` with B - A + 1 == len(TRACES), disjoint from the reported seeds -> A."""
    try:
        first, last = (int(x) for x in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A-B (e.g. 4-7), got {text!r}") from None
    if last - first + 1 != len(TRACES):
        raise argparse.ArgumentTypeError(f"one seed per trace: {len(TRACES)} seeds, got {text!r}")
    if first < 0 or (first <= REPORTED_SEED + len(TRACES) - 1 and last >= REPORTED_SEED):
        raise argparse.ArgumentTypeError(
            f"{text}: pilot seeds must be >= 0 and avoid the reported seeds "
            f"{REPORTED_SEED}-{REPORTED_SEED + len(TRACES) - 1}"
        )
    return first


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- accuracy vs bytes ----------------------------------------------------------------------------
def weak_device_slowdown(repeats: int = 3, batch_size: int = 8) -> dict[str, Any]:
    """How many times slower the weak device runs ViT-Base than one core of this host.

    Device side: PipeEdge's measured per-layer times of google/vit-base-patch16-224 at batch 8
    on WEAK_DEVICE, summed. Host side: the same architecture (HF ViTForImageClassification,
    seeded weights, no download) at batch 8, one torch thread, best of `repeats` after a warm-up.
    """
    import yaml

    from edgesplit.models.build import build_model
    from edgesplit.models.spec import model_spec_from_name
    from edgesplit.profile.pipeedge import DEFAULT_PIPEEDGE_DIR

    types = yaml.safe_load((DEFAULT_PIPEEDGE_DIR / "device_types.yml").read_text())
    profile = types[WEAK_DEVICE]["model_profiles"]["google/vit-base-patch16-224"]
    entry = next(p for p in profile if p["batch_size"] == batch_size)
    device_s = float(sum(entry["time_s"]))
    model = build_model(model_spec_from_name("vit-base")).eval()
    x = torch.randn(batch_size, 3, 224, 224)
    times = []
    with torch.no_grad():
        model(pixel_values=x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(pixel_values=x)
            times.append(time.perf_counter() - t)
    host_s = min(times)
    return {
        "device": WEAK_DEVICE,
        "model": "google/vit-base-patch16-224",
        "batch_size": batch_size,
        "device_s": device_s,
        "host_one_thread_s": host_s,
        "slowdown": device_s / host_s,
        "device_vit_base_per_image_s": device_s / batch_size,
    }


def local_linear(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray
) -> tuple[np.ndarray, float]:
    """Multinomial logistic regression on 16x16 mean-pooled pixels (what a weak device can run)."""
    from sklearn.linear_model import LogisticRegression

    def features(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), 16, 4, 16, 4).mean(axis=(2, 4)).reshape(len(x), -1) / 255.0

    model = LogisticRegression(max_iter=300, C=1.0)
    model.fit(features(train_x), train_y)
    one = features(test_x[:1])
    t = time.perf_counter()
    for _ in range(200):
        model.predict_proba(one)
    per_image_s = (time.perf_counter() - t) / 200
    return model.predict(features(test_x)), per_image_s


# -- real HTTP check ----------------------------------------------------------------------------------
def real_http_run(
    pipeline: OffloadPipeline,
    order: list[int],
    images: np.ndarray,
    labels: np.ndarray,
    options: list[OffloadOption],
    trace: BandwidthTrace,
    slo_s: float,
    num_frames: int,
    policy: PolicyConfig | None = None,
) -> dict[str, Any]:
    import uvicorn

    from edgesplit.offload.client import LinkEmulator, OffloadClient
    from edgesplit.offload.server import ServerConfig, create_app

    port = _free_port()
    app = create_app(pipeline, ServerConfig(port=port), patch_order=order)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    link = LinkEmulator(TokenBucket(trace, burst_bytes=BURST_BYTES), ONE_WAY_LATENCY_S)
    with OffloadClient(
        f"http://127.0.0.1:{port}",
        link=link,
        rtt_s=2 * ONE_WAY_LATENCY_S,
        initial_bandwidth_bytes_per_s=MEAN_BANDWIDTH_BYTES_PER_S / 2,
    ) as client:
        client.info()
        run = classify_frames(
            client,
            images[:num_frames],
            labels[:num_frames],
            options,
            slo_s=slo_s,
            period_s=FRAME_PERIOD_S,
            policy=policy,
        )
    server.should_exit = True
    thread.join(timeout=10)
    return {
        "trace": trace.name,
        "slo_s": slo_s,
        "num_frames": num_frames,
        "slo_attainment": run.slo_attainment(slo_s),
        "accuracy": float(run.correct.mean()),
        "latency_p50_s": run.latency_percentile_s(50),
        "latency_p95_s": run.latency_percentile_s(95),
        "round2_share": float((run.rounds == 2).mean()),
        "mean_body_bytes": float(run.body_bytes.mean()),
    }


# -- main ---------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR)
    parser.add_argument(
        "--write-tables",
        action="store_true",
        help="also write the policy tables next to the checkpoints",
    )
    parser.add_argument(
        "--replot", action="store_true", help="only redraw the plots from the results JSON"
    )
    parser.add_argument(
        "--pilot",
        action="store_true",
        help="replay the pilot traces (seeds 0-3, used to set policy knobs) and print the SLO "
        "criteria; writes nothing",
    )
    parser.add_argument(
        "--pilot-seeds",
        type=_seed_range,
        default=None,
        metavar="A-B",
        help=f"like --pilot on another set of {len(TRACES)} trace seeds (e.g. 4-7: a second pilot "
        "set, so knobs are not tuned on four traces only); the reported seeds "
        f"{REPORTED_SEED}-{REPORTED_SEED + len(TRACES) - 1} are refused",
    )
    parser.add_argument(
        "--fixed-tolerance",
        action="store_true",
        help="ablation: the policy treats options as equally accurate only within 0.2 points "
        "(default: within one standard error of the tables' accuracy)",
    )
    args = parser.parse_args()
    if args.pilot and args.pilot_seeds is not None:
        parser.error("--pilot is seeds 0-3; give either it or --pilot-seeds")
    first_seed = REPORTED_SEED
    if args.pilot:
        first_seed = 0
    elif args.pilot_seeds is not None:
        first_seed = args.pilot_seeds
        args.pilot = True
    if args.replot:
        import json

        result = json.loads((Path(__file__).parent / "results" / "offload.json").read_text())
        plot_accuracy_vs_bytes(curves_from_results(result), DOCS / "offload_accuracy_vs_bytes.png")
        plot_slo(result["slo"], DOCS / "offload_slo.png")
        if "slo_network_blind" in result:
            plot_network_blind(result["slo_network_blind"], DOCS / "offload_slo_network_blind.png")
        return
    torch.set_num_threads(1)
    started = time.monotonic()
    cpu_started = time.process_time()
    num_val, num_test = (200, 300) if args.quick else (600, 1000)
    num_frames = 60 if args.quick else 1000
    pipeline, order_list = load_pipeline(args.weights)
    order = np.array(order_list)

    train_x, train_y = load_fashion_mnist("train")
    val_x = upscale(train_x[-VALIDATION_SIZE:][:num_val])
    val_y = train_y[-VALIDATION_SIZE:][:num_val]
    test_raw, test_y_all = load_fashion_mnist("test")
    test_x, test_y = upscale(test_raw[:num_test]), test_y_all[:num_test]
    print(f"[data] val {len(val_x)} (held-out train), test {len(test_x)}", flush=True)

    # 1. Settings measured on val (tables) and test (reported).
    val_outcomes = measure_all(pipeline, val_x, val_y, order)
    print(f"[val] {len(val_outcomes)} settings, {time.monotonic() - started:.0f} s", flush=True)
    test_outcomes = measure_all(pipeline, test_x, test_y, order, recompute=REUSE_CODEC)
    print(f"[test] {len(test_outcomes)} settings, {time.monotonic() - started:.0f} s", flush=True)
    val_progressive = measure_progressive(pipeline, val_x, val_y, order)
    test_progressive = measure_progressive(pipeline, test_x, test_y, order)
    print(f"[progressive] {time.monotonic() - started:.0f} s", flush=True)
    fixed_ratio = {
        sampling: [
            measure_setting(
                pipeline,
                test_x,
                test_y,
                Setting(sampling, k1, "zlib"),  # type: ignore[arg-type]
                server_order=order,
                seed=1,
            )
            for k1 in K1_VALUES[:-1]
        ]
        for sampling in ("random", "grid")
    }

    # 2. Server latency profile (batch 1) and round-2 reuse.
    server_samples = server_profile(pipeline, test_x[0], repeats=8 if args.quick else 20)
    server_p95 = p95_table(server_samples)
    server_p50 = {k1: float(np.median(server_samples[(k1, 0)][0])) for k1 in K1_VALUES}
    reuse_rows = []
    for k1, k2 in ((8, 8), (8, 16), (16, 16), (24, 16)):
        codec, quality = REUSE_CODEC
        outcome = next(
            o
            for o in test_outcomes
            if o.setting == Setting("server", k1, codec, quality)  # type: ignore[arg-type]
        )
        reuse_rows.append(
            {
                "k1": k1,
                "k2": k2,
                "codec": f"{codec}{quality}",
                "accuracy_reuse": float(outcome.correct2[k2].mean()),
                "accuracy_scratch": float(outcome.correct2_recompute[k2].mean()),
                "by_batch": [
                    reuse_costs(pipeline, test_x[: (40 if args.quick else 120)], k1, k2, 1),
                    reuse_costs(pipeline, test_x[: (64 if args.quick else 256)], k1, k2, 32),
                ],
            }
        )
    print(f"[profile] {time.monotonic() - started:.0f} s", flush=True)

    # 3. Tables (val) -> policy options; local baselines.
    tables = build_tables(val_outcomes, server_p95)
    tables = tables.model_copy(
        update={"options": [*tables.options, *progressive_options(val_progressive, server_p95)]}
    )
    if args.write_tables:
        write_json_file(tables, args.weights / "tables.json")
    full_raw = next(
        o
        for o in test_outcomes
        if o.setting.codec == "raw" and o.setting.k1 == 64 and o.setting.sampling == "grid"
    )
    weak = weak_device_slowdown(repeats=1 if args.quick else 3)
    print(f"[weak device] {weak}", flush=True)
    slowdown = weak["slowdown"]
    t = time.perf_counter()
    for _ in range(20):
        pipeline.classify_images(test_x[:1])
    vit_local_s = (time.perf_counter() - t) / 20 * slowdown
    linear_pred, linear_s = local_linear(upscale(train_x[:10_000]), train_y[:10_000], test_x)
    linear_correct = linear_pred == test_y
    linear_local_s = linear_s * slowdown

    # 4. Accuracy vs bytes (test) for the plot and the JSON.
    curves, summary_bytes = accuracy_vs_bytes(test_outcomes, fixed_ratio, test_progressive)
    curves["local (weak device, 0 bytes)"] = [
        (0.0, float(full_raw.correct1.mean()), "local ViT"),
        (0.0, float(linear_correct.mean()), "local linear"),
    ]
    summary_bytes["local ViT (weak device)"] = {
        "accuracy": float(full_raw.correct1.mean()),
        "bytes_mean": 0.0,
        "latency_s": vit_local_s,
    }
    summary_bytes["local linear (weak device)"] = {
        "accuracy": float(linear_correct.mean()),
        "bytes_mean": 0.0,
        "latency_s": linear_local_s,
    }
    DOCS.mkdir(exist_ok=True)

    # 5. SLO replay over traces.
    # The options carry the number of images they were measured on, so the default config
    # applies the one-standard-error rule by itself; --fixed-tolerance turns it off.
    policy_config = PolicyConfig(one_standard_error=not args.fixed_tolerance)
    test_by_key = {
        (o.setting.sampling, o.setting.k1, o.setting.codec, o.setting.quality): o
        for o in test_outcomes
    }
    fixed_outcomes = [o for o in test_outcomes]
    policies = [
        *MAIN_POLICIES,
        Policy("adaptive two-round, one-shot round 1", "adaptive2"),
        Policy("adaptive two-round, one-shot robust round 1", "adaptive2", robust=True),
    ]
    policies += [Policy(f"fixed {o.setting.name}", "fixed", outcome=o) for o in fixed_outcomes]
    policies += [
        Policy(
            "local ViT (weak device)", "local", local_s=vit_local_s, local_correct=full_raw.correct1
        ),
        Policy(
            "local linear (weak device)",
            "local",
            local_s=linear_local_s,
            local_correct=linear_correct,
        ),
    ]
    slo_rows = []
    run_frames: list[RunFrames] = []
    for trace_index, trace_name in enumerate(TRACES):
        trace = make_trace(
            trace_name,
            MEAN_BANDWIDTH_BYTES_PER_S,  # type: ignore[arg-type]
            duration_s=num_frames * FRAME_PERIOD_S,
            # Policy knobs are piloted on seeds 0-3 (--pilot) and 4-7 (--pilot-seeds 4-7) and
            # reported on seeds 100-103.
            seed=first_seed + trace_index,
        )
        for slo_s in SLOS_S:
            feasible = feasible_frames(trace, slo_s, num_frames, fixed_outcomes, server_p50)
            row: dict[str, Any] = {
                "trace": trace_name,
                "slo_s": slo_s,
                "feasible_fraction": float(feasible.mean()),
                "policies": {},
            }
            correct_by_policy: dict[str, np.ndarray] = {}
            met_by_policy: dict[str, np.ndarray] = {}
            for policy in policies:
                r = replay(
                    policy,
                    trace,
                    slo_s,
                    num_frames=num_frames,
                    val_options=tables.options,
                    test_outcomes=test_by_key,
                    server_samples=server_samples,
                    seed=trace_index,
                    progressive=test_progressive,
                    policy_config=policy_config,
                )
                met = r["latency_s"] <= slo_s
                correct_by_policy[policy.name] = r["correct"]
                met_by_policy[policy.name] = met
                row["policies"][policy.name] = {
                    "slo_attainment": float(met.mean()),
                    "slo_attainment_feasible": float(met[feasible].mean())
                    if feasible.any()
                    else None,
                    "accuracy": float(r["correct"].mean()),
                    "correct_and_on_time": float((r["correct"] & met).mean()),
                    "latency_p50_s": float(np.percentile(r["latency_s"], 50)),
                    "latency_p95_s": float(np.percentile(r["latency_s"], 95)),
                    "latency_p99_s": float(np.percentile(r["latency_s"], 99)),
                    "mean_bytes": float(r["bytes"].mean()),
                    "round2_share": float((r["rounds"] == 2).mean()),
                }
            adaptive = row["policies"]["adaptive two-round"]
            best = best_fixed_meeting_as_many(row["policies"], adaptive["slo_attainment_feasible"])
            row["best_fixed_meeting_as_many"] = best
            if best:
                row["policies"]["best fixed (same attainment)"] = row["policies"][best]
                row["accuracy_gain_vs_best_fixed"] = paired_gain(
                    correct_by_policy["adaptive two-round"], correct_by_policy[best]
                )
            row["policies"]["full-image jpeg50"] = row["policies"]["fixed grid-k64-jpeg50"]
            slo_rows.append(row)
            run_frames.append(
                RunFrames(trace_name, slo_s, feasible, correct_by_policy, met_by_policy)
            )
            print(
                f"[slo] {trace_name} {slo_s}s feasible {feasible.mean():.2f} adaptive2 "
                f"{adaptive['slo_attainment_feasible']:.3f}/{adaptive['accuracy']:.3f} "
                f"best fixed {best} "
                f"{best and row['policies'][best]['accuracy']} "
                f"gain {row.get('accuracy_gain_vs_best_fixed')}",
                flush=True,
            )
    verdicts = slo_verdicts(slo_rows)
    print(f"[slo] verdicts per trace x SLO: {verdicts['counts']}", flush=True)
    blind = network_blind_verdicts(run_frames)
    for row in blind:
        print(
            f"[slo] one fixed setting per SLO {row['slo_s']}s: {row['verdict']}; adaptive "
            f"{row['adaptive_two_round']} vs {row['rival_meeting_as_many']} {row['rival']} "
            f"gain {row['accuracy_gain_vs_rival']}; more accurate but fewer: "
            f"{row['more_accurate_fixed_meeting_fewer']} "
            f"{row['more_accurate_fixed_meeting_fewer_stats']}",
            flush=True,
        )
    if args.pilot:
        return
    plot_slo(slo_rows, DOCS / "offload_slo.png")
    plot_network_blind(blind, DOCS / "offload_slo_network_blind.png")
    for label, key in (
        ("adaptive one-round", "adaptive one-round"),
        ("adaptive two-round", "adaptive two-round"),
    ):
        curves[f"{label} (per trace x SLO)"] = [
            (
                row["policies"][key]["mean_bytes"],
                row["policies"][key]["accuracy"],
                f"{row['trace']}-{row['slo_s']}",
            )
            for row in slo_rows
        ]
    plot_accuracy_vs_bytes(curves, DOCS / "offload_accuracy_vs_bytes.png")

    # 6. Real HTTP check of one replay.
    check_trace = make_trace("lte", MEAN_BANDWIDTH_BYTES_PER_S, duration_s=120.0, seed=103)
    real = real_http_run(
        pipeline,
        order_list,
        test_x,
        test_y,
        tables.options,
        check_trace,
        0.25,
        20 if args.quick else 60,
        policy_config,
    )
    replayed = replay(
        MAIN_POLICIES[0],
        check_trace,
        0.25,
        num_frames=real["num_frames"],
        val_options=tables.options,
        test_outcomes=test_by_key,
        server_samples=server_samples,
        seed=3,
        progressive=test_progressive,
        policy_config=policy_config,
    )
    real["replay_slo_attainment"] = float((replayed["latency_s"] <= 0.25).mean())
    real["replay_latency_p50_s"] = float(np.percentile(replayed["latency_s"], 50))
    real["replay_latency_p95_s"] = float(np.percentile(replayed["latency_s"], 95))
    print(f"[http] {real}", flush=True)
    plot_reconstructions(pipeline, test_x[:4], order, DOCS / "offload_reconstructions.png")

    # 7. Keep the JSON small: drop the per-fixed-setting SLO rows except a few references.
    keep = {
        "adaptive two-round",
        "adaptive one-round",
        "adaptive two-round, one-shot round 1",
        "adaptive two-round, one-shot robust round 1",
        "best fixed (same attainment)",
        "full-image jpeg50",
        "local ViT (weak device)",
        "local linear (weak device)",
        "fixed grid-k64-webp10",
        "fixed grid-k64-jpeg_shared10",
        "fixed grid-k64-png",
        "fixed server-k16-webp50",
        "fixed server-k8-webp50",
        "fixed server-k4-webp50",
        "fixed server-k8-zlib",
    }
    for row in slo_rows:
        row["policies"] = {k: v for k, v in row["policies"].items() if k in keep}
    write_result(
        "offload",
        {
            "method": {
                "dataset": f"Fashion-MNIST test (first {num_test}), 28x28 bilinear-upscaled "
                "to 64x64",
                "tables_from": f"{num_val} held-out training images (never test)",
                "patch_size": 8,
                "num_patches": 64,
                "bytes": "request body = frame header (msgpack) + payload; the SLO replay adds "
                f"{HTTP_OVERHEAD_BYTES} B of HTTP framing per request",
                "server_time": "measured at batch 1, 1 torch thread, this host; p95 in tables",
                "slo_replay": f"virtual time: token bucket (burst {BURST_BYTES:.0f} B) on each "
                f"trace, one-way latency {1000 * ONE_WAY_LATENCY_S:.0f} ms, a frame every "
                f"{FRAME_PERIOD_S} s, {num_frames} frames",
                "feasible": "a frame's SLO is feasible if some fixed setting's round 1 over an "
                "idle link (full token bucket, oracle bandwidth) with median server time meets it",
                "adaptive_policy": "adaptive two-round: each frame picks, among one-shot, "
                "two-round and progressive options (tables from validation images), the best "
                "expected accuracy whose round 1 (a progressive option's first segment) also meets "
                "the SLO at a rate as low as the worst 2 % of the last 100 uploads (5/10/20 % if "
                "nothing would; none if still nothing); at equal accuracy it prefers a progressive "
                "round 1, whose upload is cut at the deadline; the cut and the round-2 check use "
                "min(planning rate, 2 % rate). Policy knobs piloted on trace seeds 0-3, reported "
                "on seeds 100-103.",
                "weak_device": weak,
                "mean_bandwidth_bytes_per_s": MEAN_BANDWIDTH_BYTES_PER_S,
                "scenarios": {
                    "traces": TRACES,
                    "slos_s": SLOS_S,
                    "k1": K1_VALUES,
                    "k2": K2_VALUES,
                    "quick": args.quick,
                },
            },
            "accuracy_vs_bytes": summary_bytes,
            "slo": slo_rows,
            "slo_verdicts": verdicts,
            "slo_network_blind": blind,
            "round2_reuse": reuse_rows,
            "real_http_check": real,
            "server_compute_p50_s": {f"k{k}": v for k, v in server_p50.items()},
            "runtime": {
                "wall_s": time.monotonic() - started,
                "cpu_s": time.process_time() - cpu_started,
                "torch_threads": 1,
            },
        },
        command="python benchmarks/offload.py"
        + (" --quick" if args.quick else "")
        + (" --fixed-tolerance" if args.fixed_tolerance else ""),
    )
    print(f"done in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
