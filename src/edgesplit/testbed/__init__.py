"""A heterogeneous edge cluster on one Linux host: every device of a `cluster.toml` a real Ray
node in its own network namespace, under a CPU quota, behind kernel-shaped links (issue 18).

Needs root, iproute2 and the cgroup v1 cpu controller. Imports core and runtime; Ray only through
runtime/cluster.py and the `ray` command. `survey.py` + `survey_probe.py` measure a running
cluster (this one or real boards) in place: units through models/profile on a real `StageWorker`,
links with the runtime's transport. See docs/testbed.md.
"""

from __future__ import annotations

from edgesplit.testbed.layout import LinkClass, NodeLayout, TestbedLayout, plan_layout
from edgesplit.testbed.lifecycle import (
    DeviceStatus,
    TestbedStatus,
    down,
    ray_env,
    restart_node,
    status,
    up,
)
from edgesplit.testbed.state import TestbedDevice, TestbedLink, TestbedState, load_state

__all__ = [
    "DeviceStatus",
    "LinkClass",
    "NodeLayout",
    "TestbedDevice",
    "TestbedLayout",
    "TestbedLink",
    "TestbedState",
    "TestbedStatus",
    "down",
    "load_state",
    "plan_layout",
    "ray_env",
    "restart_node",
    "status",
    "up",
]
