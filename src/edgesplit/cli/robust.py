"""`edgesplit robust plan|eval|run|finetune`: robust width placement (EASTER) from the command line.

Plans a width placement for a model over a cluster, evaluates a plan under device failures
(masked evaluation, optionally on Ray with killed shard actors), runs a plan on shard stages
like a pipeline plan (emulated or real, shaped links, `--fault`) and compares failure-aware
fine-tuning with a control. Imports the robust façade (api_robust) and core types only; the
façade loads torch, so each command imports it when it runs (`--help` stays fast).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from edgesplit.cli.common import console
from edgesplit.core.cluster import Cluster, load_cluster
from edgesplit.core.schema import stable_json, write_json_file
from edgesplit.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from edgesplit.api import robust as api_robust  # torch + transformers: loaded per command

__all__ = ["register"]

robust_app = typer.Typer(
    help="Robust width split: keep a model working when devices fail (EASTER).",
    no_args_is_help=True,
)

# The study tasks api.robust.load_task builds (models.robust_tasks.task_names; a test keeps the
# two equal). Listed here so a misspelt name fails before torch loads.
MODELS = ("vit-digits", "vit-fashion", "minilm", "gpt2-kjv", "smollm2")
MODEL_HELP = f"Study model: {', '.join(MODELS)}."
CLUSTER_HELP = "cluster.toml (the source device is the coordinator); or use --devices."
SEED_HELP = "Seed of the calibration/evaluation subsets (same seed, same numbers)."


def _check_model(name: str) -> str:
    if name not in MODELS:
        hint = did_you_mean(name, MODELS)
        raise ConfigError(f"unknown study model {name!r}; {hint}choose one of {', '.join(MODELS)}")
    return name


def _check_devices(option: str, names: Sequence[str], plan_devices: Sequence[str]) -> None:
    """Devices named on the command line must be the plan's (checked before any work)."""
    for name in names:
        if name not in plan_devices:
            hint = did_you_mean(name, plan_devices)
            raise ConfigError(
                f"{option} {name}: not a device of the plan; {hint}the plan's devices are "
                f"{', '.join(plan_devices)}"
            )


def _cluster(cluster: Path | None, devices: int, probability: float) -> Cluster:
    from edgesplit.api import robust as api_robust

    if cluster is not None:
        return load_cluster(cluster)
    return api_robust.synthetic_cluster(devices, probability=probability)


def _strategy_table(
    plans: list[api_robust.RobustPlan], chosen: api_robust.RobustPlan, probability: float
) -> Table:
    metric = chosen.metric_name
    table = Table(
        title=f"{chosen.model}: {len(chosen.devices)} devices, surrogate {metric} "
        f"(chosen: {chosen.strategy.label})"
    )
    for column in (
        "strategy",
        "memory/device",
        f"E({metric}) p={probability:g}",
        "worst k=1",
        "latency ms",
    ):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for plan in plans:
        pr = plan.predicted
        worst1 = f"{pr.worst_by_k[1]:.4f}" if len(pr.worst_by_k) > 1 else "-"
        mark = " *" if plan.strategy.label == chosen.strategy.label else ""
        table.add_row(
            plan.strategy.label + mark,
            f"{pr.memory_copies:.3f}",
            f"{pr.expected_metric[f'{probability:g}']:.4f}",
            worst1,
            f"{pr.latency_s * 1e3:.2f}",
        )
    return table


@robust_app.command("plan")
def plan_command(
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = "vit-digits",
    cluster: Annotated[Path | None, typer.Option("--cluster", "-c", help=CLUSTER_HELP)] = None,
    devices: Annotated[int, typer.Option(min=1, help="Shard devices (no --cluster).")] = 4,
    memory_copies: Annotated[
        float, typer.Option(min=0.01, help="Per-device memory cap, in model copies.")
    ] = 0.5,
    probability: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Failure probability to optimise for.")
    ] = 0.1,
    problem: Annotated[
        Path | None, typer.Option(help="Reuse a measured problem JSON (skips importance).")
    ] = None,
    save_problem: Annotated[Path | None, typer.Option(help="Write the problem JSON.")] = None,
    importance: Annotated[
        str, typer.Option(help="Unit importance: ablation (exact) or gradient (first-order).")
    ] = "ablation",
    seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Chosen plan JSON.")] = Path(
        "robust_plan.json"
    ),
    pareto: Annotated[Path | None, typer.Option(help="Write the Pareto set (JSON list).")] = None,
) -> None:
    """Measure importance, search placements, write the chosen plan (and the Pareto set).

    Example (4 synthetic devices dev0..dev3, each holding at most half a model copy):
      edgesplit robust plan -m vit-digits --devices 4 --memory-copies 0.5 \\
        -o robust.json --save-problem problem.json
    Writes the plan (robust_plan.json unless -o), and the problem (--save-problem) that
    `robust eval --problem` and later `robust plan --problem` reuse to skip the measurement.
    """
    if problem is None:
        _check_model(model)
        if importance not in ("ablation", "gradient"):
            raise typer.BadParameter("--importance must be 'ablation' or 'gradient'")
    from edgesplit.api import robust as api_robust

    the_cluster = _cluster(cluster, devices, probability)
    if problem is not None:
        the_problem = api_robust.load_robust_problem(problem)
    else:
        with console.status(f"measuring unit importance of {model} ({importance})"):
            the_problem = api_robust.build_problem(
                api_robust.load_task(model, seed=seed),
                seed=seed,
                importance="ablation" if importance == "ablation" else "gradient",
            )
    if save_problem is not None:
        write_json_file(the_problem, save_problem)
    chosen, front, plans = api_robust.robust_plan(
        the_problem, the_cluster, memory_copies=memory_copies, probability=probability
    )
    console.print(_strategy_table(plans, chosen, probability))
    console.print(f"Pareto set: {', '.join(p.strategy.label for p in front)}")
    write_json_file(chosen, output)
    if pareto is not None:
        pareto.write_text(stable_json([p.model_dump(mode="json") for p in front]))
    console.print(f"wrote {output}")


