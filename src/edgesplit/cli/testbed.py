"""`edgesplit testbed up|status|down`: a heterogeneous cluster on this host (issue 18).

Every device of a cluster.toml becomes a Ray node in its own network namespace, under a CPU
quota, behind kernel-shaped links. Needs root. Goes through `edgesplit.api.testbed` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgesplit.api import testbed as api_testbed
from edgesplit.cli.common import console
from edgesplit.errors import ConfigError

__all__ = ["register"]

NameOpt = Annotated[
    str, typer.Option("--name", help="Testbed name (1-5 lower-case letters/digits).")
]
# `status` and `down` used to take a cluster file and ignore it; one passed is an error now.
NoClusterArg = Annotated[str | None, typer.Argument(hidden=True, show_default=False)]


def _no_cluster_file(command: str, given: str | None) -> None:
    if given is not None:
        raise ConfigError(
            f"`testbed {command}` takes no cluster file (got {given!r}): a testbed is found by "
            "its --name (default 'tb'); only `testbed up` reads cluster.toml"
        )


def _devices_table(status: api_testbed.TestbedStatus) -> Table:
    state = status.state
    table = Table(title=f"testbed '{state.name}' ({state.phase}) — Ray at {state.address}")
    for column in ("device", "namespace", "ip", "cpu quota", "processes"):
        table.add_column(column, justify="left" if column in ("device", "namespace") else "right")
    for device in status.devices:
        quota = "-" if device.cpu_quota is None else f"{device.cpu_quota:g} core"
        table.add_row(device.name, device.namespace, device.ip, quota, str(device.num_processes))
    return table


def _print_preview(preview: api_testbed.TestbedPreview) -> None:
    """`testbed up --dry-run`: everything `up` would create, by name."""
    layout, period_ms = preview.layout, preview.cfs_period_us / 1000
    console.print(
        f"dry run: nothing created. `edgesplit testbed up` would create testbed '{layout.name}':"
    )
    console.print(
        f"  bridge {layout.bridge} on subnet {layout.subnet}, address {layout.head_ip} "
        "(the Ray head and the driver)"
    )
    root = preview.cgroup_mount / layout.cgroup_root
    console.print(
        f"  cpu cgroup {root} (cpu.shares {preview.cpu_shares}) with the head's and one per device;"
    )
    console.print(
        f"  quotas per {period_ms:g} ms CFS period, set once every node has joined (cfs_quota_us)"
    )
    table = Table(title=f"{len(layout.nodes)} device node(s), one Ray node each")
    columns = ("device", "namespace", "veth", "ip", "cgroup", "cpu quota", "memory MB declared")
    for column in columns:
        numeric = column in ("cpu quota", "memory MB declared")
        table.add_column(column, justify="right" if numeric else "left")
    for node in layout.nodes:
        quota = "none"
        if node.cpu_quota is not None:
            quota = f"{node.cpu_quota:g} core ({preview.quota_us(node.cpu_quota)})"
        table.add_row(
            node.device,
            node.namespace,
            node.host_veth,
            node.ip,
            node.cgroup.removeprefix(f"{layout.cgroup_root}/"),
            quota,
            f"{node.memory_mb:g}",
        )
    console.print(table)
    unlimited = [n.device for n in layout.nodes if n.cpu_quota is None]
    if len(unlimited) == len(layout.nodes):
        console.print(
            "[yellow]  no device sets cpu_quota: every node runs at this host's full speed, so "
            f"the nodes are not heterogeneous (kinds and {escape('[[kinds]]')} slowdowns are not "
            "emulated; set cpu_quota per device, as examples/testbed.toml does)[/]",
            highlight=False,
        )
    elif unlimited:
        console.print(
            f"  no cpu_quota on {', '.join(unlimited)}: they run at this host's full speed",
            highlight=False,
        )
    console.print(
        "  memory is not enforced (no memory cgroup): each node declares its memory_mb "
        "(EDGESPLIT_DEVICE_MEMORY_MB) so `cluster survey` records it and plans fit within it",
        highlight=False,
    )
    links = Table(title=f"{len(layout.classes)} shaped direction(s) (htb on each sender)")
    for column in ("from", "to", "to ip", "Mbit/s", "latency ms (runtime)"):
        links.add_column(column, justify="left" if column in ("from", "to", "to ip") else "right")
    for link in layout.classes:
        links.add_row(
            link.src,
            link.dst,
            link.dst_ip,
            f"{link.rate_bytes_per_s * 8 / 1e6:g}",
            f"{link.latency_s * 1e3:g}",
        )
    console.print(links)
    console.print(f"  state {preview.state_file}, Ray temp dir {layout.ray_temp_dir}")
    if preview.already_up:
        console.print(
            f"[yellow]testbed '{layout.name}' is already up or left over ({preview.state_file}); "
            f"`edgesplit testbed down --name {layout.name}` first[/]"
        )
    if preview.host_problem is not None:
        console.print(f"[yellow]this host cannot run it yet: {preview.host_problem}[/]")


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help=(
            "A heterogeneous cluster on this host (root): each device of cluster.toml a Ray node "
            "in its own network namespace, CPU quota from `cpu_quota`, links shaped with tc.\n\n"
            "  edgesplit testbed up examples/testbed.toml --dry-run\n"
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
            str | None,
            typer.Option(
                help="Private IPv4 /24 (or smaller) for the testbed, e.g. 10.213.40.0/24 "
                "(default: a /24 under 10.213.0.0/16 picked from the name).",
            ),
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
            float,
            typer.Option(
                min=1.0,
                max=1000.0,
                help="CFS period of the quotas (shorter = smoother throttling).",
            ),
        ] = 100.0,
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run",
                help="Print the namespaces, bridge, subnet, cgroup quotas and shaped links it "
                "would create; create nothing (no root needed).",
            ),
        ] = False,
    ) -> None:
        """Create namespaces, links, cgroups and one Ray node per device; print the address.

        Example (look first, then create; needs root):
          edgesplit testbed up examples/testbed.toml --dry-run
          sudo -E edgesplit testbed up examples/testbed.toml
        """
        if dry_run:
            _print_preview(
                api_testbed.preview_testbed(
                    cluster,
                    name=name,
                    subnet=subnet,
                    cpu_shares=cpu_shares,
                    cfs_period_us=round(cfs_period_ms * 1000),
                )
            )
            return
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
        cluster: NoClusterArg = None,
        name: NameOpt = "tb",
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Address, devices (namespace, ip, cpu quota, live processes) and shaped links."""
        _no_cluster_file("status", cluster)
        info = api_testbed.describe_testbed(name)
        if as_json:
            typer.echo(json.dumps(info.as_json(), indent=2, sort_keys=True))
            return
        console.print(_devices_table(info))

    @group.command("down")
    def down(
        cluster: NoClusterArg = None,
        name: NameOpt = "tb",
    ) -> None:
        """Kill every node process; remove namespaces, links, cgroups and state.

        Also cleans up after a crash of `up` (found by the name's prefix, without the state).
        """
        _no_cluster_file("down", cluster)
        removed = api_testbed.stop_testbed(name)
        if not removed:
            console.print(f"nothing of testbed '{name}' was left")
        for item in removed:
            console.print(f"removed {item}")

    app.add_typer(group, name="testbed")
