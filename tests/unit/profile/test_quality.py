"""Quality tables: measured on a tiny model with a made-up task, and end to end on a real ViT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgesplit.core.quality import QualityTable
from edgesplit.core.schema import read_json_file
from edgesplit.models import example_input, model_spec_from_name, unit_names
from edgesplit.models.units import Activation
from edgesplit.profile.quality import (
    QualityTask,
    default_boundaries,
    evaluate_split,
    measure_quality,
)


def _agreement_task() -> QualityTask:
    """llama-tiny; 'accuracy' = agreement of the argmax token with float32's."""
    spec = model_spec_from_name("llama-tiny")
    batches = tuple(example_input(spec, batch_size=2, seed=s) for s in range(3))

    def summarize(out: Activation, _: int) -> torch.Tensor:
        return out["logits"].argmax(-1)

    def score(ours: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
        return float((torch.cat(ours) == torch.cat(reference)).float().mean())

    return QualityTask(
        "agreement",
        spec,
        "accuracy",
        "seeded ids",
        batches,
        6,
        len(unit_names(spec)),
        summarize,
        score,
    )


def test_table_rows_and_float32_baseline(tmp_path: Path) -> None:
    task = _agreement_task()
    table = measure_quality(task, encodings=("float32", "float16", "int8-token"), boundaries=[3, 5])
    assert table.float32_value == 1.0
    assert [r.dtype for r in table.dtypes] == ["float32", "bfloat16", "int8"]
    assert table.dtypes[0].loss == 0.0
    # float32 links are the baseline itself and are not rows; two encodings x two boundaries.
    assert [(r.encoding, r.boundary) for r in table.links] == [
        ("float16", 3),
        ("int8-token", 3),
        ("float16", 5),
        ("int8-token", 5),
    ]
    for row in (*table.dtypes, *table.links):
        assert 0.0 <= row.value <= 1.0
        assert row.loss == pytest.approx(100 * (1.0 - row.value))
    assert table.unit_names == tuple(unit_names(task.spec))
    assert sum(table.unit_param_bytes) > 0
    assert table.predicted_loss([(0, table.num_units, "float32")]) == 0.0


def test_default_boundaries_are_block_boundaries() -> None:
    spec = model_spec_from_name("llama-tiny")  # 4 blocks: embed, 8 halves, head
    names = unit_names(spec)
    cuts = default_boundaries(spec, len(names))
    assert cuts
    assert all(names[c - 1].endswith(".mlp") for c in cuts)
    assert all(0 < c < len(names) - 1 for c in cuts)


@pytest.mark.slow
def test_quality_cli_on_the_trained_digits_vit(tmp_path: Path) -> None:
    """Trains the tiny digits ViT once (~15 CPU-s, cached under EDGESPLIT_HOME)."""
    out = tmp_path / "q.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgesplit.cli.main",
            "quality",
            "-t",
            "vit-digits",
            "--dtype",
            "int8",
            "--link",
            "int8-tensor",
            "--boundary",
            "5",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "int8-tensor after block1.mlp" in result.stdout
    table = read_json_file(QualityTable, out)
    assert table.metric == "accuracy"
    assert table.float32_value > 0.9
    assert [r.dtype for r in table.dtypes] == ["float32", "int8"]
    assert abs(table.dtypes[1].loss) < 5  # points
    assert json.loads(out.read_text())["kind"] == "edgesplit.quality_table"


def test_evaluate_split_agrees_with_the_table() -> None:
    """A split int8 plan scores exactly what the table's one-stage int8 row says (split equals
    unsplit), and a float16 link at a boundary scores what that link row says."""
    task = _agreement_task()
    table = measure_quality(task, dtypes=("int8",), encodings=("float16",), boundaries=[5])
    n = task.end
    assert evaluate_split(task, [(0, n, "float32")]) == 1.0
    split_int8 = evaluate_split(task, [(0, 5, "int8"), (5, n, "int8")])
    assert split_int8 == table.dtypes[1].value
    linked = evaluate_split(task, [(0, 5, "float32"), (5, n, "float32")], ["float16"])
    assert linked == table.links[0].value
