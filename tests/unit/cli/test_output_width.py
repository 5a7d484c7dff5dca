"""Tables keep their cells off a terminal (review session 12, F11): rich falls back to 80
columns in a pipe, `| tee` or a CI log and cut device names to `phon…`; the shared console
takes at least `PIPE_WIDTH` there, and $COLUMNS (or a terminal's own width) still wins."""

from __future__ import annotations

import io

import pytest
from rich.table import Table

from edgesplit.cli.common import PIPE_WIDTH, console


def _wide_table() -> Table:
    table = Table(title="plan")
    for column in ("stage", "device", "units", "dtype", "link out", "compute s", "memory MB"):
        table.add_column(column)
    table.add_row("0", "phone-pixel7-a", "[0, 12)", "bfloat16", "int8-token", "0.0123", "512.0")
    table.add_row("1", "jetson-orin-nano", "[12, 24)", "float32", "float16", "0.0456", "1024.0")
    return table  # about 100 columns wide


@pytest.fixture
def off_terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The console writing to a pipe-like file, nothing in $COLUMNS, no terminal on any fd."""
    out = io.StringIO()
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(console, "_file", out)  # restored to None: sys.stdout at print time
    monkeypatch.setattr("os.get_terminal_size", lambda fd=0: (_ for _ in ()).throw(OSError()))
    return out


def test_a_pipe_gets_wide_tables(off_terminal: io.StringIO) -> None:
    assert console.width == PIPE_WIDTH
    console.print(_wide_table())
    text = off_terminal.getvalue()
    assert "…" not in text, text
    assert "jetson-orin-nano" in text
    assert "int8-token" in text


def test_columns_wins(off_terminal: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    assert console.width == 60
    monkeypatch.setenv("COLUMNS", "300")
    assert console.width == 300


def test_a_terminal_keeps_its_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(console, "_force_terminal", True)
    monkeypatch.setattr("os.get_terminal_size", lambda fd=0: (72, 20))
    assert console.width == 72


def test_an_explicit_width_is_kept(
    off_terminal: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "_width", None)  # restored as constructed
    monkeypatch.setattr(console, "_height", None)
    console.size = (90, 20)
    assert console.width == 90
