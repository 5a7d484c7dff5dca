"""`generate profile` measures decode step time vs batch size; `generate plan --concurrency`
plans with it and records the micro-batch count (issue 16's planner side)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from edgesplit.cli import main
from edgesplit.core.schema import read_json_file
from edgesplit.planners.generation import GenerationPlan, GenerationProfile


def test_profile_batch_sizes_then_plan_for_a_concurrency(tmp_path: Path) -> None:
    main._register()
    app = main.app
    runner = CliRunner()
    profile_path = tmp_path / "profile.json"
    measured = runner.invoke(
        app,
        [
            "generate",
            "profile",
            "--model",
            "gpt2-tiny",
            "-o",
            str(profile_path),
            "--prompt-length",
            "4",
            "--cache-length",
            "8",
            "--repeats",
            "1",
            "--batch-sizes",
            "2,4",
        ],
    )
    assert measured.exit_code == 0, measured.output
    profile = read_json_file(GenerationProfile, profile_path)
    assert [p.batch for p in profile.decode_batch] == [2, 4]
    assert all(len(p.unit_scale) == profile.decode.num_units for p in profile.decode_batch)
    assert all(r > 0 for p in profile.decode_batch for r in p.unit_scale)
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        'source = "a"\n[defaults]\nbandwidth_mbps = 100\nlatency_ms = 1.0\n'
        + "".join(f'[[devices]]\nname = "{d}"\nkind = "host"\nmemory_mb = 1000\n' for d in "ab")
    )
    plan_path = tmp_path / "plan.json"
    planned = runner.invoke(
        app,
        [
            "generate",
            "plan",
            "--profile",
            str(profile_path),
            "-c",
            str(cluster),
            "--concurrency",
            "4",
            "--max-context",
            "64",
            "-o",
            str(plan_path),
        ],
    )
    assert planned.exit_code == 0, planned.output
    plan = read_json_file(GenerationPlan, plan_path)
    g = plan.generation
    assert (g.num_sequences, g.batch_scaling) == (4, "measured")
    assert g.micro_batches * g.batch_rows >= 4
    assert plan.plan.planner.options["micro_batches"] == g.micro_batches
    assert g.optimal
