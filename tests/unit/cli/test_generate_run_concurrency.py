"""`generate run --plan gplan.json` decodes as many sequences at once as the plan was made for
(review session 12, F15: a plan for 8 ran 4 at a time, 55 vs 64 tokens/s)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from edgesplit.api import generation as gen
from edgesplit.cli.main import _register, app
from edgesplit.core.schema import write_json_file
from tests.unit.cli.test_generate_output import _profile

_register()
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def _flat(text: str) -> str:
    return " ".join(re.sub(r"[│┃║|]", " ", text).split())


@pytest.fixture
def gplan(tmp_path: Path) -> Path:
    """`generate plan --concurrency 8` of a toy profile on two devices (a real planner run)."""
    write_json_file(_profile(), tmp_path / "gen.json")
    (tmp_path / "c.toml").write_text(
        'source = "d0"\n'
        + "".join(f'[[devices]]\nname = "d{i}"\nkind = "fast"\nmemory_mb = 100\n' for i in (0, 1))
    )
    out = tmp_path / "gplan.json"
    result = runner.invoke(
        app,
        ["generate", "plan", "--profile", str(tmp_path / "gen.json"), "-c",
         str(tmp_path / "c.toml"), "--concurrency", "8", "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["plan"]["planner"]["options"]["num_sequences"] == 8
    return out


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """What `generate run` hands the pipeline as max_concurrent (nothing is built or run)."""
    seen: list[int] = []

    def fake_generate(*_: object, max_concurrent: int, **__: object) -> object:
        seen.append(max_concurrent)
        return SimpleNamespace(
            sequences=[], new_tokens=0, tokens_per_s=0.0, time_per_token_s=0.0, failures=[]
        )

    monkeypatch.setattr(gen, "generate", fake_generate)
    monkeypatch.setattr(gen, "tokenizer_for", lambda _: None)
    monkeypatch.setattr(gen, "check_plan_model", lambda *_: None)  # the toy plan's model
    return seen


def test_a_generation_plan_sets_the_default(gplan: Path, asked: list[int]) -> None:
    result = runner.invoke(app, ["generate", "run", "--plan", str(gplan), "--prompt", "hi"])
    assert result.exit_code == 0, result.output
    assert asked == [8]
    assert "sequences at once (at most) 8 (the plan's)" in _flat(result.output)


def test_the_option_still_wins(gplan: Path, asked: list[int]) -> None:
    result = runner.invoke(
        app, ["generate", "run", "--plan", str(gplan), "--prompt", "hi", "--max-concurrent", "2"]
    )
    assert result.exit_code == 0, result.output
    assert asked == [2]
    assert "2 (--max-concurrent)" in _flat(result.output)


def test_without_a_plan_it_is_four(asked: list[int]) -> None:
    result = runner.invoke(
        app, ["generate", "run", "--model", "llama-tiny", "--devices", "a", "--prompt", "hi"]
    )
    assert result.exit_code == 0, result.output
    assert asked == [4]
    assert "4 (default)" in _flat(result.output)
