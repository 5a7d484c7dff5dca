"""`edgesplit run`: execute a plan on Ray with live progress, a run report, a Gantt plot.

Goes through `api.run` (which injects the planner for re-planning after failures).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgesplit import api
from edgesplit.cli.common import console
from edgesplit.cli.plan import PROFILE_HELP, load_profile_arg
from edgesplit.errors import ConfigError

__all__ = ["register"]


def _summary(report: Any) -> Table:
    measured, predicted, requests = report.measured, report.predicted, report.requests
    table = Table(
        title=f"run of {report.model} ({report.compute}, {len(report.plan_stages)} "
        f"stages, time_scale {report.time_scale:g})"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    ratio = measured.period_s / predicted.period_s if predicted.period_s else float("nan")
    rows = [
        (
            "period measured / predicted",
            f"{measured.period_s:.4f} s / {predicted.period_s:.4f} s ({ratio:.3f}x)",
        ),
        ("throughput", f"{measured.throughput_per_s:.3f} samples/s"),
        (
            "latency p50 / p95 / p99",
            f"{measured.latency_s.p50:.4f} / {measured.latency_s.p95:.4f}"
            f" / {measured.latency_s.p99:.4f} s",
        ),
        ("requests submitted / completed", f"{requests.submitted} / {requests.completed}"),
        (
            "lost / duplicated / replayed",
            f"{requests.lost} / {requests.duplicated} / {requests.replayed}",
        ),
    ]
    for failure in report.failures:
        recovered = (
            f"{failure.recovered_after_s:.2f} s"
            if failure.recovered_after_s is not None
            else "never"
        )
        rows.append(
            (
                f"failure of {failure.device} at {failure.at_s:.2f} s ({failure.cause})",
                f"detected after {failure.detected_after_s:.2f} s, recovered after "
                f"{recovered} by {failure.action}",
            )
        )
    for name, value in rows:
        table.add_row(name, value)
    return table


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        plan: Annotated[Path, typer.Option("--plan", help="plan.json from `edgesplit plan`.")],
        cluster: Annotated[Path, typer.Option("--cluster", "-c", help="cluster.toml")],
        profile: Annotated[str, typer.Option("--profile", "-p", help=PROFILE_HELP)],
        requests: Annotated[int, typer.Option(min=1, help="Micro-batches to stream.")] = 64,
        compute: Annotated[
            str,
            typer.Option(
                help="real (run the model) or emulated (sleep "
                "the profiled time, move real-size tensors)."
            ),
        ] = "emulated",
        fault: Annotated[
            list[str] | None,
            typer.Option(
                "--fault",
                help="KIND:DEVICE@SECONDS, KIND in kill, stop (hang), crash (its Ray node), "
                "cut (its link) (repeat).",
            ),
        ] = None,
        kill: Annotated[
            list[str] | None,
            typer.Option(
                "--kill", help="DEVICE@SECONDS: SIGKILL that device's stage process then (repeat)."
            ),
        ] = None,
        report: Annotated[Path | None, typer.Option(help="Write the run report JSON here.")] = None,
        timeline: Annotated[
            Path | None, typer.Option(help="Gantt plot PNG (default: next to the report).")
        ] = None,
        metrics_port: Annotated[
            int | None, typer.Option(help="Serve Prometheus text on 127.0.0.1:PORT while running.")
        ] = None,
        time_scale: Annotated[
            float,
            typer.Option(
                help="Emulated seconds -> wall seconds (e.g. 0.05 runs a 5 s period in 0.25 s)."
            ),
        ] = 1.0,
        in_flight: Annotated[int, typer.Option(help="Unacknowledged micro-batches per link.")] = 4,
        link_shaping: Annotated[
            str,
            typer.Option(
                help="full (emulate cluster.toml's bandwidth and latency), latency (only the "
                "latency: bandwidth shaped by the kernel, e.g. the testbed's htb) or off.",
            ),
        ] = "full",
        standby: Annotated[
            list[str] | None,
            typer.Option("--standby", help="Spare device that takes a failed stage (repeat)."),
        ] = None,
        ray_address: Annotated[
            str | None,
            typer.Option(help="HEAD:PORT of a Ray cluster (default: embedded local Ray)."),
        ] = None,
        batch_size: Annotated[int, typer.Option(help="Micro-batch for pipeedge: profiles.")] = 8,
        inputs: Annotated[
            Path | None,
            typer.Option(
                help="Real inputs instead of the synthetic drill: a directory of PNG/JPEG "
                "images (classifiers) or a text file, one input per line (text encoders).",
            ),
        ] = None,
        predictions: Annotated[
            Path | None,
            typer.Option(help="With --inputs: write the JSON lines here (default: stdout)."),
        ] = None,
        dtype: Annotated[
            str | None,
            typer.Option(
                "--dtype",
                help="Hold every stage's weights in this dtype (float32, bfloat16, int8), "
                "overriding the plan's.",
            ),
        ] = None,
    ) -> None:
        """Run a plan: stages as Ray actors, micro-batches streaming, failover on failure.

        Example (emulated devices, embedded Ray; pi0's stage hangs 3 s in):
          edgesplit run --plan plan.json -c cluster.toml -p profile.json \\
            --report run.json --fault stop:pi0@3
        Writes the report and its Gantt plot (run.png beside it).
        """
        if inputs is not None:  # real inputs through the plan (api.serving), predictions out
            from edgesplit.api import serving

            loaded = api.load_plan(plan)
            if dtype is not None:
                loaded = api.precision.with_stage_dtype(loaded, api.precision.parse_dtype(dtype))
            found = serving.predict_inputs(
                loaded.model,
                inputs,
                plan=loaded,
                cluster=api.load_cluster(cluster),
                profile=load_profile_arg(profile, batch_size),
                faults=[api.parse_fault(f) for f in fault or []],
            )
            lines = "".join(p.to_json() + "\n" for p in found)
            if predictions is None:
                print(lines, end="")
            else:
                predictions.write_text(lines, encoding="utf-8")
                console.print(f"{len(found)} predictions: {predictions}")
            return
        if compute not in ("real", "emulated"):
            raise ConfigError(f"--compute must be 'real' or 'emulated', not {compute!r}")
        if link_shaping not in ("full", "latency", "off"):
            raise ConfigError(f"--link-shaping must be full, latency or off, not {link_shaping!r}")
        loaded_plan = api.load_plan(plan)
        loaded_cluster = api.load_cluster(cluster)
        loaded_profile = load_profile_arg(profile, batch_size)
        if dtype is not None:
            loaded_plan = api.precision.with_stage_dtype(
                loaded_plan, api.precision.parse_dtype(dtype), loaded_profile, loaded_cluster
            )
        config = api.RuntimeConfig(
            compute=compute,
            time_scale=time_scale,
            max_in_flight=in_flight,
            link_shaping=link_shaping,
            standby_devices=tuple(standby or ()),
            ray_address=ray_address,
        )
        faults = [api.parse_fault(f) for f in fault or []] + [api.parse_kill(k) for k in kill or []]
        if timeline is None and report is not None:
            if importlib.util.find_spec("matplotlib") is not None:
                timeline = report.with_suffix(".png")
            else:  # a board installed without the `plots` extra
                console.print("no Gantt plot: matplotlib is not installed (edgesplit[plots])")
        with Progress(
            TextColumn("[bold]running"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("run", total=requests, rate="starting Ray…")

            def progress(done: int, total: int | None, rate: float) -> None:
                bar.update(task, completed=done, rate=f"{rate:.2f} samples/s")

            result = api.run(
                loaded_plan,
                loaded_cluster,
                loaded_profile,
                config=config,
                requests=requests,
                faults=faults,
                progress=progress,
                timeline_path=timeline,
                metrics_port=metrics_port,
            )
        console.print(_summary(result))
        if report is not None:
            api.save(result, report)
            console.print(f"report: {report}")
        if result.timeline_plot:
            console.print(f"timeline: {result.timeline_plot}")
        if result.requests.lost:
            raise typer.Exit(4)
