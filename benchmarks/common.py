"""Shared benchmark plumbing: environment report, result writing. Not part of the package."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from edgesplit.envinfo import environment as _environment

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"


def environment() -> dict[str, Any]:
    """The `edgesplit env` report for this checkout."""
    return _environment(ROOT)


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
