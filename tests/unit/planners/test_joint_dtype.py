"""The joint dtype / link-encoding planner (planners.precision_dp) against brute force.

Brute force enumerates every device sequence x cut set x stage dtype x link encoding, evaluates
each with `CostModel.predict` (memory with `overfull_stages`, loss with the quality table's own
rule) and keeps the best plan within the budget; the planner's value must equal it exactly.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgesplit.core.cluster import Cluster
from edgesplit.core.cost import CostModel
from edgesplit.core.plan import StagePlacement
from edgesplit.core.precision import LinkEncoding, StageDtype
from edgesplit.core.profile import ModelProfile, UnitDtypeProfile, UnitProfile
from edgesplit.core.quality import DtypeQuality, LinkQuality, QualityTable
from edgesplit.errors import ConfigError, PlanInfeasibleError
from edgesplit.planners import PrecisionChoices, make_plan
from tests.unit.planners.strategies import random_instance

DTYPES: tuple[StageDtype, ...] = ("float32", "bfloat16", "int8")
ENCODINGS: tuple[LinkEncoding, ...] = ("float32", "float16", "int8-token")


def with_dtypes(profile: ModelProfile, rng: np.random.Generator) -> ModelProfile:
    """Per-dtype figures: bfloat16 half the bytes, int8 about a quarter, each somewhat faster."""
    units = []
    for unit in profile.units:
        by_dtype = {
            "bfloat16": UnitDtypeProfile(
                param_bytes=unit.param_bytes * 0.5,
                time_s={k: v * float(rng.uniform(0.6, 1.1)) for k, v in unit.time_s.items()},
            ),
            "int8": UnitDtypeProfile(
                param_bytes=unit.param_bytes * 0.27,
                time_s={k: v * float(rng.uniform(0.3, 0.9)) for k, v in unit.time_s.items()},
            ),
        }
        units.append(UnitProfile(**{**unit.model_dump(), "by_dtype": by_dtype}))
    return ModelProfile.model_validate({**profile.model_dump(), "units": units})


def quality_table(profile: ModelProfile, rng: np.random.Generator) -> QualityTable:
    rows = [
        DtypeQuality(dtype="bfloat16", value=1.0, loss=float(rng.uniform(0.0, 0.5))),
        DtypeQuality(dtype="int8", value=1.0, loss=float(rng.uniform(0.5, 4.0))),
    ]
    links = [
        LinkQuality(encoding=enc, boundary=b, value=1.0, loss=float(rng.uniform(-0.2, 1.5)))
        for b in range(1, profile.num_units)
        for enc in ("float16", "int8-token")
        if rng.random() < 0.7
    ]
    if not any(r.encoding == "float16" for r in links):
        links.append(LinkQuality(encoding="float16", boundary=1, value=1.0, loss=0.1))
    if not any(r.encoding == "int8-token" for r in links):
        links.append(LinkQuality(encoding="int8-token", boundary=1, value=1.0, loss=0.4))
    return QualityTable(
        model=profile.model,
        metric="perplexity",
        loss_unit="percent",
        dataset="synthetic",
        num_samples=1,
        float32_value=10.0,
        unit_names=tuple(u.name for u in profile.units),
        unit_param_bytes=tuple(float(rng.uniform(1, 5)) for _ in profile.units),
        dtypes=tuple(rows),
        links=tuple(links),
    )


def brute_force(
    profile: ModelProfile,
    cluster: Cluster,
    objective: str,
    choices: PrecisionChoices,
) -> float:
    cost = CostModel(profile, cluster)
    names = list(cluster.device_names)
    num_units = profile.num_units
    best = np.inf
    for k in range(1, min(len(names), num_units) + 1):
        for cuts in itertools.combinations(range(1, num_units), k - 1):
            bounds = (0, *cuts, num_units)
            for sequence in itertools.permutations(names, k):
                for dtypes in itertools.product(choices.dtypes, repeat=k):
                    for encodings in itertools.product(choices.link_encodings, repeat=k - 1):
                        stages = [
                            StagePlacement(
                                device=sequence[i],
                                start=bounds[i],
                                end=bounds[i + 1],
                                dtype=dtypes[i],
                                link_encoding=(*encodings, "float32")[i],
                            )
                            for i in range(k)
                        ]
                        if cost.overfull_stages(stages):
                            continue
                        if choices.max_quality_loss is not None:
                            assert choices.quality is not None
                            loss = choices.quality.predicted_loss(
                                [(s.start, s.end, s.dtype) for s in stages],
                                [(s.end, s.link_encoding) for s in stages[:-1]],
                            )
                            if loss > choices.max_quality_loss + 1e-9:
                                continue
                        predicted = cost.predict(stages)
                        value = (
                            predicted.period_s if objective == "throughput" else predicted.latency_s
                        )
                        best = min(best, value)
    return best


def instance(seed: int, num_devices: int = 3, num_units: int = 4) -> tuple[ModelProfile, Cluster]:
    rng = np.random.default_rng(seed)
    profile, cluster = random_instance(rng, num_devices, num_units, same_kind=bool(seed % 3 == 0))
    return with_dtypes(profile, rng), cluster


def planned_value(plan_objective: str, plan: object) -> float:
    predicted = plan.predicted  # type: ignore[attr-defined]
    return float(predicted.period_s if plan_objective == "throughput" else predicted.latency_s)


@pytest.mark.parametrize("objective", ["throughput", "latency"])
@pytest.mark.parametrize("seed", range(14))
def test_joint_plan_equals_brute_force(seed: int, objective: str) -> None:
    profile, cluster = instance(seed)
    rng = np.random.default_rng(1000 + seed)
    table = quality_table(profile, rng)
    budget = [None, 0.0, float(rng.uniform(0.2, 2.5))][seed % 3]
    choices = PrecisionChoices(DTYPES, ENCODINGS, table, budget)
    expected = brute_force(profile, cluster, objective, choices)
    if not np.isfinite(expected):
        with pytest.raises(PlanInfeasibleError):
            make_plan(profile, cluster, objective, precision=choices)  # type: ignore[arg-type]
        return
    plan = make_plan(profile, cluster, objective, precision=choices)  # type: ignore[arg-type]
    assert planned_value(objective, plan) == expected
    assert plan.predicted.optimal
    assert plan.predicted.quality is not None
    if budget is not None:
        assert plan.predicted.quality.loss <= budget + 1e-9
    assert plan.stages[-1].link_encoding == "float32"
    assert not CostModel(profile, cluster).overfull_stages(plan.stages)


@pytest.mark.parametrize("seed", range(6))
def test_float32_only_choice_is_the_old_optimum(seed: int) -> None:
    profile, cluster = instance(seed)
    old = make_plan(profile, cluster)
    same = make_plan(profile, cluster, precision=PrecisionChoices())
    assert same.model_dump() | {"planner": None} == old.model_dump() | {"planner": None}
    # The joint DP with float32 as the only choice reaches the same value.
    table = quality_table(profile, np.random.default_rng(seed))
    joint = make_plan(
        profile,
        cluster,
        precision=PrecisionChoices(("float32",), ("float32", "float16"), table, 0.0),
    )
    assert joint.predicted.period_s == old.predicted.period_s


def test_budget_zero_keeps_float32_where_losses_are_real() -> None:
    profile, cluster = instance(4)
    table = quality_table(profile, np.random.default_rng(7))
    plan = make_plan(profile, cluster, precision=PrecisionChoices(DTYPES, ENCODINGS, table, 0.0))
    assert plan.predicted.quality is not None
    assert plan.predicted.quality.loss == 0.0
    assert all(s.dtype in ("float32",) or table.dtype_loss(s.dtype) == 0 for s in plan.stages)


def test_int8_fits_where_float32_does_not() -> None:
    """Memory for a third of the float32 weights per device: only int8 (or bf16) plans fit."""
    rng = np.random.default_rng(3)
    profile, cluster = random_instance(rng, 2, 6, same_kind=True)
    profile = with_dtypes(profile, rng)
    total = sum(u.param_bytes for u in profile.units)
    small = cluster.model_copy(
        update={
            "devices": tuple(
                d.model_copy(update={"memory_mb": total * 0.3 / 1e6}) for d in cluster.devices
            )
        }
    )
    small = Cluster.model_validate(small.model_dump())
    with pytest.raises(PlanInfeasibleError):
        make_plan(profile, small)
    plan = make_plan(profile, small, precision=PrecisionChoices(DTYPES, ENCODINGS))
    assert {s.dtype for s in plan.stages} <= {"bfloat16", "int8"}


def test_single_dtype_runs_every_planner() -> None:
    profile, cluster = instance(5, num_devices=4, num_units=8)
    for planner in ("optimal", "milp", "even"):
        try:
            plan = make_plan(
                profile,
                cluster,
                planner=planner,
                precision=PrecisionChoices(("int8",), ("float16",)),
            )
        except PlanInfeasibleError:
            continue
        assert {s.dtype for s in plan.stages} == {"int8"}
        assert all(s.link_encoding == "float16" for s in plan.stages[:-1])
        assert plan.stages[-1].link_encoding == "float32"
    # The single-precision optimum equals the joint planner restricted to the same choice.
    single = make_plan(profile, cluster, precision=PrecisionChoices(("int8",), ("float16",)))
    joint = make_plan(
        profile, cluster, precision=PrecisionChoices(("int8", "bfloat16"), ("float16",))
    )
    assert joint.predicted.period_s <= single.predicted.period_s


def test_refusals() -> None:
    profile, cluster = instance(1)
    table = quality_table(profile, np.random.default_rng(1))
    with pytest.raises(ConfigError, match="quality table"):
        make_plan(profile, cluster, precision=PrecisionChoices(DTYPES, ENCODINGS, None, 1.0))
    with pytest.raises(ConfigError, match="'even' plans one dtype"):
        make_plan(profile, cluster, planner="even", precision=PrecisionChoices(DTYPES))
    float32_only = ModelProfile.model_validate(
        {
            **profile.model_dump(),
            "units": [{**u.model_dump(), "by_dtype": None} for u in profile.units],
        }
    )
    with pytest.raises(ConfigError, match="no figures for dtype"):
        make_plan(float32_only, cluster, precision=PrecisionChoices(("int8",)))
    short = QualityTable.model_validate(
        {
            **table.model_dump(),
            "unit_names": table.unit_names[:-1],
            "unit_param_bytes": table.unit_param_bytes[:-1],
            "links": [r for r in table.links if r.boundary < profile.num_units - 1],
        }
    )
    with pytest.raises(ConfigError, match="units"):
        make_plan(profile, cluster, precision=PrecisionChoices(DTYPES, ENCODINGS, short, 1.0))


@pytest.mark.parametrize("planner", ["optimal", "milp"])
@pytest.mark.parametrize("seed", range(8))
def test_single_precision_planners_equal_brute_force(seed: int, planner: str) -> None:
    """One dtype and one encoding: the class-count DP and the MILP plan in that precision."""
    profile, cluster = instance(seed)
    choices = PrecisionChoices(("int8",), ("int8-token",))
    expected = brute_force(profile, cluster, "throughput", choices)
    if not np.isfinite(expected):
        with pytest.raises(PlanInfeasibleError):
            make_plan(profile, cluster, planner=planner, precision=choices)
        return
    plan = make_plan(profile, cluster, planner=planner, precision=choices)
    assert plan.predicted.period_s == pytest.approx(expected, rel=1e-9)
    assert {s.dtype for s in plan.stages} == {"int8"}


def test_with_stage_dtype_overrides_every_stage_and_repredicts() -> None:
    from edgesplit.api import precision

    profile, cluster = instance(5, num_devices=3, num_units=6)
    plan = make_plan(profile, cluster, precision=PrecisionChoices(DTYPES, ENCODINGS))
    forced = precision.with_stage_dtype(plan, "bfloat16", profile, cluster)
    assert {s.dtype for s in forced.stages} == {"bfloat16"}
    assert [s.link_encoding for s in forced.stages] == [s.link_encoding for s in plan.stages]
    expected = CostModel(profile, cluster).predict(forced.stages)
    assert forced.predicted.period_s == expected.period_s
    assert precision.parse_dtype(" int8 ") == "int8"
    with pytest.raises(ConfigError, match="unknown stage dtype"):
        precision.parse_dtype("fp8")


def test_a_replan_keeps_the_plans_precision() -> None:
    profile, cluster = instance(5, num_devices=3, num_units=6)
    plan = make_plan(profile, cluster, precision=PrecisionChoices(("int8",), ("float16",)))
    choices = PrecisionChoices.of_plan(plan, profile)
    assert choices.dtypes == ("int8",)
    assert choices.link_encodings == (("float16",) if len(plan.stages) > 1 else ("float32",))
    float32_only = ModelProfile.model_validate(
        {
            **profile.model_dump(),
            "units": [{**u.model_dump(), "by_dtype": None} for u in profile.units],
        }
    )
    assert PrecisionChoices.of_plan(plan, float32_only).dtypes == ("float32",)


def test_many_distinct_devices_are_refused_with_advice() -> None:
    rng = np.random.default_rng(0)
    profile, cluster = random_instance(rng, 30, 6)
    profile = with_dtypes(profile, rng)
    with pytest.raises(ConfigError, match="one --dtype"):
        make_plan(profile, cluster, precision=PrecisionChoices(DTYPES, ENCODINGS))
