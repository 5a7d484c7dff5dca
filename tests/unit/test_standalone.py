"""The checkout stands alone: no product file cites the sibling `shared` folder; reads caught."""

from __future__ import annotations

import os
import subprocess

import pytest

from edgesplit.data import PIPEEDGE_DIR, PROTRAN_DIR
from tests.conftest import _OUTSIDE_READS, REPO_ROOT, _outside_repo

PRODUCT_PATHS = ["src", "tests", "benchmarks", "docs", "README.md", "Makefile", "scripts"]


def test_no_product_file_cites_the_sibling_shared_folder() -> None:
    # The relative path written out, or one built to the sibling folder from a parent path.
    pattern = r'\.\./shared|/ "shared"|/shared/data'
    found = subprocess.run(
        ["git", "grep", "-nE", pattern, "--", *PRODUCT_PATHS],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    hits = [
        line
        for line in found.stdout.splitlines()
        if "test_standalone.py" not in line and not line.startswith("tests/data/schemas/")
    ]  # old schema fixtures keep the `source` text they were written with
    assert hits == []


def test_vendored_data_has_licences() -> None:
    for folder in (PIPEEDGE_DIR, PROTRAN_DIR):
        assert (folder / "LICENSE").is_file()
        assert (
            "BSD" in (folder / "LICENSE").read_text()
            or "Redistribution" in (folder / "LICENSE").read_text()
        )
    assert (PIPEEDGE_DIR / "models.yml").is_file()
    assert len(list(PROTRAN_DIR.glob("results_*.json"))) == 7


def test_guard_records_a_read_beside_the_checkout() -> None:
    assert _outside_repo(str(REPO_ROOT.parent / "shared" / "data"))
    assert not _outside_repo(str(REPO_ROOT / "src"))
    before = len(_OUTSIDE_READS)
    with pytest.raises(FileNotFoundError):
        open(REPO_ROOT.parent / "edgesplit-standalone-probe-does-not-exist")  # noqa: SIM115
    assert len(_OUTSIDE_READS) == before + 1
    del _OUTSIDE_READS[before:]  # the probe itself must not fail the session


def test_guard_ignores_what_the_tests_make_beside_a_checkout_in_tmp() -> None:
    # A clone in /tmp has every temp file "beside" it: a folder made during the session is the
    # tests' own (testbed logs, mkdtemp), not a sibling the product could depend on.
    made = REPO_ROOT.parent / f"edgesplit-guard-probe-{os.getpid()}"
    made.mkdir()
    try:
        assert not _outside_repo(str(made / "log.txt"))
    finally:
        made.rmdir()
    assert not _outside_repo(str(REPO_ROOT.parent / "pytest-of-someone" / "x"))


def test_guard_counts_the_parent_folder_itself() -> None:
    assert _outside_repo(str(REPO_ROOT.parent))  # was an IndexError raised inside the audit hook
