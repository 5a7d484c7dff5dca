"""The stage MILP (planners.milp, period_search) equals brute force, certifies valid bounds, and
reproduces the class-count DP's optimum on the benchmark scenarios."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesplit.core.cost import CostModel
from edgesplit.errors import ConfigError, PlanInfeasibleError
from edgesplit.planners import make_plan
from edgesplit.planners.progress import SolveProgress

from .bruteforce import brute_force, num_plans
from .strategies import random_instance

ROOT = Path(__file__).resolve().parents[3]
MAX_PLANS = 60_000


def _value(plan: object, objective: str) -> float:
    predicted = plan.predicted  # type: ignore[attr-defined]
    return float(predicted.period_s if objective == "throughput" else predicted.latency_s)


def _check(seed: int, num_devices: int, num_units: int, objective: str) -> None:
    rng = np.random.default_rng(seed)
    profile, cluster = random_instance(
        rng, num_devices, num_units, same_kind=seed % 7 == 0, stage_overhead=seed % 3 == 1
    )
    cost = CostModel(profile, cluster)
    expected = brute_force(cost, objective)
    if not np.isfinite(expected):
        with pytest.raises(PlanInfeasibleError):
            make_plan(profile, cluster, objective, "milp")  # type: ignore[arg-type]
        return
    plan = make_plan(profile, cluster, objective, "milp")  # type: ignore[arg-type]
    value = _value(plan, objective)
    # The plan is evaluated by the cost model, so equality with brute force is bitwise unless
    # two plans tie to within HiGHS's tolerances (1e-9 relative here).
    assert value == pytest.approx(expected, rel=1e-9, abs=0)
    assert plan.predicted.optimal
    assert plan.predicted.lower_bound_s is not None
    assert plan.predicted.lower_bound_s <= expected * (1 + 1e-9)
    assert not cost.overfull_stages(plan.stages)
    assert [u for s in plan.stages for u in range(s.start, s.end)] == list(range(num_units))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    num_devices=st.integers(1, 6),
    num_units=st.integers(1, 18),
    objective=st.sampled_from(["throughput", "latency"]),
)
def test_milp_equals_brute_force(
    seed: int, num_devices: int, num_units: int, objective: str
) -> None:
    while num_plans(num_devices, num_units) > MAX_PLANS:
        num_units -= 1
    _check(seed, num_devices, num_units, objective)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_milp_equals_brute_force_sweep(objective: str) -> None:
    """Hundreds of seeded instances up to 6 distinct devices and 18 units."""
    rng = np.random.default_rng(2027)
    for instance in range(400):
        num_devices = int(rng.integers(1, 7))
        num_units = int(rng.integers(1, 19))
        while num_plans(num_devices, num_units) > MAX_PLANS:
            num_units -= 1
        _check(10_000 + instance, num_devices, num_units, objective)


@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_optimal_uses_milp_on_distinct_devices_and_matches_brute_force(objective: str) -> None:
    """7 fully distinct devices, 9 units: the `optimal` planner's MILP route, checked."""
    rng = np.random.default_rng(5)
    profile, cluster = random_instance(rng, 7, 9)
    cost = CostModel(profile, cluster)
    expected = brute_force(cost, objective)
    plan = make_plan(profile, cluster, objective, "milp")  # type: ignore[arg-type]
    assert _value(plan, objective) == pytest.approx(expected, rel=1e-9, abs=0)


def test_time_limit_returns_a_certified_plan() -> None:
    """A tiny time limit still returns a valid plan whose bound is below the true optimum."""
    rng = np.random.default_rng(11)
    profile, cluster = random_instance(rng, 6, 12)
    cost = CostModel(profile, cluster)
    expected = brute_force(cost, "throughput")
    assume_feasible = np.isfinite(expected)
    if not assume_feasible:
        pytest.skip("instance infeasible")
    reports: list[SolveProgress] = []
    plan = make_plan(
        profile, cluster, "throughput", "milp", time_limit_s=0.001, progress=reports.append
    )
    assert plan.predicted.period_s >= expected
    bound = plan.predicted.lower_bound_s
    assert bound is not None
    assert bound <= expected * (1 + 1e-9)
    if not plan.predicted.optimal:
        assert plan.predicted.gap is not None
        assert plan.predicted.gap > 0
    assert plan.planner.options["time_limit_s"] == 0.001


def test_target_gap_is_honoured_and_options_validated() -> None:
    rng = np.random.default_rng(3)
    profile, cluster = random_instance(rng, 6, 14)
    try:
        plan = make_plan(profile, cluster, "throughput", "milp", target_gap=0.05)
    except PlanInfeasibleError:
        pytest.skip("instance infeasible")
    gap = plan.predicted.gap or 0.0
    assert gap <= 0.05 + 1e-12
    with pytest.raises(ConfigError, match="time limit"):
        make_plan(profile, cluster, "throughput", time_limit_s=0)
    with pytest.raises(ConfigError, match="target gap"):
        make_plan(profile, cluster, "throughput", target_gap=1.5)


def _scenarios() -> list[tuple[str, object, object]]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from edgesplit.profile.pipeedge import import_pipeedge
    from planner import PIPEEDGE, TARGETS, pipeedge_cluster  # type: ignore[import-not-found]
    from scenarios import cluster_of, vit_huge_profile  # type: ignore[import-not-found]

    cases: list[tuple[str, object, object]] = [
        (name, vit_huge_profile(len(counts)), cluster_of(counts, distinct_links=distinct))
        for name, counts, distinct, _ in TARGETS
        if sum(counts) <= 16  # the 64-device scenario runs in the slow test below
    ]
    large = import_pipeedge("google/vit-large-patch16-224", 8)
    cases += [(f"pipeedge {n}", large, pipeedge_cluster(a, b)) for n, a, b, _, _ in PIPEEDGE]
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_milp_reproduces_the_dp_optimum_on_benchmark_scenarios(objective: str) -> None:
    """Every benchmark scenario the class-count DP solves: the MILP's value is the same."""
    for name, profile, cluster in _scenarios():
        dp = make_plan(profile, cluster, objective, "optimal")  # type: ignore[arg-type]
        milp = make_plan(profile, cluster, objective, "milp")  # type: ignore[arg-type]
        assert milp.predicted.optimal, name
        assert _value(milp, objective) == pytest.approx(_value(dp, objective), rel=1e-12), name


@pytest.mark.slow
def test_milp_reproduces_the_dp_optimum_on_64_devices_of_4_kinds() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from scenarios import cluster_of, vit_huge_profile

    profile, cluster = vit_huge_profile(4), cluster_of([16, 16, 16, 16])
    for objective in ("throughput", "latency"):
        dp = make_plan(profile, cluster, objective, "optimal")  # type: ignore[arg-type]
        milp = make_plan(profile, cluster, objective, "milp")  # type: ignore[arg-type]
        assert _value(milp, objective) == pytest.approx(_value(dp, objective), rel=1e-12)
