"""The simulator agrees with the cost model's period in steady state, and reacts to jitter."""

from __future__ import annotations

import numpy as np
import pytest

from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
from edgesplit.planners import make_plan
from edgesplit.profile.pipeedge import import_pipeedge
from edgesplit.sim import SimConfig, simulate

from ..planners.strategies import random_instance


def _pipeedge(num: int, bandwidth_mbps: float) -> Cluster:
    devices = [
        DeviceSpec(name=f"mb{i}", kind="Minnowboard-E3845", memory_mb=2048) for i in range(num)
    ]
    devices += [DeviceSpec(name=f"rcc{i}", kind="RCC-VE-C2000", memory_mb=8192) for i in range(num)]
    return Cluster(
        source="mb0",
        defaults=LinkDefaults(bandwidth_mbps=bandwidth_mbps, latency_ms=1),
        devices=tuple(devices),
    )


@pytest.mark.parametrize(("num", "bandwidth_mbps"), [(4, 1000), (8, 1000), (8, 30)])
def test_steady_state_matches_cost_model(num: int, bandwidth_mbps: float) -> None:
    profile = import_pipeedge("google/vit-large-patch16-224", 8)
    cluster = _pipeedge(num, bandwidth_mbps)
    plan = make_plan(profile, cluster)
    result = simulate(plan, profile, cluster, SimConfig(num_microbatches=200))
    assert result.throughput_per_s == pytest.approx(plan.predicted.throughput_per_s, rel=0.02)
    bottleneck = max(r.busy_fraction for r in result.resources)
    assert bottleneck > 0.85  # the slowest resource is busy but for pipeline fill and drain
    # One micro-batch alone takes exactly the predicted latency.
    alone = simulate(plan, profile, cluster, SimConfig(num_microbatches=2, max_in_flight=1))
    assert alone.latency_s.p50 == pytest.approx(plan.predicted.latency_s, rel=1e-9)


def test_random_plans_agree() -> None:
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(40):
        profile, cluster = random_instance(rng, int(rng.integers(1, 6)), int(rng.integers(2, 20)))
        try:
            plan = make_plan(profile, cluster)
        except Exception:
            continue
        result = simulate(plan, profile, cluster, SimConfig(num_microbatches=120))
        assert result.period_s == pytest.approx(plan.predicted.period_s, rel=0.02)
        checked += 1
    assert checked > 10


def test_in_flight_limit_and_jitter_cost_throughput() -> None:
    profile = import_pipeedge("google/vit-large-patch16-224", 8)
    cluster = _pipeedge(4, 1000)
    plan = make_plan(profile, cluster)
    starved = simulate(plan, profile, cluster, SimConfig(num_microbatches=60, max_in_flight=2))
    assert starved.period_s > 1.5 * plan.predicted.period_s  # 2 in flight cannot fill 8 stages
    noisy = simulate(plan, profile, cluster, SimConfig(num_microbatches=200, jitter_cv=0.3))
    assert noisy.period_s > plan.predicted.period_s
