"""Text corpora for the small language models trained here: the KJV Bible, byte-level.

Owns reading the King James text from Debian's `bible-kjv-text` (through its `bible` reader),
the cached plain-text copy under `$EDGESPLIT_HOME/data/`, the fixed train/validation split and
the byte tokenizer (ids 0..255 = UTF-8 bytes). No torch here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from edgesplit.errors import ConfigError

__all__ = ["decode_bytes", "encode_bytes", "kjv_available", "kjv_text", "split_text"]

_ALL_VERSES = "Gen1:1-Rev22:21"


def kjv_available() -> bool:
    return shutil.which("bible") is not None and Path("/usr/lib/bible.data").is_file()


def _cache_file() -> Path:
    home = os.environ.get("EDGESPLIT_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "edgesplit"
    return base / "data" / "kjv.txt"


def kjv_text() -> str:
    """The whole KJV as plain text, one verse per line ("In the beginning God created ...").

    Raises:
        ConfigError: Debian `bible-kjv-text` (and its `bible` reader) is not installed.
    """
    cache = _cache_file()
    if cache.is_file():
        return cache.read_text()
    if not kjv_available():
        raise ConfigError(
            "KJV text not found: install Debian `bible-kjv` + `bible-kjv-text` (`make data`)"
        )
    raw = subprocess.run(
        ["bible", "-l100000", _ALL_VERSES], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    lines = []
    for line in raw.splitlines():
        line = line.strip()
        # Chapter headings ("Genesis 1") and blank lines carry no verse text.
        if not line or re.fullmatch(r"[1-3]? ?[A-Za-z ]+ \d+", line):
            continue
        lines.append(re.sub(r"^\d+\s+", "", line))  # drop the verse number
    text = "\n".join(lines) + "\n"
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(cache)
    return text


def split_text(text: str, validation_fraction: float = 0.05) -> tuple[str, str]:
    """(train, validation): the last `validation_fraction` of the text is held out."""
    cut = int(len(text) * (1 - validation_fraction))
    return text[:cut], text[cut:]


def encode_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode_bytes(ids: list[int]) -> str:
    return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