@robust_app.command("eval")
def eval_command(
    plan: Annotated[Path, typer.Argument(help="Robust plan JSON (edgesplit robust plan -o).")],
    model: Annotated[str | None, typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    problem: Annotated[Path | None, typer.Option(help="Problem JSON (for the surrogate).")] = None,
    max_sets_per_k: Annotated[
        int | None, typer.Option(min=1, help="Sample failed sets per k (default: all).")
    ] = None,
    kill: Annotated[
        str | None,
        typer.Option(help="Comma-separated devices: also run on Ray and kill these actors."),
    ] = None,
    seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Result JSON.")] = None,
) -> None:
    """Real masked evaluation of a plan at k = 0..N−1 failed devices; optionally distributed.

    Example (the plan and problem of `robust plan`; then on Ray, dev1 and dev2 killed):
      edgesplit robust eval robust.json --problem problem.json --kill dev1,dev2
    Prints the table; writes nothing unless -o.
    """
    from edgesplit.api import robust as api_robust

    the_plan = api_robust.load_robust_plan(plan)
    killed = [d.strip() for d in (kill or "").split(",") if d.strip()]
    _check_devices("--kill", killed, the_plan.devices)
    task = api_robust.load_task(_check_model(model or the_plan.model), seed=seed)
    if problem is not None:
        the_problem = api_robust.load_robust_problem(problem)
    else:
        with console.status("measuring importance for the surrogate comparison"):
            the_problem = api_robust.build_problem(task, seed=seed)
    measured = api_robust.measure_plan(
        task, the_plan, the_problem, max_sets_per_k=max_sets_per_k, seed=seed
    )
    table = Table(
        title=f"{the_plan.model} · {the_plan.strategy.label} · measured {task.metric_name}"
    )
    for column in ("failed k", "sets", "mean", "worst"):
        table.add_column(column, justify="right")
    for k, (n, mean, worst) in enumerate(
        zip(measured.num_sets_by_k, measured.mean_by_k, measured.worst_by_k, strict=True)
    ):
        table.add_row(str(k), str(n), f"{mean:.4f}", f"{worst:.4f}")
    console.print(table)
    expected = ", ".join(f"p={p}: {v:.4f}" for p, v in measured.expected_metric.items())
    console.print(f"expected {task.metric_name}: {expected}")
    result: dict[str, object] = {"measured": measured.model_dump(mode="json")}
    if killed:
        check = api_robust.distributed_check(task, the_plan, killed)
        console.print(
            f"Ray: killed {list(check.killed)}, detected {list(check.detected_failed)}, "
            f"{check.lost_units} units lost, {check.failovers} failovers; max |distributed − "
            f"masked| = {check.max_abs_diff_masked:.2e} (intact run: "
            f"{check.max_abs_diff_intact:.2e})"
        )
        result["distributed"] = check.model_dump(mode="json")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


@robust_app.command("finetune")
def finetune_command(
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = "vit-digits",
    devices: Annotated[int, typer.Option(min=2, help="Shard devices.")] = 4,
    steps: Annotated[int, typer.Option(min=2, help="Fine-tuning steps per arm.")] = 200,
    rounds: Annotated[int, typer.Option(min=1, help="Fine-tune/re-place rounds.")] = 2,
    train_probability: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.99, help="Failout: each device fails with this probability per step."
        ),
    ] = 0.25,
    memory_copies: Annotated[
        float, typer.Option(min=0.01, help="Per-device memory cap, in model copies.")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Report JSON.")] = None,
) -> None:
    """Failure-aware fine-tuning ("failout") vs a control of equal steps; accuracy at k = 1.

    Example (200 steps per arm on the digits ViT, 4 synthetic devices):
      edgesplit robust finetune -m vit-digits --steps 200 -o failout.json
    Prints the table; writes the report only with -o.
    """
    _check_model(model)
    from edgesplit.api import robust as api_robust

    task = api_robust.load_task(model, seed=seed)
    with console.status("measuring importance"):
        problem = api_robust.build_problem(task, seed=seed)
    report = api_robust.failout_study(
        task,
        problem,
        api_robust.synthetic_cluster(devices),
        steps=steps,
        rounds=rounds,
        train_probability=train_probability,
        memory_copies=memory_copies,
        seed=seed,
    )
    table = Table(title=f"{model}: failout vs control ({steps} steps each), {devices} devices")
    for column in ("arm", "plan", "k=0", "k=1 mean", "k=1 worst"):
        table.add_column(column, justify="left" if column in ("arm", "plan") else "right")
    for arm in ("before", "failout", "control", "before_split", "failout_split", "control_split"):
        m = getattr(report, arm)
        table.add_row(
            arm,
            m.strategy,
            f"{m.mean_by_k[0]:.4f}",
            f"{m.mean_by_k[1]:.4f}",
            f"{m.worst_by_k[1]:.4f}",
        )
    console.print(table)
    if output is not None:
        write_json_file(report, output)


