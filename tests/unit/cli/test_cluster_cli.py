"""`edgesplit cluster up/down --dry-run`: the printed command is one line a shell can run as it
is (never wrapped at the terminal's width), and a node without a device is warned about."""

from __future__ import annotations

import shlex

from typer.testing import CliRunner

from edgesplit.cli.main import _register, app
from edgesplit.errors import ConfigError

_register()
narrow = CliRunner(env={"COLUMNS": "60", "NO_COLOR": "1", "TERM": "dumb"})


def test_dry_run_prints_one_unwrapped_command_line() -> None:
    result = narrow.invoke(app, ["cluster", "up", "--head", "--device", "cam0", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1, lines
    words = shlex.split(lines[0])
    assert words[0] == "RAY_AUTH_MODE=token"
    assert words[2:4] == ["start", "--num-cpus"]
    assert words[words.index("--resources") + 1] == '{"cam0": 1}'
    assert "--system-config" in words
    assert "warning" not in result.output


def test_node_without_a_device_is_warned_about_on_stderr() -> None:
    result = narrow.invoke(app, ["cluster", "up", "--head", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "carries no device" in result.stderr
    assert len(result.stdout.splitlines()) == 1


def test_head_and_address_together_are_refused() -> None:
    result = narrow.invoke(
        app, ["cluster", "up", "--head", "--address", "1.2.3.4:6379", "--device", "x", "--dry-run"]
    )
    assert isinstance(result.exception, ConfigError)  # the entry point exits 2 on it
    assert "give one of them" in str(result.exception)
