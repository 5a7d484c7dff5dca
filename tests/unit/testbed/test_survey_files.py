"""The survey's pure parts: kinds from measured speeds, and cluster.toml that reads back."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesplit.core.cluster import load_cluster
from edgesplit.runtime.survey import (
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