@robust_app.command("run")
def run_command(
    plan: Annotated[Path, typer.Option("--plan", help="Robust plan JSON (robust plan -o).")],
    cluster: Annotated[Path, typer.Option("--cluster", "-c", help="cluster.toml of the plan.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    compute: Annotated[
        str, typer.Option(help="emulated (sleep the planner's unit time) or real (weights).")
    ] = "emulated",
    requests: Annotated[int, typer.Option(min=1, help="Requests, one after another.")] = 16,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault", help="KIND:DEVICE@SECONDS, KIND in kill, stop, crash, cut (repeat)."
        ),
    ] = None,
    time_scale: Annotated[float, typer.Option(help="Emulated seconds -> wall seconds.")] = 1.0,
    link_shaping: Annotated[
        str, typer.Option(help="full, latency (bandwidth shaped by the kernel) or off.")
    ] = "full",
    ray_address: Annotated[
        str | None, typer.Option(help="HEAD:PORT of a Ray cluster (default: an embedded one).")
    ] = None,
    seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    report: Annotated[Path | None, typer.Option(help="Write the run report JSON here.")] = None,
) -> None:
    """Run a width plan on shard stages like a pipeline plan: failures, failovers, latency.

    Emulated or real compute, links shaped from cluster.toml, faults injected.

    Example (a plan over a described cluster; pi1 killed 1 s in):
      edgesplit robust plan -m vit-digits -c examples/cluster.toml -o wplan.json
      edgesplit robust run --plan wplan.json -c examples/cluster.toml \\
        --fault kill:pi1@1 --report wrun.json
    Writes the run report only with --report.
    """
    from edgesplit.api import robust as api_robust

    if compute not in ("real", "emulated") or link_shaping not in ("full", "latency", "off"):
        raise typer.BadParameter("--compute real|emulated, --link-shaping full|latency|off")
    the_plan = api_robust.load_robust_plan(plan)
    the_cluster = load_cluster(cluster)
    faults = [api_robust.parse_fault(f) for f in fault or []]
    _check_devices("--fault", [f.device for f in faults], the_plan.devices)
    task = api_robust.load_task(_check_model(model or the_plan.model), seed=seed)
    inputs = {k: v[:1] for k, v in task.evaluation[0][0].items()}  # one sample per request
    config = api_robust.RuntimeConfig(
        compute=compute,  # type: ignore[arg-type]  # checked above
        time_scale=time_scale,
        link_shaping=link_shaping,  # type: ignore[arg-type]
        ray_address=ray_address,
    )
    result = api_robust.run_robust(
        the_plan,
        the_cluster,
        task.model,
        inputs,
        config=config,
        requests=requests,
        faults=faults,
    )
    table = Table(
        title=f"{result.model} · {result.strategy} · {compute} on {len(result.devices)} devices"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("requests completed", f"{result.completed} / {result.requests}")
    table.add_row(
        "latency p50 / max (predicted)",
        f"{result.latency_s.p50 * 1e3:.2f} / {result.latency_s.max * 1e3:.2f} ms "
        f"({result.predicted_latency_s * 1e3:.2f} ms)",
    )
    table.add_row("failovers / lost units", f"{result.failovers} / {len(result.lost_units)}")
    for f in result.failures:
        recovered = f"{f.recovered_after_s:.2f} s" if f.recovered_after_s is not None else "never"
        table.add_row(
            f"{f.fault or 'failure'} of {f.device} at {f.at_s:.2f} s ({f.cause})",
            f"detected after {f.detected_after_s:.2f} s, recovered after {recovered}",
        )
    console.print(table)
    if result.notes:
        console.print(f"[yellow]{result.notes}[/yellow]")
    if report is not None:
        write_json_file(result, report)
        console.print(f"report: {report}")


def register(app: typer.Typer) -> None:
    app.add_typer(robust_app, name="robust")
