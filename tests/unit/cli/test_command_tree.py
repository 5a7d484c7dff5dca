"""The command tree reads as one tool: workflow order, one group per capability, old spellings."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from edgesplit.cli import main
from edgesplit.cli.groups import WORKFLOW_ORDER


@pytest.fixture(scope="module")
def runner_app():  # type: ignore[no-untyped-def]
    main._register()
    return main.app


def _commands(output: str) -> list[str]:
    """Command names in the order `--help` lists them (rich box rows: '│ name  help')."""
    section = output.split("Commands")[1]
    return re.findall(r"^│ ([a-z][a-z-]*)\s{2,}", section, flags=re.MULTILINE)


def test_help_lists_commands_in_workflow_order(runner_app) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(runner_app, ["--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    listed = _commands(result.output)
    assert listed[:5] == ["profile", "profile-merge", "plan", "simulate", "run"]
    known = [name for name in listed if name in WORKFLOW_ORDER]
    assert known == sorted(known, key=WORKFLOW_ORDER.index)
    for hidden in ("generate-profile", "generate-plan", "generate-serve"):
        assert hidden not in listed
    assert {"generate", "robust", "offload", "cosearch", "cluster"} <= set(listed)


def test_generation_is_one_group(runner_app) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(runner_app, ["generate", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert _commands(result.output) == ["run", "profile", "plan", "serve"]


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--model", "no-such-model", "--devices", "a", "--prompt", "hi"],
        ["generate", "run", "--model", "no-such-model", "--devices", "a", "--prompt", "hi"],
    ],
)
def test_generate_without_subcommand_is_run(runner_app, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(runner_app, argv)
    # Reaches `generate run`'s model lookup (a config error), not a usage error about argv.
    assert isinstance(result.exception, Exception)
    assert "unknown model 'no-such-model'" in str(result.exception)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("generate-profile", ["generate", "profile"]),
        ("generate-plan", ["generate", "plan"]),
        ("generate-serve", ["generate", "serve"]),
    ],
)
def test_old_spellings_still_work(runner_app, old: str, new: list[str]) -> None:  # type: ignore[no-untyped-def]
    old_help = CliRunner().invoke(runner_app, [old, "--help"], env={"COLUMNS": "120"})
    new_help = CliRunner().invoke(runner_app, [*new, "--help"], env={"COLUMNS": "120"})
    assert old_help.exit_code == new_help.exit_code == 0
    options = re.compile(r"--[a-z][a-z-]+")
    assert set(options.findall(old_help.output)) == set(options.findall(new_help.output))


def test_registering_commands_loads_no_extra() -> None:
    """`edgesplit --help` works on a board without the serve extra, without starting Ray, and
    stays fast: no command module loads torch or transformers up front."""
    import subprocess
    import sys

    probe = (
        "import sys; from edgesplit.cli import main; main._register(); "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'ray', 'matplotlib', 'torch', "
        "'transformers') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
