"""The survey's pure parts: kinds from measured speeds, and cluster.toml that reads back."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesplit.core.cluster import load_cluster
from edgesplit.testbed.survey import (
    DeviceMeasurement,
    LinkMeasurement,
    _merged_profile,
    _survey_cluster,
    cluster_toml,
    group_kinds,
)


def _device(name: str, total_s: float, share: float) -> DeviceMeasurement:
    return DeviceMeasurement(
        device=name,
        ip="10.0.0.1",
        memory_mb=1024,
        memory_source="declared",
        cpu_model="AMD EPYC",
        cpu_share=share,
        unit_times_s=(total_s / 2, total_s / 2),
        total_s=total_s,
    )


def test_devices_within_tolerance_share_a_kind() -> None:
    devices = [_device("a", 1.0, 0.6), _device("b", 1.05, 0.58), _device("c", 2.0, 0.3)]
    kinds = group_kinds(devices, tolerance=0.15)
    assert kinds["a"] == kinds["b"] != kinds["c"]
    assert kinds["c"] == "amd-epyc-0.30cpu"
    assert len(set(group_kinds(devices, tolerance=0.0).values())) == 3


def test_survey_files_read_back(tmp_path: Path) -> None:
    devices = [_device("cam", 4.0, 0.1), _device("pc", 1.0, 0.6)]
    kinds = group_kinds(devices, 0.15)
    links = [
        LinkMeasurement(
            a="cam",
            b="pc",
            bandwidth_mbps=19.4,
            latency_ms=0.05,
            rtt_min_ms=0.08,
            num_bytes=1,
            seconds=1.0,
        )
    ]
    cluster = _survey_cluster(devices, links, kinds, "cam")
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_toml(cluster, "header line"))
    assert path.read_text().startswith("# header line\n")
    assert load_cluster(path) == cluster
    assert cluster.link("pc", "cam")[0] * 8 / 1e6 == pytest.approx(19.4)
    raw = {
        d.device: {
            "model": "m",
            "input_bytes": 10.0,
            "units": [
                {
                    "name": f"u{i}",
                    "param_bytes": 1.0,
                    "output_bytes": 2.0,
                    "time_s": t,
                    "cpu_time_s": t / 2,
                    "peak_memory_bytes": 3.0,
                }
                for i, t in enumerate(d.unit_times_s)
            ],
        }
        for d in devices
    }
    profile = _merged_profile(raw, kinds, 1, "")
    assert set(profile.device_kinds) == set(kinds.values())
    assert profile.units[0].time_s[kinds["cam"]] == pytest.approx(2.0)


def test_stage_overhead_reaches_cluster_toml_and_the_cost_model(tmp_path: Path) -> None:
    from edgesplit.core.cost import CostModel
    from edgesplit.core.plan import StagePlacement
    from edgesplit.core.profile import ModelProfile, UnitProfile

    devices = [
        _device("cam", 4.0, 0.1).model_copy(update={"stage_overhead_s": 0.025}),
        _device("pc", 1.0, 0.6),
    ]
    kinds = group_kinds(devices, 0.15)
    cluster = _survey_cluster(devices, [], kinds, "cam")
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_toml(cluster))
    assert "stage_overhead_ms = 25.0" in path.read_text()
    assert load_cluster(path).device("cam").stage_overhead_s == pytest.approx(0.025)
    assert "stage_overhead_ms" not in cluster.device("pc").model_dump()  # unset: files unchanged
    profile = ModelProfile(
        model="m",
        batch_size=1,
        input_bytes=0.0,
        units=tuple(
            UnitProfile(
                name=f"u{i}",
                param_bytes=1.0,
                output_bytes=0.0,
                time_s={kinds["cam"]: 2.0, kinds["pc"]: 0.5},
            )
            for i in range(2)
        ),
    )
    cost = CostModel(profile, cluster)
    assert cost.compute_s("cam", 0, 2) == pytest.approx(4.025)  # once per stage, not per unit
    assert cost.compute_s("pc", 0, 1) == pytest.approx(0.5)
    two = (
        StagePlacement(device="cam", start=0, end=1),
        StagePlacement(device="pc", start=1, end=2),
    )
    assert cost.predict(two).period_s == pytest.approx(2.025)


def test_runtime_overhead_is_measured_on_a_real_stage_worker() -> None:
    from edgesplit.testbed.survey_probe import Probe

    probe = Probe("dev", "127.0.0.1")
    cpu_s = probe._channel_cpu(64 * 1024, window_s=0.2)
    # The stage's reader, sender and ack threads did real work per micro-batch, and little.
    assert 1e-6 < cpu_s < 0.05
