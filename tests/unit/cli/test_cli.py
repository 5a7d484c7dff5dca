"""The CLI end to end in-process: plan, show, compare, simulate, errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
PIPEEDGE = "pipeedge:google/vit-large-patch16-224"


def edgesplit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgesplit.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "EDGESPLIT_LOG": "WARNING"},
    )


def test_plan_show_compare_simulate(tmp_path: Path) -> None:
    plan_path = tmp_path / "plan.json"
    result = edgesplit(
        "plan", "-p", PIPEEDGE, "-c", str(EXAMPLES / "pipeedge-4+4.toml"), "-o", str(plan_path)
    )
    assert result.returncode == 0, result.stderr
    assert "5.0428" in result.stdout
    plan = json.loads(plan_path.read_text())
    assert plan["kind"] == "edgesplit.plan"
    assert plan["predicted"]["optimal"] is True

    shown = edgesplit("plan", "show", str(plan_path))
    assert shown.returncode == 0
    assert "rcc" in shown.stdout

    compared = edgesplit(
        "plan", "compare", "-p", PIPEEDGE, "-c", str(EXAMPLES / "pipeedge-8+8.toml")
    )
    assert compared.returncode == 0
    for name in ("optimal", "even", "memory", "pipedream"):
        assert name in compared.stdout

    png = tmp_path / "gantt.png"
    simulated = edgesplit(
        "simulate",
        "--plan",
        str(plan_path),
        "-p",
        PIPEEDGE,
        "-c",
        str(EXAMPLES / "pipeedge-4+4.toml"),
        "--plot",
        str(png),
        "--microbatches",
        "50",
    )
    assert simulated.returncode == 0, simulated.stderr
    assert png.stat().st_size > 10_000
    # the headline is whole lines, not squeezed into the table's title
    assert "(ratio 1.0000)\nlatency p50" in simulated.stdout


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["plan", "-p", "missing.json", "-c", "x.toml"], 2, "not found"),
        (["plan", "-p", PIPEEDGE, "-c", "nope.toml"], 2, "cluster file not found"),
        (["plan", "-p", PIPEEDGE, "-c", "EXAMPLE", "--planner", "magic"], 2, "unknown planner"),
        (["plan", "-p", PIPEEDGE, "-c", "EXAMPLE", "--objective", "speed"], 2, "throughput"),
    ],
)
def test_bad_input_gives_clear_errors(args: list[str], code: int, needle: str) -> None:
    args = [str(EXAMPLES / "pipeedge-4+4.toml") if a == "EXAMPLE" else a for a in args]
    result = edgesplit(*args)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert needle in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_infeasible_cluster_exit_code(tmp_path: Path) -> None:
    cluster = tmp_path / "tiny.toml"
    cluster.write_text(
        'source = "mb0"\n[[devices]]\nname = "mb0"\nkind = "Minnowboard-E3845"\nmemory_mb = 300\n'
    )
    result = edgesplit("plan", "-p", PIPEEDGE, "-c", str(cluster))
    assert result.returncode == 3
    assert "MB short" in result.stderr


def test_help_teaches() -> None:
    result = edgesplit("plan", "--help")
    assert result.returncode == 0
    assert "edgesplit plan show" in result.stdout
