"""Multi-machine clusters: the `ray start` command lines and the status of a running cluster.

Wraps runtime/cluster.py (the one Ray bootstrap) for the CLI's `edgesplit cluster` group.
"""

from __future__ import annotations

from edgesplit.core.schema import FrozenModel
from edgesplit.runtime.cluster import (
    cluster_down_command,
    cluster_up_command,
    ray_status,
    run_ray_command,
)

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


def cluster_status(address: str | None) -> list[NodeStatus]:
    """Nodes of the cluster at `address` (or this machine's) with their device resources."""
    return [NodeStatus.model_validate(node) for node in ray_status(address)["nodes"]]
