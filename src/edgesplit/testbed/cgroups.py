"""CPU cgroups (v1) of a testbed: one per device with a CFS quota, created and emptied from the
host side (`ip netns exec` remounts /sys, so nothing inside a namespace can do this).

Stdlib only. Children inherit their parent's cgroup, so moving a node's first process in before
it starts anything puts the whole Ray node (raylet, object store, workers) under the quota.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from edgesplit.testbed.system import CPU_CGROUP_MOUNT, TestbedCommandError

__all__ = [
    "CFS_PERIOD_US",
    "create_group",
    "empty_group",
    "group_pids",
    "join_group",
    "quota_us",
    "remove_tree",
    "set_quota",
]

CFS_PERIOD_US = 100_000  # the kernel's default period; a quota of 0.1 core = 10 ms per 100 ms


def quota_us(cpu_quota: float | None, period_us: int = CFS_PERIOD_US) -> int:
    """cfs_quota_us for a fraction of a core; -1 (unlimited) for None; at least 1 ms."""
    if cpu_quota is None:
        return -1
    return max(1000, round(cpu_quota * period_us))


def create_group(
    relative: str,
    cpu_quota: float | None,
    mount: Path = CPU_CGROUP_MOUNT,
    cpu_shares: int | None = None,
    period_us: int = CFS_PERIOD_US,
) -> Path:
    """mkdir the group (and its parent), set its period, quota and, if given, CFS weight."""
    path = mount / relative
    path.mkdir(parents=True, exist_ok=True)
    (path / "cpu.cfs_quota_us").write_text("-1")  # a period may not undercut a set quota
    (path / "cpu.cfs_period_us").write_text(str(period_us))
    (path / "cpu.cfs_quota_us").write_text(str(quota_us(cpu_quota, period_us)))
    if cpu_shares is not None:
        (path / "cpu.shares").write_text(str(cpu_shares))
    return path


def set_quota(
    relative: str,
    cpu_quota: float | None,
    mount: Path = CPU_CGROUP_MOUNT,
    period_us: int = CFS_PERIOD_US,
) -> None:
    (mount / relative / "cpu.cfs_quota_us").write_text(str(quota_us(cpu_quota, period_us)))


def join_group(relative: str, mount: Path = CPU_CGROUP_MOUNT) -> None:
    """Move the calling process into the group (call it in a child before exec)."""
    (mount / relative / "cgroup.procs").write_text(str(os.getpid()))


def group_pids(path: Path) -> list[int]:
    try:
        text = (path / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(line) for line in text.split()]


def empty_group(path: Path, grace_s: float = 3.0, timeout_s: float = 20.0) -> None:
    """SIGTERM every process of the group, SIGKILL what is left after `grace_s`, until empty.

    Processes may fork while this runs (a raylet restarting a worker), so it loops on the
    group's own list until it stays empty; raises TestbedCommandError after `timeout_s`.
    """
    start = time.monotonic()
    for pid in group_pids(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped (hung) process must run to die by TERM
    while group_pids(path):
        elapsed = time.monotonic() - start
        if elapsed > timeout_s:
            raise TestbedCommandError(
                f"cgroup {path} still has processes {group_pids(path)} after {timeout_s:g} s"
            )
        if elapsed > grace_s:
            for pid in group_pids(path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def remove_tree(root: Path) -> None:
    """Empty and rmdir `root` and every group below it (deepest first)."""
    if not root.is_dir():
        return
    groups = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for group in [*groups, root]:
        empty_group(group)
    for group in [*groups, root]:
        with contextlib.suppress(FileNotFoundError):
            group.rmdir()
