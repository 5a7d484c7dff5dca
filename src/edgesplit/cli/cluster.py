"""`edgesplit cluster up/status/down`: the multi-machine Ray setup, one node per device.

Wraps `ray start --head` (the coordinator) and `ray start --address` (each device, carrying a
custom resource named after the device) with RAY_AUTH_MODE=token. See docs/runtime.md.
"""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from edgesplit.api import cluster as api
from edgesplit.cli.common import console

__all__ = ["register"]


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
        port: Annotated[int, typer.Option(help="Head port.")] = 6379,
        node_ip: Annotated[
            str | None, typer.Option(help="This machine's IP as the others reach it.")
        ] = None,
        dry_run: Annotated[bool, typer.Option(help="Print the ray command only.")] = False,
    ) -> None:
        """Start this machine's Ray node (token auth, tuned health checks, device resources)."""
        command = api.cluster_up_command(
            head=head, address=address, devices=device or [], port=port, node_ip=node_ip
        )
        console.print("RAY_AUTH_MODE=token " + shlex.join(command))
        if dry_run:
            return
        completed = api.run_ray_command(command)
        console.print(completed.stdout or "")
        if completed.returncode != 0:
            console.print(completed.stderr, style="red")
            raise typer.Exit(4)

    @group.command("status")
    def status(address: Annotated[str | None, typer.Option(help="HEAD_IP:PORT")] = None) -> None:
        """Nodes, their IPs and the devices they carry."""
        for node in api.cluster_status(address):
            state = "alive" if node.alive else "dead"
            devices = ", ".join(node.devices) or "-"
            console.print(f"{node.ip:<16} {state:<6} devices: {devices}")

    @group.command("down")
    def down() -> None:
        """Stop the Ray processes on this machine (`ray stop`)."""
        completed = api.run_ray_command(api.cluster_down_command())
        console.print(completed.stdout or completed.stderr)

    app.add_typer(group, name="cluster")
