"""`edgesplit plan --dtype ... --quality ... --max-quality-loss` end to end (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
from edgesplit.core.profile import ModelProfile
from edgesplit.core.schema import write_json_file
from tests.unit.planners.test_joint_dtype import instance, quality_table


def edgesplit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgesplit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "EDGESPLIT_LOG": "WARNING"},
    )


def test_plan_with_dtypes_records_and_prints_the_predicted_loss(tmp_path: Path) -> None:
    profile, _ = instance(2, num_devices=3, num_units=6)
    profile = ModelProfile.model_validate(  # small activations: the weights decide what fits
        {
            **profile.model_dump(),
            "input_bytes": 1e4,
            "units": [{**u.model_dump(), "output_bytes": 1e4} for u in profile.units],
        }
    )
    table = quality_table(profile, np.random.default_rng(2))
    total_mb = sum(u.param_bytes for u in profile.units) / 1e6
    kind = profile.device_kinds[0]
    cluster = Cluster(  # float32 does not fit: a quarter of the weights per device
        source="a",
        defaults=LinkDefaults(bandwidth_mbps=100, latency_ms=1.0),
        devices=tuple(
            DeviceSpec(name=n, kind=kind, memory_mb=total_mb * 0.25 + 0.1) for n in "abc"
        ),
    )
    write_json_file(profile, tmp_path / "profile.json")
    write_json_file(table, tmp_path / "quality.json")
    (tmp_path / "cluster.toml").write_text(
        'source = "a"\n[defaults]\nbandwidth_mbps = 100\nlatency_ms = 1.0\n'
        + "".join(
            f'[[devices]]\nname = "{d.name}"\nkind = "{kind}"\nmemory_mb = {d.memory_mb}\n'
            for d in cluster.devices
        )
    )
    base = ["plan", "-p", str(tmp_path / "profile.json"), "-c", str(tmp_path / "cluster.toml")]
    refused = edgesplit(*base)
    assert refused.returncode != 0
    assert "MB" in refused.stderr + refused.stdout
    budget = 3.0
    result = edgesplit(
        *base,
        "--dtype",
        "float32,bfloat16,int8",
        "--link-encoding",
        "float32,float16,int8-token",
        "--quality",
        str(tmp_path / "quality.json"),
        "--max-quality-loss",
        str(budget),
        "-o",
        str(tmp_path / "plan.json"),
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    quality = plan["predicted"]["quality"]
    assert quality["max_loss"] == budget
    assert 0 <= quality["loss"] <= budget
    assert quality["table_hash"] == table.digest()
    assert {s.get("dtype", "float32") for s in plan["stages"]} - {"float32"}  # float32 can't fit
    assert "predicted perplexity loss" in result.stdout
    assert "dtype" in result.stdout
    shown = edgesplit("plan", "show", str(tmp_path / "plan.json"))
    assert "link out" in shown.stdout
    unknown = edgesplit(*base, "--dtype", "float8")
    assert unknown.returncode != 0
    assert "unknown stage dtype" in unknown.stderr + unknown.stdout
