"""Integration fixtures: one session-scoped Ray (a head node plus per-device nodes on demand).

Ray starts once per test session (cold start costs ~10-25 s here): stage actors use num_cpus=0,
usage stats are off, health checks are tuned to seconds (runtime.cluster.health_check_config).
Tests that need a device to own a Ray node (node crash, node hang) add one with `add_device`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import pytest

from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
from edgesplit.core.cost import CostModel
from edgesplit.core.plan import Plan, PlannerInfo, StagePlacement
from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.runtime.config import RuntimeConfig

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """The session's Ray: an `EmulatedCluster` head (1 CPU) the driver is attached to."""
    from edgesplit.runtime.cluster import EmulatedCluster

    cluster = EmulatedCluster(RuntimeConfig())
    yield cluster
    cluster.shutdown()


def toy_profile(
    num_units: int = 6, time_s: float = 0.02, output_bytes: float = 600_000, kind: str = "k"
) -> ModelProfile:
    units = tuple(
        UnitProfile(name=f"u{i}", param_bytes=1e6, output_bytes=output_bytes, time_s={kind: time_s})
        for i in range(num_units)
    )
    return ModelProfile(model="toy", batch_size=1, input_bytes=output_bytes, units=units)


def toy_cluster(names: Sequence[str], kind: str = "k", bandwidth_mbps: float = 1000) -> Cluster:
    return Cluster(
        source=names[0],
        defaults=LinkDefaults(bandwidth_mbps=bandwidth_mbps, latency_ms=1.0),
        devices=tuple(DeviceSpec(name=n, kind=kind, memory_mb=1000) for n in names),
    )


def make_plan(
    profile: ModelProfile, cluster: Cluster, stages: Sequence[tuple[str, int, int]]
) -> Plan:
    placements = tuple(StagePlacement(device=d, start=s, end=e) for d, s, e in stages)
    return Plan(
        model=profile.model,
        profile_hash=profile.digest(),
        cluster_hash=cluster.digest(),
        batch_size=profile.batch_size,
        objective="throughput",
        planner=PlannerInfo(name="manual"),
        stages=placements,
        predicted=CostModel(profile, cluster).predict(placements),
    )


def even_replanner(profile: ModelProfile):  # type: ignore[no-untyped-def]
    """A stand-in for the injected planner: even split over the survivors (first 2 devices)."""

    def replan(cluster: Cluster) -> Plan:
        devices = list(cluster.device_names)[:2]
        n = profile.num_units
        cut = n // 2
        return make_plan(profile, cluster, [(devices[0], 0, cut), (devices[1], cut, n)])

    return replan
