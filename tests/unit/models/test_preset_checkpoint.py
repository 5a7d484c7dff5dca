"""`smollm2-135m` by name means the real weights once `make models` built them (review: the
bare name ran a random-weight preset with a byte tokenizer, and `generate` printed noise); a
decoder without a tokenizer and a real vocabulary says its output is noise."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edgesplit.api import generation
from edgesplit.models import model_spec_from_name, smollm2
from edgesplit.models.spec import CHECKPOINT_META


def _built(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / CHECKPOINT_META).write_text(json.dumps({"family": "llama", "preset": "x"}))
    for name in ("config.json", "model.safetensors"):
        (directory / name).write_text("{}")
    return directory


def test_the_name_resolves_to_the_built_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = _built(tmp_path / "smollm2-135m")
    monkeypatch.setattr(smollm2, "smollm2_search_dirs", lambda: [built])
    spec = model_spec_from_name("smollm2-135m")
    assert spec.checkpoint == str(built)
    assert spec.family == "llama"


def test_without_a_build_the_name_is_the_random_preset_and_text_is_flagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(smollm2, "smollm2_search_dirs", lambda: [tmp_path / "nothing"])
    spec = model_spec_from_name("smollm2-135m")
    assert spec.checkpoint is None
    assert spec.preset == "smollm2-135m"
    with caplog.at_level(logging.WARNING, logger="edgesplit.api.generation"):
        generation.tokenizer_for("smollm2-135m")
    assert "output is noise" in caplog.text
    assert "make models" in caplog.text


def test_a_byte_level_preset_is_not_flagged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edgesplit.api.generation"):
        generation.tokenizer_for("gpt2-tiny")
    assert "noise" not in caplog.text
