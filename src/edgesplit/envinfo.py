"""What `edgesplit env` reports and every benchmark result embeds: machine, load, versions, commit.

Stdlib only; versions are read from installed package metadata, nothing heavy is imported.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["environment", "git_sha"]

PACKAGES = ("edgesplit", "torch", "transformers", "ray", "numpy", "pydantic", "fastapi", "optuna")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _source_checkout() -> Path | None:
    """The git checkout this package runs from (an editable install), if it is one."""
    root = Path(__file__).resolve().parent.parent.parent  # <root>/src/edgesplit/envinfo.py
    return root if (root / ".git").exists() else None


def git_sha(cwd: Path | None = None) -> str:
    """Short commit of the checkout at `cwd` (default: the one this package runs from, else the
    working directory's) + "-dirty" with uncommitted tracked changes."""
    cwd = cwd or _source_checkout()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (sha or "unknown") + ("-dirty" if dirty else "")


def environment(cwd: Path | None = None) -> dict[str, Any]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "git_sha": git_sha(cwd),
        "cpu": _cpu_model(),
        "num_cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "versions": versions,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
