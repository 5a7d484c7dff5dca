"""This host as profiles and benchmarks name it: a device-kind string and a short report.

Stdlib only (versions come from package metadata; torch is not imported here).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "host_device_kind", "host_report"]


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def host_device_kind(cpu: str | None = None, num_cpus: int | None = None) -> str:
    """e.g. "host-amd-epyc-2c": the CPU model shortened to a slug, and the usable core count."""
    name = (cpu if cpu is not None else cpu_model()).lower()
    name = re.sub(r"\(r\)|\(tm\)|@.*$", "", name)
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    slug = re.sub(r"-(processor|cpu|with|radeon)(-.*)?$", "", slug)[:32].strip("-")
    return f"host-{slug or 'cpu'}-{num_cpus if num_cpus is not None else _usable_cpus()}c"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def host_report() -> dict[str, Any]:
    """What a measurement depends on: CPU, cores, memory, versions, thread settings."""
    memory_bytes = None
    with contextlib.suppress(ValueError, OSError, AttributeError):  # non-POSIX: unknown
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "device_kind": host_device_kind(),
        "cpu": cpu_model(),
        "num_cpus": _usable_cpus(),
        "memory_bytes": memory_bytes,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
    }
