"""`edgesplit offload` command group: help texts and argument checks (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edgesplit.cli.offload import _load_image, register
from edgesplit.errors import ConfigError
from edgesplit.offload.data import _data_dir


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


def test_send_input_errors_are_config_errors(tmp_path: Path) -> None:
    """A missing file, a file that is not an image, an index past the test set: clear errors."""
    with pytest.raises(ConfigError, match="image not found: .*nope.png"):
        _load_image(tmp_path / "nope.png", None, 32)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ConfigError, match="notes.png is not an image"):
        _load_image(text, None, 32)
    if _data_dir() is None:
        pytest.skip("Fashion-MNIST absent (bash scripts/install_data.sh)")
    for index in (10_000, -1):
        with pytest.raises(ConfigError, match=r"--test-index must be 0\.\.9999"):
            _load_image(None, index, 32)
    pixels, label = _load_image(None, 9_999, 32)
    assert pixels.shape == (32, 32)
    assert label is not None
