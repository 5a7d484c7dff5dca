"""`edgesplit simulate`: play a plan through the discrete-event simulator; Gantt plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from edgesplit import api
from edgesplit.cli.common import console
from edgesplit.cli.plan import PROFILE_HELP, load_profile_arg
from edgesplit.sim import SimConfig, SimResult

__all__ = ["register", "sim_table"]


def sim_table(result: SimResult) -> Group:
    """The headline figures (never squeezed to the table's width), then the table."""
    headline = (
        f"simulated: period {result.period_s:.4f} s vs predicted "
        f"{result.predicted_period_s:.4f} s (ratio {result.period_ratio:.4f})\n"
        f"latency p50 {result.latency_s.p50:.3f} s, p99 {result.latency_s.p99:.3f} s"
    )
    table = Table(title="per micro-batch: service time, utilization")
    for column in ("resource", "kind", "service s", "busy"):
        table.add_column(column, justify="left" if column in ("resource", "kind") else "right")
    for r in result.resources:
        table.add_row(r.name, r.kind, f"{r.service_s:.4f}", f"{r.busy_fraction:.0%}")
    return Group(Text(headline), table)


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate(
        plan: Annotated[Path, typer.Option("--plan", help="Plan JSON (edgesplit plan -o).")],
        profile: Annotated[str, typer.Option("--profile", "-p", help=PROFILE_HELP)],
        cluster: Annotated[Path, typer.Option("--cluster", "-c", help="cluster.toml")],
        microbatches: Annotated[int, typer.Option(min=2, help="Micro-batches to play.")] = 200,
        in_flight: Annotated[
            int | None, typer.Option(min=1, help="Max micro-batches inside the pipeline.")
        ] = None,
        jitter: Annotated[
            float, typer.Option(min=0.0, help="Coefficient of variation of service times.")
        ] = 0.0,
        seed: int = 0,
        plot: Annotated[Path | None, typer.Option(help="Write a Gantt/utilization PNG.")] = None,
        output: Annotated[Path | None, typer.Option("--output", "-o", help="Result JSON.")] = None,
    ) -> None:
        """Simulate a plan under a stream of micro-batches (compute, links, queueing).

        Example (the simulated period should equal the plan's prediction: ratio 1.0):
          edgesplit simulate --plan plan.json -p vit-base.json -c cluster.toml \\
            --plot gantt.png
        """
        the_plan = api.load_plan(plan)
        loaded = load_profile_arg(profile, the_plan.batch_size)
        config = SimConfig(
            num_microbatches=microbatches, max_in_flight=in_flight, jitter_cv=jitter, seed=seed
        )
        result = api.simulate(the_plan, loaded, api.load_cluster(cluster), config)
        console.print(sim_table(result))
        if in_flight is None:
            console.print(
                f"latency includes queueing: all {microbatches} micro-batches are offered at "
                "t=0 (open loop); --in-flight N keeps at most N inside the pipeline"
            )
        if plot:
            from edgesplit.plots import plot_pipeline

            console.print(f"plot written to [bold]{plot_pipeline(the_plan, result, plot)}[/]")
        if output:
            api.save(result.model_copy(update={"timeline": ()}), output)
