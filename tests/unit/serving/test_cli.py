"""`edgesplit serve` and `run --inputs` are registered and refuse incomplete arguments."""

from __future__ import annotations

from typer.testing import CliRunner

from edgesplit.cli.main import _register, app

_register()
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def test_serve_help_lists_the_options() -> None:
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in (
        "--plan",
        "--model",
        "--devices",
        "--token",
        "--max-batch-wait-ms",
        "--queue-size",
        "--fault",
    ):
        assert option in result.output


def test_serve_without_plan_or_devices_is_a_usage_error() -> None:
    result = runner.invoke(app, ["serve", "--model", "gpt2-tiny"])
    assert result.exit_code != 0
    assert "--devices" in str(result.exception) or "--devices" in result.output


def test_run_has_inputs() -> None:
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    assert "--inputs" in result.output
