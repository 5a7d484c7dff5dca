"""`edgesplit testbed up|status|down`: a heterogeneous cluster on this host (issue 18).

Every device of a cluster.toml becomes a Ray node in its own network namespace, under a CPU
quota, behind kernel-shaped links. Needs root. Goes through `edgesplit.api.testbed` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgesplit.api import testbed as api_testbed
from edgesplit.cli.common import console

__all__ = ["register"]

NameOpt = Annotated[
    str, typer.Option("--name", help="Testbed name (1-5 lower-case letters/digits).")
]


def _devices_table(status: api_testbed.TestbedStatus) -> Table:
    state = status.state
    table = Table(title=f"testbed '{state.name}' ({state.phase}) — Ray at {state.address}")
    for column in ("device", "namespace", "ip", "cpu quota", "processes"):
        table.add_column(column, justify="left" if column in ("device", "namespace") else "right")
    for device in status.devices:
        quota = "-" if device.cpu_quota is None else f"{device.cpu_quota:g} core"
        table.add_row(device.name, device.namespace, device.ip, quota, str(device.num_processes))
    return table


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help=(
            "A heterogeneous cluster on this host (root): each device of cluster.toml a Ray node "
            "in its own network namespace, CPU quota from `cpu_quota`, links shaped with tc.\n\n"
            "  edgesplit testbed up examples/testbed.toml\n"
            "  edgesplit testbed status --json\n"
            "  edgesplit testbed down"
        ),
        no_args_is_help=True,
    )

    @group.command("up")
    def up(
        cluster: Annotated[Path, typer.Argument(help="cluster.toml (devices may set cpu_quota).")],
        name: NameOpt = "tb",
        subnet: Annotated[
            str | None, typer.Option(help="Private /24 for the testbed (default: from the name).")
        ] = None,
        timeout: Annotated[float, typer.Option(help="Seconds for the nodes to join.")] = 300.0,
        cpu_shares: Annotated[
            int,
            typer.Option(
                help="CFS weight of the testbed vs the host's other processes (1024 each); "
                "raise it on a busy host so every device gets its full quota."
            ),
        ] = 1024,
        cfs_period_ms: Annotated[
            float, typer.Option(help="CFS period of the quotas (shorter = smoother throttling).")
        ] = 100.0,
    ) -> None:
        """Create namespaces, links, cgroups and one Ray node per device; print the address."""
        state = api_testbed.start_testbed(
            cluster,
            name=name,
            subnet=subnet,
            timeout_s=timeout,
            cpu_shares=cpu_shares,
            cfs_period_us=round(cfs_period_ms * 1000),
            progress=lambda message: console.print(f"[dim]{message}[/dim]"),
        )
        console.print(_devices_table(api_testbed.describe_testbed(name)))
        console.print(
            "links: rate shaped in the kernel (htb); latency: this kernel has no netem, so the "
            "runtime adds it at the sender (edgesplit run --link-shaping latency)"
        )
        console.print(f"Ray address: [bold]{state.address}[/bold]")
        console.print(f"  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={state.token_path}")
        console.print(f"  edgesplit cluster survey --address {state.address} -m vit-base -o survey")
        console.print(f"  edgesplit testbed down --name {name}")

    @group.command("status")
    def status(
        cluster: Annotated[
            Path | None, typer.Argument(help="Ignored; the testbed is found by --name.")
        ] = None,
        name: NameOpt = "tb",
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Address, devices (namespace, ip, cpu quota, live processes) and shaped links."""
        info = api_testbed.describe_testbed(name)
        if as_json:
            typer.echo(json.dumps(info.as_json(), indent=2, sort_keys=True))
            return
        console.print(_devices_table(info))

    @group.command("down")
    def down(
        cluster: Annotated[
            Path | None, typer.Argument(help="Ignored; the testbed is found by --name.")
        ] = None,
        name: NameOpt = "tb",
    ) -> None:
        """Kill every node process and remove namespaces, links, cgroups and state (also after
        a crash of `up`)."""
        removed = api_testbed.stop_testbed(name)
        if not removed:
            console.print(f"nothing of testbed '{name}' was left")
        for item in removed:
            console.print(f"removed {item}")

    app.add_typer(group, name="testbed")
