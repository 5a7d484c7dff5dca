"""Golden plans: re-planning a stored scenario gives the identical file; old schemas still load.

Regenerate deliberately with `EDGESPLIT_REGEN_GOLDEN=1 pytest tests/unit/planners/test_golden.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgesplit.core.cluster import load_cluster
from edgesplit.core.plan import Plan
from edgesplit.core.profile import ModelProfile
from edgesplit.core.schema import read_json_file, stable_json
from edgesplit.planners import make_plan
from edgesplit.profile.pipeedge import import_pipeedge

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data"
CASES = [
    ("pipeedge-4+4", "throughput"),
    ("pipeedge-8+8", "throughput"),
    ("pipeedge-4+4", "latency"),
]


def _plan_text(plan: Plan) -> str:
    data = plan.model_dump(mode="json")
    data["planner"]["elapsed_s"] = 0.0  # the only field that may differ between runs
    return stable_json(data)


@pytest.mark.parametrize(("scenario", "objective"), CASES)
def test_golden_plan(scenario: str, objective: str) -> None:
    profile = import_pipeedge("google/vit-large-patch16-224", 8)
    cluster = load_cluster(ROOT / "examples" / f"{scenario}.toml")
    text = _plan_text(make_plan(profile, cluster, objective))  # type: ignore[arg-type]
    golden = DATA / "plans" / f"{scenario}-{objective}.json"
    if os.environ.get("EDGESPLIT_REGEN_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize(
    ("name", "model"), [("plan_v1.json", Plan), ("model_profile_v1.json", ModelProfile)]
)
def test_released_schema_versions_load(name: str, model: type[Plan | ModelProfile]) -> None:
    loaded = read_json_file(model, DATA / "schemas" / name)
    assert loaded.schema_version == 1
