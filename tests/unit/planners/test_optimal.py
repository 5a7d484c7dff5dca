"""The optimal planner equals exhaustive brute force; plans are valid; baselines are no better."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesplit.core.cost import CostModel
from edgesplit.errors import PlanInfeasibleError
from edgesplit.planners import make_plan

from .bruteforce import brute_force, num_plans
from .strategies import random_instance

MAX_PLANS = 150_000


def _objective_value(plan: object, objective: str) -> float:
    predicted = plan.predicted  # type: ignore[attr-defined]
    return float(predicted.period_s if objective == "throughput" else predicted.latency_s)


def _check_instance(seed: int, num_devices: int, num_units: int, objective: str) -> None:
    rng = np.random.default_rng(seed)
    profile, cluster = random_instance(
        rng, num_devices, num_units, same_kind=seed % 5 == 0, stage_overhead=seed % 3 == 1
    )
    cost = CostModel(profile, cluster)
    expected = brute_force(cost, objective)
    if not np.isfinite(expected):
        with pytest.raises(PlanInfeasibleError):
            make_plan(profile, cluster, objective, "optimal")
        return
    plan = make_plan(profile, cluster, objective, "optimal")
    assert plan.predicted.optimal
    assert _objective_value(plan, objective) == expected  # exact, not approximate
    covered = [u for s in plan.stages for u in range(s.start, s.end)]
    assert covered == list(range(num_units))
    assert not cost.overfull_stages(plan.stages)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    num_devices=st.integers(1, 6),
    num_units=st.integers(1, 24),
    objective=st.sampled_from(["throughput", "latency"]),
)
def test_optimal_equals_brute_force(
    seed: int, num_devices: int, num_units: int, objective: str
) -> None:
    while num_plans(num_devices, num_units) > MAX_PLANS:
        num_units -= 1
    _check_instance(seed, num_devices, num_units, objective)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_optimal_equals_brute_force_sweep(objective: str) -> None:
    """Thousands of seeded instances up to 6 distinct devices and 24 units."""
    rng = np.random.default_rng(2026)
    for instance in range(1500):
        num_devices = int(rng.integers(1, 7))
        num_units = int(rng.integers(1, 25))
        while num_plans(num_devices, num_units) > MAX_PLANS:
            num_units -= 1
        _check_instance(instance, num_devices, num_units, objective)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), num_devices=st.integers(2, 8), num_units=st.integers(2, 40))
def test_optimal_no_worse_than_baselines(seed: int, num_devices: int, num_units: int) -> None:
    rng = np.random.default_rng(seed)
    profile, cluster = random_instance(rng, num_devices, num_units)
    try:
        best = make_plan(profile, cluster, "throughput", "optimal").predicted.period_s
    except PlanInfeasibleError:
        return
    for name in ("even", "memory", "pipedream"):
        try:
            other = make_plan(profile, cluster, "throughput", name)
        except PlanInfeasibleError:
            continue
        assert best <= other.predicted.period_s


def test_interchangeable_devices_scale() -> None:
    """64 devices of 4 kinds with 128 units plan exactly (class-count DP), and quickly."""
    rng = np.random.default_rng(7)
    profile, _ = random_instance(rng, 4, 128)
    from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults

    devices = tuple(
        DeviceSpec(name=f"d{k}-{i}", kind=f"k{k}", memory_mb=4000.0)
        for k in range(4)
        for i in range(16)
    )
    cluster = Cluster(source="d0-0", defaults=LinkDefaults(), devices=devices)
    plan = make_plan(profile, cluster, "throughput", "optimal")
    assert plan.predicted.optimal
    assert len(plan.stages) > 8
