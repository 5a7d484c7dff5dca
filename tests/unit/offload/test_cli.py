"""`edgesplit offload` command group: help texts and argument checks (no server needed)."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from edgesplit.cli.offload import register


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(_app(), ["offload", "--help"])
    assert result.exit_code == 0
    for command in ("serve", "send", "bench"):
        assert command in result.output


def test_bad_codec_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        _app(), ["offload", "send", "--codec", "gif", "--url", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 2, result.output  # a usage error, not a crash
    assert "gif" in result.output
