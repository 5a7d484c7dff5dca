"""`edgesplit cluster up/status/down`: the multi-machine Ray setup, one node per device.

Wraps `ray start --head` (the coordinator) and `ray start --address` (each device, carrying a
custom resource named after the device) with RAY_AUTH_MODE=token. See docs/runtime.md.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgesplit.cli.common import console

__all__ = ["register"]

DOWN_WARNING = (
    "warning: `ray stop` stops every Ray on this machine, including other edgesplit runs' "
    "embedded clusters"
)


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help=(
            "Start, inspect and stop the Ray cluster edgesplit runs on (a Ray node per device).\n\n"
            "  on the head:     edgesplit cluster up --head --device cam0\n"
            "  on each device:  edgesplit cluster up --address HEAD_IP:6379 --device pi0\n"
            "  anywhere:        edgesplit cluster status --address HEAD_IP:6379"
        ),
        no_args_is_help=True,
    )

    @group.command("up")
    def up(
        head: Annotated[bool, typer.Option("--head", help="Start the head node.")] = False,
        address: Annotated[str | None, typer.Option(help="HEAD_IP:PORT to join.")] = None,
        device: Annotated[
            list[str] | None,
            typer.Option(
                "--device", help="Device name(s) this machine stands for (cluster.toml names)."
            ),
        ] = None,
        port: Annotated[int, typer.Option(min=1, max=65535, help="Head port.")] = 6379,
        node_ip: Annotated[
            str | None, typer.Option(help="This machine's IP as the others reach it.")
        ] = None,
        dry_run: Annotated[bool, typer.Option(help="Print the ray command only.")] = False,
    ) -> None:
        """Start this machine's Ray node (token auth, tuned health checks, device resources).

        Example (the head stands for cam0; then on each device, its own name):
          edgesplit cluster up --head --device cam0
          edgesplit cluster up --address HEAD_IP:6379 --device pi0
        Prints the ray command first; --dry-run runs nothing.
        """
        from edgesplit.api import cluster as api  # Ray loads only when a command runs

        command = api.cluster_up_command(
            head=head, address=address, devices=device or [], port=port, node_ip=node_ip
        )
        if not device:
            typer.secho(
                "warning: this node carries no device (--device NAME): it can drive runs, but "
                "plans cannot place stages on it",
                err=True,
                fg=typer.colors.YELLOW,
            )
        # One unwrapped line (copied into a shell or a script as it is), Ray's text as it is.
        typer.echo("RAY_AUTH_MODE=token " + shlex.join(command))
        if dry_run:
            return
        completed = api.run_ray_command(command)
        typer.echo(completed.stdout or "", nl=False)
        if completed.returncode != 0:
            typer.secho(completed.stderr, err=True, fg=typer.colors.RED)
            raise typer.Exit(4)

    @group.command("status")
    def status(address: Annotated[str | None, typer.Option(help="HEAD_IP:PORT")] = None) -> None:
        """Nodes, their IPs and the devices they carry.

        Example (from any machine that reaches the head):
          edgesplit cluster status --address HEAD_IP:6379
        Prints one line per node; writes nothing.
        """
        from edgesplit.api import cluster as api  # Ray loads only when a command runs

        for node in api.cluster_status(address):
            state = "alive" if node.alive else "dead"
            devices = ", ".join(node.devices) or "-"
            console.print(f"{node.ip:<16} {state:<6} devices: {devices}")

    @group.command("down")
    def down(
        dry_run: Annotated[
            bool, typer.Option(help="Print the ray command and stop nothing.")
        ] = False,
    ) -> None:
        """Stop the Ray processes on this machine (`ray stop`).

        Careful: `ray stop` stops EVERY Ray on this machine, not only the node `cluster up`
        started: other edgesplit runs here (their embedded Ray clusters), tests and anyone
        else's Ray die with it.

        Example (see what would run, stop nothing):
          edgesplit cluster down --dry-run
        """
        from edgesplit.api import cluster as api  # Ray loads only when a command runs

        command = api.cluster_down_command()
        typer.secho(DOWN_WARNING, err=True, fg=typer.colors.YELLOW)
        typer.echo(shlex.join(command))
        if dry_run:
            return
        completed = api.run_ray_command(command)
        typer.echo(completed.stdout or completed.stderr, nl=False)

    @group.command("survey")
    def survey(
        address: Annotated[str, typer.Option(help="HEAD_IP:PORT of the Ray cluster.")],
        model: Annotated[
            str, typer.Option("--model", "-m", help="Preset (vit-base) or checkpoint directory.")
        ],
        out: Annotated[
            Path, typer.Option("--out", "-o", help="Writes OUT/cluster.toml + OUT/profile.json.")
        ],
        source: Annotated[
            str | None,
            typer.Option(help="Device requests enter at (default: previous survey's, or first)."),
        ] = None,
        batch_size: Annotated[int, typer.Option(help="Micro-batch to profile at.")] = 1,
        window: Annotated[
            float, typer.Option(help="Seconds of full passes timed, per unit of the model.")
        ] = 1.0,
        link_seconds: Annotated[float, typer.Option(help="Seconds of bulk data per link.")] = 1.0,
        token_file: Annotated[
            Path | None,
            typer.Option(help="Ray auth token file (default: RAY_AUTH_TOKEN[_PATH], testbed's)."),
        ] = None,
        generation: Annotated[
            bool,
            typer.Option(
                "--generation",
                help="A decoder: also time decode/prefill in place (OUT/generation_profile.json "
                "for `edgesplit generate plan`).",
            ),
        ] = False,
    ) -> None:
        """Profile MODEL on every device and measure every link; write cluster.toml + profile.json.

        The files are what `edgesplit plan` reads; the same on real boards and on a testbed.

        Example (ViT-Base on every device of the cluster whose head is HEAD_IP):
          edgesplit cluster survey --address HEAD_IP:6379 -m vit-base -o survey
        Writes survey/cluster.toml and survey/profile.json (+ generation_profile.json with
        --generation), then prints the `edgesplit plan` command that reads them.
        """
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from edgesplit.api import testbed as api_testbed

        token = token_file or api_testbed.token_file_for(address)
        # Errors first: a misspelt model or a dead address before any bar is drawn.
        api_testbed.check_survey(address, model, token_file=token)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            tasks = {
                "profile": bar.add_task(
                    "profiling units", total=None, count="", detail="starting…"
                ),
                "links": bar.add_task("measuring links", total=None, count="", detail=""),
            }

            def progress(phase: str, done: int, total: int, detail: str) -> None:
                bar.update(
                    tasks[phase],
                    completed=done,
                    total=total,
                    count=f"{done}/{total}",
                    detail=detail,
                )

            result, cluster_path, profile_path = api_testbed.survey_cluster(
                address,
                model,
                out,
                options=api_testbed.survey_options(
                    batch_size=batch_size, min_window_s=window, link_seconds=link_seconds
                ),
                source=source,
                token_file=token,
                progress=progress,
            )
        devices = Table(title=f"devices ({result.model}, batch {batch_size})")
        columns = ("device", "ip", "kind", "cpu share", "units s", "per stage ms", "memory MB")
        for column in columns:
            devices.add_column(column, justify="left" if column in ("device", "kind") else "right")
        for d in result.devices:
            devices.add_row(
                d.device,
                d.ip,
                result.kinds[d.device],
                f"{d.cpu_share:.2f}",
                f"{d.total_s:.4f}",
                f"{d.stage_overhead_s * 1e3:.1f}",
                f"{d.memory_mb:.0f}",
            )
        links = Table(title="links (transport goodput, half the median round trip)")
        for column in ("link", "Mbps", "latency ms", "min rtt ms"):
            links.add_column(column, justify="left" if column == "link" else "right")
        for lk in result.links:
            links.add_row(
                f"{lk.a} - {lk.b}",
                f"{lk.bandwidth_mbps:.1f}",
                f"{lk.latency_ms:.3f}",
                f"{lk.rtt_min_ms:.3f}",
            )
        console.print(devices)
        console.print(links)
        console.print(f"wrote {cluster_path} and {profile_path}")
        console.print(f"next: edgesplit plan -p {profile_path} -c {cluster_path} -o plan.json")
        if generation:
            with console.status("timing decode and prefill on every device…"):
                _, generation_path = api_testbed.survey_generation_profile(
                    address, model, result.cluster, out, token_file=token
                )
            console.print(
                f"wrote {generation_path}; next: edgesplit generate plan --profile "
                f"{generation_path} -c {cluster_path} -o generation_plan.json"
            )

    app.add_typer(group, name="cluster")
