"""`edgesplit run` and `edgesplit cluster` end to end (through api.run, which injects a planner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgesplit import api

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PROFILE = "pipeedge:google/vit-base-patch16-224"


def _app():  # type: ignore[no-untyped-def]
    from edgesplit.cli import main

    main._register()
    return main.app


@pytest.mark.parametrize(
    ("flag", "fault", "cause", "shaping"),
    [
        ("--kill", "{victim}@1.5", "actor_died", "full"),
        ("--fault", "stop:{victim}@1.5", "hang", "latency"),  # the testbed's mode
    ],
)
def test_run_with_a_fault_writes_the_report_contract(
    ray_cluster: object, tmp_path: Path, flag: str, fault: str, cause: str, shaping: str
) -> None:
    cluster_file = ROOT / "examples" / "pipeedge-4+4.toml"
    profile = api.import_pipeedge_profile("google/vit-base-patch16-224", 8)
    plan = api.plan(profile, api.load_cluster(cluster_file))
    api.save(plan, tmp_path / "plan.json")
    victim = plan.stages[1].device
    report_path = tmp_path / "run.json"
    result = CliRunner().invoke(
        _app(),
        [
            "run",
            "--plan",
            str(tmp_path / "plan.json"),
            "--cluster",
            str(cluster_file),
            "--profile",
            PROFILE,
            "--requests",
            "30",
            "--time-scale",
            "0.1",
            "--link-shaping",
            shaping,
            flag,
            fault.format(victim=victim),
            "--report",
            str(report_path),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["kind"] == "edgesplit.run_report"
    for key in ("period_s", "throughput_per_s"):
        assert report["measured"][key] > 0
    assert set(report["measured"]["latency_s"]) >= {"p50", "p95", "p99"}
    assert report["predicted"]["period_s"] == pytest.approx(plan.predicted.period_s)
    assert report["requests"]["submitted"] == report["requests"]["completed"] == 30
    assert (report["requests"]["lost"], report["requests"]["duplicated"]) == (0, 0)
    (failure,) = report["failures"]
    assert set(failure) >= {
        "device",
        "cause",
        "at_s",
        "detected_after_s",
        "recovered_after_s",
        "action",
    }
    assert failure["device"] == victim
    assert failure["cause"] == cause
    assert failure["fault"] == ("kill" if flag == "--kill" else "stop")
    assert Path(report["timeline_plot"]).is_file()


def test_cluster_up_dry_run_names_device_resources_and_token_auth() -> None:
    result = CliRunner().invoke(
        _app(), ["cluster", "up", "--head", "--device", "cam0", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "RAY_AUTH_MODE=token" in result.output
    assert '"cam0": 1' in result.output
    assert "health_check_period_ms" in result.output
