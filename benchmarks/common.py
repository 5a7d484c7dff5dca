"""Shared benchmark plumbing: environment report, result writing. Not part of the package."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def environment() -> dict[str, Any]:
    """What `edgesplit env` reports: machine, load, versions, commit."""
    versions = {"python": sys.version.split()[0]}
    for name in ("numpy", "torch", "transformers", "ray", "pydantic"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return {
        "git_sha": git_sha(),
        "cpu": _cpu_model(),
        "num_cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "platform": platform.platform(),
        "versions": versions,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_result(name: str, data: dict[str, Any], command: str) -> Path:
    """benchmarks/results/<name>.json with environment, command and a scenario hash."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "kind": "edgesplit.benchmark_result",
        "schema_version": 1,
        "benchmark": name,
        "command": command,
        "environment": environment(),
        **data,
    }
    scenario = json.dumps(data.get("scenarios", data.get("method", "")), sort_keys=True)
    payload["scenario_hash"] = hashlib.sha256(scenario.encode()).hexdigest()[:12]
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")
    return path
