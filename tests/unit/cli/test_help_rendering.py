"""Every command's help renders whole (review session 12, D4).

Help text is rich markup: `[[kinds]]` in an option's help came out as `[]`. A docstring whose
first paragraph has a hard line break shows as a broken line in its group's command listing.
Walks every registered command (hidden aliases included) through CliRunner.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from edgesplit.cli.main import _register, app

_register()
runner = CliRunner(env={"NO_COLOR": "1", "TERM": "dumb"})
# Commands whose module is not this test's owner's to fix; listed here so the lead sees them.
KNOWN_BROKEN: dict[tuple[str, ...], str] = {}


def _walk(command: typer.core.TyperCommand, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


def _command(path: tuple[str, ...]) -> typer.core.TyperCommand:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command  # type: ignore[return-value]


ALL = list(_walk(typer.main.get_command(app), ()))  # type: ignore[arg-type]
LISTED = [  # (group, command) pairs a group's --help lists
    path
    for path in ALL
    if path and not _command(path).hidden and (len(path) == 1 or not _command(path[:-1]).hidden)
]


def _flat(text: str) -> str:
    return " ".join(re.sub(r"[│┃║╭╮╰╯─]", " ", text).split())


def _help(path: tuple[str, ...], columns: int) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def _mark(path: tuple[str, ...]) -> object:
    if path in KNOWN_BROKEN:
        return pytest.param(path, marks=pytest.mark.xfail(reason=KNOWN_BROKEN[path]))
    return path


def test_the_walk_finds_the_command_tree() -> None:
    assert len(ALL) > 30
    assert ("generate", "profile") in ALL
    assert ("testbed", "down") in ALL
    assert ("generate-profile",) in ALL  # hidden aliases too


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "edgesplit")
def test_no_markup_is_eaten(path: tuple[str, ...]) -> None:
    """Every bracketed token of a parameter's help is printed as written."""
    output = _flat(_help(path, 200))
    assert "[]" not in output, output
    for param in _command(path).params:
        text = getattr(param, "help", None) or ""
        for token in re.findall(r"\[[^\s\]]*\]+", text):
            printed = token.replace("\\[", "[")
            assert printed in output, f"{' '.join(path)} {param.name}: {token!r} lost in --help"


@pytest.mark.parametrize("path", [_mark(p) for p in LISTED], ids=" ".join)
def test_group_listing_shows_the_first_paragraph_whole_on_one_line(path: tuple[str, ...]) -> None:
    command = _command(path)
    first = (command.help or "").strip().split("\n\n")[0]
    assert "\n" not in first.strip(), f"hard line break in the first paragraph: {first!r}"
    # In the group's listing (wide enough for any line): the row reads the whole paragraph.
    listing = _help(path[:-1], 400).split("Commands")[-1]
    rows = [line.strip("│ ") for line in listing.splitlines()]
    row = next((r for r in rows if re.match(rf"{re.escape(path[-1])}\s{{2,}}", r)), None)
    assert row is not None, listing
    shown = row[len(path[-1]) :].strip()
    assert " ".join(shown.split()) == " ".join(first.split()), (shown, first)
    assert not shown.endswith(("…", "...")), shown


@pytest.mark.parametrize(
    "path",
    [("generate", "profile"), ("testbed", "down"), ("testbed", "status"), ("testbed", "up")],
    ids=" ".join,
)
def test_named_in_the_review(path: tuple[str, ...]) -> None:
    """The ones the review found broken, at a usual terminal width as well."""
    output = _help(path[:-1], 100)
    assert "[]" not in _help(path, 100)
    rows = output.split("Commands")[-1].splitlines()
    at = next(i for i, line in enumerate(rows) if re.match(rf"│ {path[-1]}\s{{2,}}", line))
    # short enough for one row at 100 columns: the next row is the next command (or the end)
    assert len((_command(path).help or "").split("\n\n")[0]) < 86
    assert re.match(r"│ [a-z]", rows[at + 1]) or rows[at + 1].startswith("╰"), rows[at : at + 2]
