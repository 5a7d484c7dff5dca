"""Robust width placement (planners/robust*.py): strategies, failure scoring, surrogate, search."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edgesplit.core.cluster import Cluster
from edgesplit.core.schema import read_json_file, write_json_file
from edgesplit.errors import PlanInfeasibleError
from edgesplit.planners.robust import (
    RobustPlan,
    RobustProblem,
    RobustUnit,
    StrategySpec,
    default_strategies,
    evaluate_placement,
    memory_bytes_per_device,
    pareto_front,
    place,
    plan_robust,
)
from edgesplit.planners.robust_objective import (
    Surrogate,
    SurrogateCalibration,
    expected_from_k,
    failure_table,
    holder_masks,
    isotonic_fit,
    lost_matrix,
    subset_probabilities,
)


def make_problem(
    seed: int = 0, num_layers: int = 3, heads: int = 4, groups: int = 4, higher: bool = True
) -> RobustProblem:
    """Random importances; a linear metric curve 1 − s/Σimp as calibration."""
    rng = np.random.default_rng(seed)
    units = []
    for layer in range(num_layers):
        for kind, count, size in (("attn", heads, 1000), ("ffn", groups, 2000)):
            for slot in range(count):
                units.append(
                    RobustUnit(
                        name=f"layer{layer}.{kind}.{slot}",
                        layer_index=layer,
                        kind=kind,
                        param_bytes=size,
                        flops_per_token=2 * size,
                        importance=float(rng.exponential(1.0)),
                    )
                )
    total = sum(u.importance for u in units)
    xs = np.linspace(0, total, 9)[1:]
    ys = 1.0 - xs / total if higher else 10.0 + xs
    calibration = SurrogateCalibration(
        metric_name="accuracy" if higher else "perplexity",
        higher_is_better=higher,
        intact_metric=1.0 if higher else 10.0,
        chance_metric=0.0,
        lost_importance=tuple(float(x) for x in xs),
        measured_metric=tuple(float(y) for y in ys),
    )
    return RobustProblem(
        model="synthetic",
        units=tuple(units),
        shared_bytes=500,
        hidden_bytes=4096,
        tokens_per_request=16,
        calibration=calibration,
    )


def make_cluster(num_devices: int, p: float = 0.1, memory_mb: float = 1.0) -> Cluster:
    devices = [{"name": "coord", "kind": "server", "memory_mb": 100.0}]
    devices += [
        {"name": f"d{i}", "kind": "board", "memory_mb": memory_mb, "failure_probability": p}
        for i in range(num_devices)
    ]
    return Cluster.model_validate({"source": "coord", "devices": devices})


ALL_SPECS = [
    StrategySpec(name="split"),
    StrategySpec(name="uniform", replication=2),
    StrategySpec(name="tiered", vital_fraction=0.25),
    StrategySpec(name="greedy", memory_copies=0.5),
    StrategySpec(name="ksafe", k=1, memory_copies=0.5),
    StrategySpec(name="full"),
    StrategySpec(name="pipeline", standby=1),
]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.label)
@pytest.mark.parametrize("num_devices", [2, 4, 8])
def test_every_strategy_places_each_unit_on_distinct_devices(
    spec: StrategySpec, num_devices: int
) -> None:
    problem = make_problem()
    replicas = place(spec, problem, num_devices, [0.1] * num_devices)
    assert len(replicas) == len(problem.units)
    for r in replicas:
        assert r, "every unit needs at least one holder"
        assert len(set(r)) == len(r)
        assert all(0 <= d < num_devices for d in r)


def test_split_stripes_once_and_balances_memory() -> None:
    problem = make_problem(num_layers=4, heads=4, groups=8)
    replicas = place(StrategySpec(name="split"), problem, 4, [0.1] * 4)
    assert all(len(r) == 1 for r in replicas)
    load = memory_bytes_per_device(problem, replicas, 4)
    assert load.sum() == problem.copy_bytes
    assert load.max() == pytest.approx(problem.copy_bytes / 4)


def test_split_snake_puts_top_two_units_of_a_part_on_different_devices() -> None:
    problem = make_problem(seed=3)
    replicas = place(StrategySpec(name="split"), problem, 4, [0.1] * 4)
    for part in problem.parts():
        ranked = sorted(part, key=lambda u: -problem.units[u].importance)
        assert replicas[ranked[0]] != replicas[ranked[1]]


def test_full_and_uniform_memory_multiples() -> None:
    problem = make_problem(num_layers=4, heads=4, groups=8)
    for r in (1, 2, 3):
        replicas = place(StrategySpec(name="uniform", replication=r), problem, 4, [0.1] * 4)
        load = memory_bytes_per_device(problem, replicas, 4)
        assert load.max() / problem.copy_bytes == pytest.approx(r / 4)
    replicas = place(StrategySpec(name="full"), problem, 4, [0.1] * 4)
    assert all(sorted(r) == [0, 1, 2, 3] for r in replicas)


def test_tiered_replicates_exactly_the_vital_fraction() -> None:
    problem = make_problem(heads=4, groups=8)
    replicas = place(StrategySpec(name="tiered", vital_fraction=0.25), problem, 4, [0.1] * 4)
    for part in problem.parts():
        ranked = sorted(part, key=lambda u: -problem.units[u].importance)
        vital = math.ceil(0.25 * len(part))
        assert all(len(replicas[u]) == 4 for u in ranked[:vital])
        assert all(len(replicas[u]) == 1 for u in ranked[vital:])


@pytest.mark.parametrize("cap", [0.3, 0.5, 0.75])
def test_greedy_and_ksafe_respect_the_memory_cap(cap: float) -> None:
    problem = make_problem()
    for name in ("greedy", "ksafe"):
        spec = StrategySpec(name=name, memory_copies=cap)  # type: ignore[arg-type]
        replicas = place(spec, problem, 4, [0.1] * 4)
        load = memory_bytes_per_device(problem, replicas, 4)
        assert load.max() <= cap * problem.copy_bytes + 1e-9


def test_greedy_replicates_the_most_important_unit_first() -> None:
    problem = make_problem()
    cap = 0.25 + 1000 / problem.copy_bytes * 1.01  # room for about one extra head per device
    replicas = place(StrategySpec(name="greedy", memory_copies=cap), problem, 4, [0.1] * 4)
    imp = problem.effective_importance() / np.array([u.param_bytes for u in problem.units])
    best = int(np.argmax(imp))
    assert len(replicas[best]) > 1


def test_ksafe_units_survive_every_k_failures() -> None:
    problem = make_problem()
    replicas = place(StrategySpec(name="ksafe", k=2, memory_copies=0.9), problem, 4, [0.1] * 4)
    safe = [u for u, r in enumerate(replicas) if len(r) >= 3]
    assert safe, "with 0.9 copies some units must be 2-safe"
    for failed in itertools.combinations(range(4), 2):
        for u in safe:
            assert any(d not in failed for d in replicas[u])


def test_pipeline_puts_whole_layers_on_one_stage() -> None:
    problem = make_problem(num_layers=4)
    replicas = place(StrategySpec(name="pipeline", standby=0), problem, 4, [0.1] * 4)
    for layer in range(4):
        holders = {
            tuple(replicas[u]) for u, x in enumerate(problem.units) if x.layer_index == layer
        }
        assert len(holders) == 1


def test_isotonic_fit_is_monotone_and_exact_on_monotone_data() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0])
    _kx, ky = isotonic_fit(x, np.array([1.0, 0.8, 0.9, 0.1]), increasing=False)
    assert np.all(np.diff(ky) <= 1e-12)
    _kx2, ky2 = isotonic_fit(x, np.array([1.0, 0.7, 0.5, 0.1]), increasing=False)
    np.testing.assert_allclose(ky2, [1.0, 0.7, 0.5, 0.1])


def test_lost_matrix_and_probabilities() -> None:
    replicas = [[0], [0, 1], [1, 2]]
    holders = holder_masks(replicas)
    failed = np.arange(8, dtype=np.int64)
    lost = lost_matrix(holders, failed)
    # failed {0}: unit 0 lost only; failed {0,1}: units 0 and 1
    assert lost[0b001].tolist() == [True, False, False]
    assert lost[0b011].tolist() == [True, True, False]
    assert lost[0b111].all()
    probs = subset_probabilities(failed, np.array([0.1, 0.2, 0.3]))
    assert probs.sum() == pytest.approx(1.0)
    assert probs[0b101] == pytest.approx(0.1 * 0.8 * 0.3)


def test_expected_metric_exact_matches_bruteforce() -> None:
    problem = make_problem()
    surrogate = problem.surrogate()
    replicas = place(StrategySpec(name="tiered", vital_fraction=0.25), problem, 4, [0.1] * 4)
    table = failure_table(replicas, 4, surrogate)
    p = np.array([0.05, 0.1, 0.2, 0.3])
    brute = 0.0
    imp = problem.effective_importance()
    for failed in range(16):
        prob = np.prod([p[d] if failed >> d & 1 else 1 - p[d] for d in range(4)])
        lost = [u for u, r in enumerate(replicas) if all(failed >> d & 1 for d in r)]
        brute += prob * float(surrogate.predict(np.array([imp[lost].sum()]))[0])
    assert table.expected(p) == pytest.approx(brute)
    # with i.i.d. p the per-k means with binomial weights give the same expectation
    means = [float(table.metric[table.num_failed == k].mean()) for k in range(5)]
    assert expected_from_k(means, 4, 0.1) == pytest.approx(table.expected(np.full(4, 0.1)))


def test_full_replication_is_intact_until_every_device_fails() -> None:
    problem = make_problem()
    replicas = place(StrategySpec(name="full"), problem, 4, [0.1] * 4)
    pred = evaluate_placement(
        problem, replicas, ["a", "b", "c", "d"], surrogate=problem.surrogate()
    )
    assert pred.mean_by_k == (1.0, 1.0, 1.0, 1.0)
    assert pred.expected_metric["0.1"] == pytest.approx(1.0 - 0.1**4)


def test_replication_never_hurts_expected_metric() -> None:
    problem = make_problem()
    names = ["a", "b", "c", "d"]
    scores = []
    for r in (1, 2, 3, 4):
        replicas = place(StrategySpec(name="uniform", replication=r), problem, 4, [0.1] * 4)
        pred = evaluate_placement(problem, replicas, names, surrogate=problem.surrogate())
        scores.append(pred.expected_metric["0.1"])
    assert scores == sorted(scores)


def test_lower_is_better_metric_worst_is_max() -> None:
    problem = make_problem(higher=False)
    replicas = place(StrategySpec(name="split"), problem, 4, [0.1] * 4)
    pred = evaluate_placement(
        problem, replicas, ["a", "b", "c", "d"], surrogate=problem.surrogate()
    )
    assert all(w >= m - 1e-12 for w, m in zip(pred.worst_by_k, pred.mean_by_k, strict=True))
    assert pred.mean_by_k[0] == pytest.approx(10.0)


def test_monte_carlo_beyond_twelve_devices() -> None:
    problem = make_problem(num_layers=2, heads=8, groups=8)
    replicas = place(StrategySpec(name="split"), problem, 16, [0.1] * 16)
    pred = evaluate_placement(
        problem, replicas, [f"d{i}" for i in range(16)], surrogate=problem.surrogate()
    )
    assert 0.0 < pred.expected_metric["0.2"] < pred.expected_metric["0.01"] <= 1.0
    assert pred.mean_by_k == ()


def test_plan_robust_chooses_the_best_feasible_and_beats_split() -> None:
    problem = make_problem()
    cluster = make_cluster(4)
    chosen, front, plans = plan_robust(problem, cluster, memory_copies=0.5, probability=0.1)
    assert chosen.predicted.memory_copies <= 0.5 + 1e-9
    split = next(p for p in plans if p.strategy.name == "split")
    assert chosen.predicted.expected_metric["0.1"] > split.predicted.expected_metric["0.1"]
    feasible = [p for p in plans if p.predicted.memory_copies <= 0.5 + 1e-9]
    assert chosen.predicted.expected_metric["0.1"] == pytest.approx(
        max(p.predicted.expected_metric["0.1"] for p in feasible)
    )
    assert chosen.devices == ("d0", "d1", "d2", "d3")
    assert chosen.coordinator == "coord"
    assert front


def test_pareto_front_is_non_dominated() -> None:
    problem = make_problem()
    _, front, plans = plan_robust(problem, make_cluster(4), memory_copies=0.5)
    keys = {id(p): (p.predicted.expected_metric["0.1"], -p.predicted.memory_copies) for p in plans}
    for p in front:
        for q in plans:
            better_or_equal = (
                all(a >= b for a, b in zip(keys[id(q)], keys[id(p)], strict=True))
                and q.predicted.worst_by_k[1] >= p.predicted.worst_by_k[1]
                and (q.predicted.latency_s <= p.predicted.latency_s)
            )
            strictly = keys[id(q)] != keys[id(p)] or (
                q.predicted.worst_by_k[1] != p.predicted.worst_by_k[1]
            )
            assert not (better_or_equal and strictly), (
                f"{q.strategy.label} dominates {p.strategy.label}"
            )
    assert pareto_front(front, 0.1) == front


def test_infeasible_memory_raises_with_numbers() -> None:
    problem = make_problem()
    with pytest.raises(PlanInfeasibleError, match="model copies per device"):
        plan_robust(problem, make_cluster(4), memory_copies=0.1)


def test_device_memory_caps_are_respected() -> None:
    problem = make_problem()
    tiny = make_cluster(4, memory_mb=problem.copy_bytes * 0.3 / 1e6)
    chosen, _, _ = plan_robust(problem, tiny, memory_copies=1.0)
    assert max(chosen.predicted.memory_bytes_per_device) <= problem.copy_bytes * 0.3


def test_plan_file_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    problem = make_problem()
    chosen, _, _ = plan_robust(problem, make_cluster(4), memory_copies=0.5)
    path = write_json_file(chosen, tmp_path / "robust_plan.json")
    again = read_json_file(RobustPlan, path)
    assert again == chosen
    assert again.replica_indices() == [
        [chosen.devices.index(d) for d in r] for r in chosen.replicas
    ]
    problem_path = write_json_file(problem, tmp_path / "problem.json")
    assert read_json_file(RobustProblem, problem_path) == problem


def test_default_strategies_cover_every_family() -> None:
    names = {s.name for s in default_strategies(4, 0.5)}
    assert names == {"split", "uniform", "tiered", "greedy", "ksafe", "full", "pipeline"}


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 1000),
    num_devices=st.integers(2, 6),
    cap=st.floats(0.2, 1.0),
)
def test_property_greedy_fits_and_beats_split(seed: int, num_devices: int, cap: float) -> None:
    problem = make_problem(seed=seed)
    p = [0.1] * num_devices
    names = [f"d{i}" for i in range(num_devices)]
    surrogate = problem.surrogate()
    split = place(StrategySpec(name="split"), problem, num_devices, p)
    # Greedy starts from the split and only adds replicas, so the cap can hold only when the
    # split itself fits under it (units are indivisible: 1/N of a copy may not be reachable).
    assume(memory_bytes_per_device(problem, split, num_devices).max() <= cap * problem.copy_bytes)
    greedy = place(StrategySpec(name="greedy", memory_copies=cap), problem, num_devices, p)
    load = memory_bytes_per_device(problem, greedy, num_devices)
    assert load.max() <= cap * problem.copy_bytes + 1e-9
    g = evaluate_placement(problem, greedy, names, surrogate=surrogate).expected_metric["0.1"]
    s = evaluate_placement(problem, split, names, surrogate=surrogate).expected_metric["0.1"]
    assert g >= s - 1e-12


def test_surrogate_is_intact_at_zero_loss() -> None:
    problem = make_problem()
    surrogate = Surrogate.fit(problem.effective_importance(), problem.calibration)
    assert surrogate.predict(np.array([0.0]))[0] == 1.0
    values = surrogate.predict(np.linspace(0, 100, 50))
    assert np.all(np.diff(values) <= 1e-12)
