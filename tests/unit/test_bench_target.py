"""`make bench` runs every benchmark script (a file of benchmarks/ with a `__main__` block)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench_recipe() -> str:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^bench:.*?\n((?:\t.*\n)+)", makefile, flags=re.MULTILINE)
    assert match, "the Makefile has no bench target"
    return match.group(1)


def test_make_bench_runs_every_benchmark() -> None:
    scripts = sorted(
        p.name for p in (ROOT / "benchmarks").glob("*.py") if "__main__" in p.read_text()
    )
    listed = sorted(set(re.findall(r"benchmarks/([a-z_0-9]+\.py)", _bench_recipe())))
    assert listed == scripts
