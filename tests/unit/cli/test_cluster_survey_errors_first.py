"""`cluster survey` checks its inputs before it draws progress bars (review session 12, F13:
two bars reading `0/None` came before "unknown model 'vit-bse'")."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgesplit.cli.main import _register, app
from edgesplit.errors import ConfigError, DeviceUnavailableError

_register()
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _survey(tmp_path: Path, address: str, model: str) -> tuple[str, BaseException | None]:
    result = runner.invoke(
        app, ["cluster", "survey", "--address", address, "-m", model, "-o", str(tmp_path / "s")]
    )
    return result.output, result.exception


@pytest.mark.parametrize(
    ("address", "model", "error", "says"),
    [
        ("127.0.0.1:{port}", "vit-bse", ConfigError, "did you mean 'vit-base'"),
        ("127.0.0.1", "vit-base", ConfigError, "HEAD_IP:PORT"),
        ("127.0.0.1:{port}", "vit-base", DeviceUnavailableError, "no Ray cluster at"),
    ],
)
def test_bad_inputs_fail_before_any_bar(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    address: str,
    model: str,
    error: type[Exception],
    says: str,
) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # as `edgesplit` sets it; restored after
    output, exception = _survey(tmp_path, address.format(port=_closed_port()), model)
    assert isinstance(exception, error), (output, exception)
    assert says in str(exception)
    assert "profiling units" not in output
    assert "measuring links" not in output
    assert "None" not in output
    assert not (tmp_path / "s").exists()
