"""Running the host's tools (`ip`, `tc`) with timeouts, and checking the host can host a testbed.

Owns `run_tool` (every command bounded, its stderr in the error) and `check_host` (root, the
tools, the cgroup v1 cpu controller, namespaces). Stdlib only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from edgesplit.errors import ConfigError, EdgesplitError

__all__ = [
    "CPU_CGROUP_MOUNT",
    "REQUIRED_TOOLS",
    "TestbedCommandError",
    "check_host",
    "run_tool",
]

CPU_CGROUP_MOUNT = Path("/sys/fs/cgroup/cpu")
REQUIRED_TOOLS = ("ip", "tc")
_TIMEOUT_S = 30.0


class TestbedCommandError(EdgesplitError):
    """A host command of the testbed failed (exit code 4)."""

    __test__ = False  # not a pytest test class despite the name


def run_tool(
    command: Sequence[str], *, timeout_s: float = _TIMEOUT_S, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `command`; with `check`, raise TestbedCommandError quoting its stderr on failure."""
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise TestbedCommandError(
            f"`{' '.join(command)}` did not finish within {timeout_s:g} s"
        ) from e
    except FileNotFoundError as e:
        raise ConfigError(
            f"`{command[0]}` is not installed; the testbed needs {', '.join(REQUIRED_TOOLS)} "
            "(Debian: apt-get install iproute2)"
        ) from e
    if check and done.returncode != 0:
        raise TestbedCommandError(
            f"`{' '.join(command)}` failed (exit {done.returncode}): {done.stderr.strip()}"
        )
    return done


def check_host(cgroup_mount: Path = CPU_CGROUP_MOUNT) -> None:
    """Raise ConfigError saying what is missing when this host cannot run a testbed."""
    if os.geteuid() != 0:
        raise ConfigError(
            "the testbed creates network namespaces, veth pairs, tc qdiscs and cgroups, which "
            "needs root; run it as root (e.g. `sudo -E edgesplit testbed up cluster.toml`)"
        )
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} not found on PATH; the testbed needs iproute2's `ip` and `tc` "
            "(Debian: apt-get install iproute2)"
        )
    if not (cgroup_mount / "cpu.cfs_quota_us").is_file():
        raise ConfigError(
            f"no cgroup v1 cpu controller at {cgroup_mount} (cpu.cfs_quota_us missing); the "
            "testbed puts each device's processes under a CFS quota there"
        )
