"""`edgesplit plan`: partition a profiled model over a cluster; `plan show`, `plan compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgesplit import api
from edgesplit.cli.common import SolveReport, console, plan_table
from edgesplit.core.plan import Objective
from edgesplit.core.profile import ModelProfile

__all__ = ["load_profile_arg", "register"]

PROFILE_HELP = (
    "Model profile JSON (from `edgesplit profile`), or pipeedge:MODEL to use PipeEdge's "
    "published board measurements, e.g. pipeedge:google/vit-large-patch16-224."
)
ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help=PROFILE_HELP)]
ClusterOpt = Annotated[
    Path, typer.Option("--cluster", "-c", help="cluster.toml (see examples/cluster.toml).")
]
ObjectiveOpt = Annotated[
    str,
    typer.Option(
        "--objective", help="throughput (minimise the period) or latency (one micro-batch)."
    ),
]


def load_profile_arg(value: str, batch_size: int = 8) -> ModelProfile:
    if value.startswith("pipeedge:"):
        return api.import_pipeedge_profile(value.removeprefix("pipeedge:"), batch_size)
    return api.load_profile(value)


def _objective(value: str) -> Objective:
    if value not in ("throughput", "latency"):
        raise typer.BadParameter(f"must be 'throughput' or 'latency', not {value!r}")
    return value  # type: ignore[return-value]  # narrowed by the check above


def _print_progress(report: SolveReport) -> None:
    gap = f"{report.gap:.2%}" if report.gap != float("inf") else "-"
    console.print(
        f"[dim]{report.elapsed_s:6.1f} s  best {report.best:.4g}  bound {report.bound:.4g}  "
        f"gap {gap}[/]"
    )


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help=(
            "Partition a model's units over a cluster's devices.\n\n"
            "  edgesplit plan -p profile.json -c cluster.toml -o plan.json\n"
            "  edgesplit plan show plan.json\n"
            "  edgesplit plan compare -p pipeedge:google/vit-large-patch16-224 -c cluster.toml"
        ),
        invoke_without_command=True,
        no_args_is_help=False,
    )

    @group.callback()
    def make(
        ctx: typer.Context,
        profile: Annotated[str | None, typer.Option("--profile", "-p", help=PROFILE_HELP)] = None,
        cluster: Annotated[
            Path | None, typer.Option("--cluster", "-c", help="cluster.toml")
        ] = None,
        objective: ObjectiveOpt = "throughput",
        planner: Annotated[
            str, typer.Option(help=f"One of {api.available_planners()}.")
        ] = "optimal",
        output: Annotated[
            Path | None, typer.Option("--output", "-o", help="Write the plan JSON here.")
        ] = None,
        batch_size: Annotated[int, typer.Option(help="Micro-batch for pipeedge: profiles.")] = 8,
        time_limit: Annotated[
            float | None,
            typer.Option(
                "--time-limit",
                help="Seconds to search at most; the best plan found is returned with its "
                "certified gap to a lower bound (default: until optimal).",
            ),
        ] = None,
        gap: Annotated[
            float,
            typer.Option(help="Accept a plan within this relative gap of the bound (0.01 = 1 %)."),
        ] = 0.0,
        dtype: Annotated[
            str,
            typer.Option(
                "--dtype",
                help="Stage dtypes allowed, e.g. float32,int8 (several: chosen per stage with "
                "the partition; the profile needs their figures: `edgesplit profile --dtype`).",
            ),
        ] = "float32",
        link_encoding: Annotated[
            str,
            typer.Option(
                "--link-encoding",
                help="Link encodings allowed between stages, e.g. float32,float16,int8-token.",
            ),
        ] = "float32",
        quality: Annotated[
            Path | None,
            typer.Option(
                "--quality",
                help="Quality table (from `edgesplit quality`): the plan records its predicted "
                "loss.",
            ),
        ] = None,
        max_quality_loss: Annotated[
            float | None,
            typer.Option(
                "--max-quality-loss",
                help="Largest predicted quality loss, in the table's unit (percent perplexity "
                "or cosine distance, accuracy points); needs --quality.",
            ),
        ] = None,
    ) -> None:
        """Plan (when called without a subcommand)."""
        if ctx.invoked_subcommand is not None:
            return
        if profile is None or cluster is None:
            console.print(ctx.get_help())
            raise typer.Exit(2)
        loaded = load_profile_arg(profile, batch_size)
        if time_limit is not None and time_limit <= 0:
            raise typer.BadParameter(f"--time-limit must be positive, not {time_limit}")
        the_plan = api.plan(
            loaded,
            api.load_cluster(cluster),
            _objective(objective),
            planner,
            time_limit_s=time_limit,
            target_gap=gap,
            progress=_print_progress,
            dtypes=api.precision.parse_dtypes(dtype),
            link_encodings=api.precision.parse_link_encodings(link_encoding),
            quality=None if quality is None else api.precision.load_quality_table(quality),
            max_quality_loss=max_quality_loss,
        )
        console.print(plan_table(the_plan))
        predicted = the_plan.predicted
        if not predicted.optimal and predicted.gap is not None:
            console.print(
                f"best plan found; certified gap to the lower bound "
                f"{predicted.lower_bound_s:.4g} s: {predicted.gap:.2%}"
            )
        if output:
            api.save(the_plan, output)
            console.print(f"plan written to [bold]{output}[/]")

    @group.command("show")
    def show(
        path: Annotated[Path, typer.Argument(help="A plan JSON file (`edgesplit plan -o`).")],
    ) -> None:
        """Print a plan as a stage-by-device table.

        Example (the plan `edgesplit plan ... -o plan.json` wrote):
          edgesplit plan show plan.json
        Reads the plan only; writes nothing.
        """
        console.print(plan_table(api.load_plan(path)))

    @group.command("compare")
    def compare(
        profile: ProfileOpt,
        cluster: ClusterOpt,
        objective: ObjectiveOpt = "throughput",
        batch_size: Annotated[int, typer.Option(help="Micro-batch for pipeedge: profiles.")] = 8,
    ) -> None:
        """Run every planner on one scenario and print them side by side.

        Example (PipeEdge's board measurements over 8 + 8 boards):
          edgesplit plan compare -p pipeedge:google/vit-large-patch16-224 \\
            -c examples/pipeedge-8+8.toml
        Prints the table; writes nothing.
        """
        loaded = load_profile_arg(profile, batch_size)
        outcomes = api.compare(loaded, api.load_cluster(cluster), _objective(objective))
        console.print(comparison_table(outcomes))

    app.add_typer(group, name="plan")


def comparison_table(outcomes: list[api.PlannerOutcome]) -> Table:
    feasible = [o.plan.predicted.period_s for o in outcomes if o.plan]
    best = min(feasible) if feasible else None
    table = Table(title="planner comparison (cost model of docs/architecture.md §4.1)")
    for column in (
        "planner",
        "stages",
        "period s",
        "vs best",
        "throughput/s",
        "latency s",
        "plan s",
    ):
        table.add_column(column, justify="left" if column == "planner" else "right")
    for outcome in outcomes:
        if outcome.plan is None:
            reason = (outcome.error or "").split(";")[0]
            table.add_row(outcome.planner, "-", "infeasible", "", "", "", reason[:60])
            continue
        predicted = outcome.plan.predicted
        ratio = predicted.period_s / best if best else float("nan")
        table.add_row(
            outcome.planner + (" *" if predicted.optimal else ""),
            str(len(outcome.plan.stages)),
            f"{predicted.period_s:.4f}",
            f"{ratio:.2f}x",
            f"{predicted.throughput_per_s:.3f}",
            f"{predicted.latency_s:.4f}",
            f"{outcome.plan.planner.elapsed_s:.3f}",
        )
    table.caption = "* = proven optimal under the cost model"
    return table
