"""`edgesplit cosearch profile -> fit -> search -> refine` end to end, in subprocesses.

Uses a synthetic ProTran folder (same file format, FLOP-proportional latencies) so that the test
does not depend on the bundled ProTran data; profiles 6 small configs here and trains tiny
proxies on digits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _write_protran(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for name in ("results_cpu_rpi_b1_r1.json", "results_gpu_a100_b128_r3.json"):
        entries = {}
        for index in range(16):
            layers = int(rng.choice([2, 4, 6]))
            hidden = int(rng.choice([128, 256, 512]))
            heads = int(rng.choice([2, 4]))
            ffn = int(rng.choice([512, 1024]))
            work = layers * hidden * (4 * hidden + 2 * ffn)
            latency = work * 1e-9 * float(rng.lognormal(0, 0.03))
            entries[f"h{index}"] = {
                "model_dict": {
                    "l": layers,
                    "o": [[f"sa_sdp_{hidden // heads}"] * heads] * layers,
                    "h": [hidden] * layers,
                    "f": [[ffn]] * layers,
                },
                "model_type": "synthetic",
                "embedding": "[]",
                "performance": {
                    "latency": latency,
                    "energy": 3 * latency,
                    "peak_power": 4 + hidden / 512,
                },
            }
        (folder / name).write_text(json.dumps(entries))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "edgesplit.cli.main", "cosearch", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_profile_fit_search_refine(tmp_path: Path) -> None:
    protran = tmp_path / "protran"
    _write_protran(protran)
    work = tmp_path / "work"
    _cli(
        "profile",
        "-o",
        str(work / "host.jsonl"),
        "--count",
        "8",
        "--seq-len",
        "16",
        "--repeats",
        "1",
        cwd=tmp_path,
    )
    assert len((work / "host.jsonl").read_text().splitlines()) == 8
    fitted = _cli(
        "fit",
        "-o",
        str(work / "predictors.json"),
        "--protran",
        str(protran),
        "--host-results",
        str(work / "host.jsonl"),
        "--folds",
        "3",
        cwd=tmp_path,
    )
    assert "rpi-cpu" in fitted.stdout
    assert "host-cpu" in fitted.stdout
    _cli(
        "search",
        "-p",
        str(work / "predictors.json"),
        "-o",
        str(work / "search.json"),
        "--budget",
        "3",
        "--epochs",
        "1",
        "--method",
        "tpe",
        "--device",
        "rpi-cpu",
        "--device",
        "host-cpu",
        cwd=tmp_path,
    )
    search = json.loads((work / "search.json").read_text())
    assert search["kind"] == "edgesplit.cosearch_search"
    assert len(search["trials"]) == 3
    assert (work / "search.png").stat().st_size > 0
    _cli(
        "refine",
        "-s",
        str(work / "search.json"),
        "-p",
        str(work / "predictors.json"),
        "-o",
        str(work / "refine.json"),
        "--steps",
        "1",
        cwd=tmp_path,
    )
    refine = json.loads((work / "refine.json").read_text())
    assert refine["steps"][0]["action"] == "start"
    assert "Grow-and-prune" in (work / "refine.md").read_text()


def test_fit_reports_missing_data(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgesplit.cli.main",
            "cosearch",
            "fit",
            "--protran",
            str(tmp_path / "nothing"),
            "-o",
            str(tmp_path / "p.json"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "no ProTran" in result.stderr
