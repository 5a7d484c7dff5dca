"""`edgesplit robust plan|eval` end to end on the real digits ViT (trained into a tmp home)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgesplit.cli.main import _register, app

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_robust_plan_then_eval(tmp_path: Path) -> None:
    _register()
    runner = CliRunner()
    plan = tmp_path / "plan.json"
    problem = tmp_path / "problem.json"
    result = runner.invoke(
        app,
        [
            "robust",
            "plan",
            "-m",
            "vit-digits",
            "--devices",
            "4",
            "--memory-copies",
            "0.5",
            "-o",
            str(plan),
            "--save-problem",
            str(problem),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(plan.read_text())
    assert data["kind"] == "edgesplit.robust_plan"
    assert data["predicted"]["memory_copies"] <= 0.5 + 1e-9
    assert len(data["replicas"]) == len(data["unit_names"]) == 48
    split_expected = None
    for line in result.output.splitlines():
        if line.strip("│ ").startswith("split "):
            split_expected = float(line.split("│")[3])
    chosen_expected = data["predicted"]["expected_metric"]["0.1"]
    assert split_expected is not None
    assert chosen_expected > split_expected

    out = tmp_path / "eval.json"
    result = runner.invoke(
        app, ["robust", "eval", str(plan), "--problem", str(problem), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    measured = json.loads(out.read_text())["measured"]
    assert measured["num_sets_by_k"] == [1, 4, 6, 4]
    assert measured["exhaustive"]
    # accuracy never improves as more devices fail (mean over all sets of each size)
    means = measured["mean_by_k"]
    assert means[0] >= means[-1]
    assert 0.8 < means[0] <= 1.0
