"""Multi-machine clusters: the `ray start` command lines and the status of a running cluster.

Wraps runtime/cluster.py (the one Ray bootstrap) for the CLI's `edgesplit cluster` group.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from edgesplit.core.schema import FrozenModel
from edgesplit.runtime.cluster import cluster_down_command as _down
from edgesplit.runtime.cluster import cluster_up_command as _up
from edgesplit.runtime.cluster import ray_status
from edgesplit.runtime.cluster import run_ray_command as _run
from edgesplit.runtime.config import RuntimeConfig

__all__ = [
    "NodeStatus",
    "cluster_down_command",
    "cluster_status",
    "cluster_up_command",
    "run_ray_command",
]


class NodeStatus(FrozenModel):
    """One Ray node: its address, whether it is alive and the device resources it carries."""

    node_id: str
    ip: str
    alive: bool
    devices: tuple[str, ...]


def cluster_up_command(
    *,
    head: bool,
    address: str | None,
    devices: Sequence[str],
    port: int = 6379,
    node_ip: str | None = None,
    config: RuntimeConfig | None = None,
) -> list[str]:
    """The `ray start` command line for a head or a device node (see docs/runtime.md)."""
    return _up(
        head=head, address=address, devices=devices, port=port, node_ip=node_ip, config=config
    )


def cluster_down_command() -> list[str]:
    """The `ray stop` command line for this machine's node."""
    return _down()


def cluster_status(address: str | None) -> list[NodeStatus]:
    """Nodes of the cluster at `address` (or this machine's) with their device resources."""
    return [NodeStatus.model_validate(node) for node in ray_status(address)["nodes"]]


def run_ray_command(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a `ray` command line with token auth on and usage stats off."""
    return _run(command)
