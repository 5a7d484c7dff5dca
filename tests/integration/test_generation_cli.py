"""`edgesplit generate` end to end: tokens stream to stdout, report matches, bad stages exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgesplit.models import build_model, model_spec_from_name
from edgesplit.models.kv_stage import generate_unsplit

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_generate_command_streams_and_reports(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgesplit.cli.main",
            "generate",
            "--model",
            "gpt2-tiny",
            "--stages",
            "a:0-4,b:4-10",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "16",
            "--report",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Hi")
    assert "tokens/s" in done.stdout
    report = json.loads(report_path.read_text())
    expected = generate_unsplit(build_model(model_spec_from_name("gpt2-tiny")), [72, 105], 16)
    assert report["sequences"][0]["new_ids"] == expected
    assert report["stages"] == [
        {"device": "a", "start": 0, "end": 4},
        {"device": "b", "start": 4, "end": 10},
    ]


def test_generate_command_rejects_bad_stages() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgesplit.cli.main",
            "generate",
            "--model",
            "gpt2-tiny",
            "--stages",
            "a:0-4,b:5-10",
            "--prompt",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "contiguous" in done.stderr
