"""`edgesplit quality` input checks (review B4, F10): the SmolLM2 checkpoint is found from any
working directory, a wrong --checkpoint or --boundary is a ConfigError that says what to give.
Nothing here loads a model's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgesplit.cli.main import _register, app
from edgesplit.errors import ConfigError
from edgesplit.models import smollm2
from edgesplit.models.spec import model_spec_from_name
from edgesplit.models.units import Activation
from edgesplit.profile.quality import QualityTask, load_quality_task, measure_quality

_register()
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
REPO = Path(__file__).resolve().parents[3]


def _fake_checkpoint(directory: Path, model_type: str = "llama", tokenizer: bool = True) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": model_type}))
    (directory / "model.safetensors").write_bytes(b"")
    if tokenizer:
        (directory / "tokenizer.json").write_text("{}")
    return directory


def test_make_models_output_is_searched_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert smollm2._source_tree_dir() == REPO / "checkpoints" / "smollm2-135m"
    built = _fake_checkpoint(tmp_path / "repo" / "checkpoints" / "smollm2-135m")
    monkeypatch.setattr(smollm2, "_source_tree_dir", lambda: built)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert smollm2.find_smollm2_checkpoint() == built
    assert built in smollm2.smollm2_search_dirs()


def test_not_found_names_every_directory_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smollm2, "_source_tree_dir", lambda: tmp_path / "tree" / "smollm2-135m")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as raised:
        load_quality_task("smollm2", num_samples=1)
    message = str(raised.value)
    for directory in smollm2.smollm2_search_dirs():
        assert str(directory.resolve()) in message
    assert "make models" in message
    assert "--checkpoint" in message


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p / "nope", "does not exist"),
        (lambda p: (p / "README.md", (p / "README.md").write_text("x"))[0], "is a file"),
        (lambda p: (p / "empty", (p / "empty").mkdir())[0], "no config.json, model.safetensors"),
        (lambda p: _fake_checkpoint(p / "gpt2-kjv", "gpt2"), "is a gpt2 checkpoint, not a SmolLM2"),
        (lambda p: _fake_checkpoint(p / "notok", tokenizer=False), "has no tokenizer.json"),
    ],
    ids=["missing", "file", "empty-dir", "gpt2", "no-tokenizer"],
)
def test_a_wrong_checkpoint_is_a_config_error(tmp_path: Path, make: object, needle: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    result = runner.invoke(
        app,
        ["quality", "-t", "smollm2", "-o", str(tmp_path / "q.json"), "--checkpoint", str(path)],
    )
    assert isinstance(result.exception, ConfigError), result.output
    assert needle in str(result.exception)
    assert "SmolLM2 checkpoint directory" in str(result.exception)


def test_boundary_outside_the_units_says_the_range() -> None:
    spec = model_spec_from_name("llama-tiny")  # 10 units

    def summarize(out: Activation, _: int) -> torch.Tensor:
        return out["logits"]

    task = QualityTask("tiny", spec, "accuracy", "none", (), 0, 10, summarize, lambda a, b: 0.0)
    for bad in (0, 10):
        with pytest.raises(ConfigError, match=r"--boundary must be 1\.\.9 for tiny \(a cut after "):
            measure_quality(task, boundaries=[bad])
