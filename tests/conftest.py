"""Shared test setup: one torch thread, an isolated EDGESPLIT_HOME, offline HF, and a guard.

[Note: standalone checkout] A user clones this repository alone. An audit hook records every file
this test process opens in a sibling folder of the checkout; the session fails if
there was one, so nothing can quietly depend on files that are not in the repository.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs a fixed set of examples (reproducible); locally hypothesis explores new ones each run.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
_OUTSIDE_READS: list[str] = []
_SESSION_START_S = time.time()


def _outside_repo(path: str) -> bool:
    """A path beside the checkout (under its parent folder) but not inside it.

    A checkout cloned into the temp folder (/tmp/x) has every temp file "beside" it, so what the
    tests themselves make there is not counted: pytest's `pytest-of-*` folders, and top-level
    entries made since the session started (testbed logs, mkdtemp folders). Anything that was
    there before, such as a sibling `shared/`, still counts, and so does a path that does not exist.
    """
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(REPO_ROOT.parent) or resolved.is_relative_to(REPO_ROOT):
        return False
    parts = resolved.relative_to(REPO_ROOT.parent).parts
    if not parts:  # the parent folder itself
        return True
    top = REPO_ROOT.parent / parts[0]
    if top.name.startswith("pytest-of-"):
        return False
    try:
        return top.stat().st_ctime < _SESSION_START_S
    except OSError:
        return True


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and args and isinstance(args[0], str | os.PathLike):
        path = os.fsdecode(args[0])
        if os.path.isabs(path) or not path.startswith(("/proc", "/dev")):
            try:
                if _outside_repo(path):
                    _OUTSIDE_READS.append(path)
            except (OSError, ValueError):
                pass


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESPLIT_HOME", str(tmp_path_factory.getbasetemp() / "edgesplit_home"))


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _OUTSIDE_READS:
        shown = "\n  ".join(sorted(set(_OUTSIDE_READS))[:20])
        sys.stderr.write(
            "\nstandalone checkout violated: the tests opened files outside the repository:\n  "
            f"{shown}\n"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
