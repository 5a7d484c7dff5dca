"""`edgesplit env` names the commit the package runs from, wherever it is run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from edgesplit.envinfo import git_sha

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_git_sha_is_the_checkout_s_not_the_working_directory_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    monkeypatch.chdir(tmp_path)  # outside any repository
    assert os.getcwd() == str(tmp_path)
    assert git_sha().removesuffix("-dirty") == head
    assert git_sha(tmp_path) == "unknown"
