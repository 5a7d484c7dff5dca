"""Command-line hygiene: EDGESPLIT_LOG in any case, `--debug` in the help, bad counts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgesplit.cli.main import _register, app

_register()
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def _edgesplit(*args: str, log: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgesplit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "EDGESPLIT_LOG": log},
    )


@pytest.mark.parametrize(("log", "warns"), [("info", False), ("verbose", True)])
def test_edgesplit_log_any_case_and_unknown_names(log: str, warns: bool) -> None:
    result = _edgesplit("--help", log=log)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warning = f"warning: EDGESPLIT_LOG='{log}' is not a level"
    assert (warning in result.stderr) == warns, result.stderr
    assert result.stderr.count("\n") == (1 if warns else 0), result.stderr


def test_top_level_help_mentions_debug() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "--debug" in result.output


def test_run_refuses_zero_requests() -> None:
    result = runner.invoke(
        app, ["run", "--plan", "p.json", "-c", "c.toml", "-p", "x.json", "--requests", "0"]
    )
    assert result.exit_code == 2, result.output
    assert "--requests" in result.output
    assert "greater than or equal to 1" in result.output


def test_version_flag() -> None:
    from edgesplit import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"edgesplit {__version__}"
