"""`run --dtype` on a cluster whose boards are derived from the host's profile ([[kinds]]).

`with_stage_dtype` re-predicts the plan; it must see the cluster's derived kinds as `plan` did
(it raised "no times for device kind 'camera-soc'" on examples/cluster.toml).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesplit.api import pipeline, precision
from edgesplit.core.cluster import load_cluster
from edgesplit.core.profile import ModelProfile
from tests.unit.planners.test_joint_dtype import instance


def test_a_dtype_override_repredicts_on_derived_kinds(tmp_path: Path) -> None:
    measured, _ = instance(3, num_devices=1, num_units=6)
    kind = measured.device_kinds[0]
    profile = ModelProfile.model_validate(  # one measured kind, as `edgesplit profile` writes
        {
            **measured.model_dump(),
            "units": [
                {
                    **u.model_dump(),
                    "time_s": {kind: u.time_s[kind]},
                    "by_dtype": {
                        d: {**f.model_dump(), "time_s": {kind: f.time_s[kind]}}
                        for d, f in (u.by_dtype or {}).items()
                    },
                }
                for u in measured.units
            ],
        }
    )
    toml = tmp_path / "cluster.toml"
    toml.write_text(
        'source = "a"\n[defaults]\nbandwidth_mbps = 100\nlatency_ms = 1\n'
        '[[kinds]]\nname = "board"\nrelative_to = "host"\nslowdown = 3.0\n'
        '[[devices]]\nname = "a"\nkind = "board"\nmemory_mb = 4096\n'
        '[[devices]]\nname = "b"\nkind = "board"\nmemory_mb = 4096\n'
    )
    cluster = load_cluster(toml)
    plan = pipeline.plan(profile, cluster, dtypes=("float32", "int8"))
    forced = precision.with_stage_dtype(plan, "int8", profile, cluster)
    assert {s.dtype for s in forced.stages} == {"int8"}
    assert np.isfinite(forced.predicted.period_s)
    assert forced.predicted.period_s > 0
