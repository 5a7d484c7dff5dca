"""The planner protocol and registry.

A planner is a pure function (ModelProfile, Cluster, Objective, options) -> Plan; registering a
name twice is an error. Imports core only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgesplit.core.cluster import Cluster
from edgesplit.core.cost import CostModel
from edgesplit.core.plan import Objective, Plan, PlannerInfo, StagePlacement
from edgesplit.core.precision import LinkEncoding, StageDtype
from edgesplit.core.profile import ModelProfile
from edgesplit.core.quality import PredictedQuality, QualityTable
from edgesplit.errors import ConfigError, PlanInfeasibleError
from edgesplit.planners.progress import ProgressFn

__all__ = [
    "PlanOptions",
    "PlannerFn",
    "PlannerResult",
    "PrecisionChoices",
    "available_planners",
    "get_planner",
    "make_plan",
    "register_planner",
]


@dataclass(frozen=True, slots=True)
class PlannerResult:
    """What a planner returns before it is wrapped into a Plan."""

    stages: tuple[StagePlacement, ...]
    optimal: bool
    lower_bound_s: float | None = None
    options: tuple[tuple[str, str | int | float | bool], ...] = ()


@dataclass(frozen=True, slots=True)
class PlanOptions:
    """How long a planner may search and how close to optimal it must get.

    time_limit_s: wall-clock budget (None: until optimal). target_gap: stop once the plan is
    within this relative gap of a certified lower bound (0: optimal). progress: called about
    once a second during long searches. Planners that are instant ignore all three.
    """

    time_limit_s: float | None = None
    target_gap: float = 0.0
    progress: ProgressFn | None = None


@dataclass(frozen=True, slots=True)
class PrecisionChoices:
    """Which stage dtypes and link encodings a plan may use, and the quality budget (issue 17).

    One dtype and one encoding: every planner plans in that precision (core.cost [Note:
    precision in the cost model]). Several: the 'optimal' planner chooses per stage and per
    link jointly with the partition (planners.precision_dp). `quality` (a QualityTable for
    the profile's model and units) lets the plan record its predicted loss; `max_quality_loss`
    (in the table's loss unit: percent or points) bounds it.
    """

    dtypes: tuple[StageDtype, ...] = ("float32",)
    link_encodings: tuple[LinkEncoding, ...] = ("float32",)
    quality: QualityTable | None = None
    max_quality_loss: float | None = None

    @property
    def single(self) -> bool:
        return len(self.dtypes) == 1 and len(self.link_encodings) == 1

    @classmethod
    def of_plan(cls, plan: Plan, profile: ModelProfile) -> PrecisionChoices:
        """The dtypes and link encodings `plan` uses, for a re-plan after a failure.

        Dtypes the profile has no figures for (a plan forced by `run --dtype`) are dropped
        (float32 when none is left); the quality budget is not in the plan, so a mixed plan's
        re-plan may spend more of it.
        """
        dtypes = [s.dtype for s in plan.stages if s.dtype in profile.dtypes] or ["float32"]
        links = [s.link_encoding for s in plan.stages[:-1]] or ["float32"]
        return cls(tuple(dict.fromkeys(dtypes)), tuple(dict.fromkeys(links)))


PlannerFn = Callable[[CostModel, Objective, PlanOptions], PlannerResult]

_REGISTRY: dict[str, tuple[PlannerFn, str]] = {}


def register_planner(name: str, version: str = "1") -> Callable[[PlannerFn], PlannerFn]:
    """Decorator: add a planner under `name`; duplicates are an error, never silently replaced."""

    def wrap(fn: PlannerFn) -> PlannerFn:
        if name in _REGISTRY:
            raise ValueError(f"planner '{name}' is already registered")
        _REGISTRY[name] = (fn, version)
        return fn

    return wrap


def available_planners() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_planner(name: str) -> tuple[PlannerFn, str]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown planner '{name}'; choose one of {sorted(_REGISTRY)}") from None


def _load_builtin() -> None:
    # Importing the modules runs their @register_planner decorators exactly once.
    from edgesplit.planners import baselines, pipeline_dp  # noqa: F401


def make_plan(
    profile: ModelProfile,
    cluster: Cluster,
    objective: Objective = "throughput",
    planner: str = "optimal",
    *,
    check_memory: bool = True,
    time_limit_s: float | None = None,
    target_gap: float = 0.0,
    progress: ProgressFn | None = None,
    precision: PrecisionChoices | None = None,
) -> Plan:
    """Run a registered planner and wrap its stages into a validated Plan with predictions.

    Args:
        time_limit_s: stop searching after this many seconds and return the best plan found,
            with `predicted.optimal` false and `predicted.gap` to the certified lower bound.
        target_gap: accept a plan within this relative gap of the lower bound (0: optimal).
        progress: called with `SolveProgress` about once a second during long searches.
        precision: allowed stage dtypes / link encodings and the quality budget
            (`PrecisionChoices`); None plans float32 as before.
    """
    if time_limit_s is not None and time_limit_s <= 0:
        raise ConfigError(f"time limit must be positive, not {time_limit_s} s")
    if not 0 <= target_gap < 1:
        raise ConfigError(f"target gap must be in [0, 1), not {target_gap}")
    if objective not in ("throughput", "latency"):
        raise ConfigError(f"objective must be 'throughput' or 'latency', not {objective!r}")
    fn, version = get_planner(planner)
    choices = _checked(precision or PrecisionChoices(), profile)
    started = time.perf_counter()
    options = PlanOptions(time_limit_s=time_limit_s, target_gap=target_gap, progress=progress)
    if choices.single:
        cost = CostModel(profile, cluster, choices.dtypes[0], choices.link_encodings[0])
        result = _stamped(fn(cost, objective, options), choices)
    else:
        if planner != "optimal":
            raise ConfigError(
                f"planner '{planner}' plans one dtype and one link encoding; the 'optimal' "
                "planner chooses among several"
            )
        from edgesplit.planners.precision_dp import solve_joint

        cost = CostModel(profile, cluster)
        result = solve_joint(cost, objective, choices)
    elapsed_s = time.perf_counter() - started
    if check_memory:
        _raise_if_overfull(cost, result.stages, planner)
    quality = _predicted_quality(choices, result.stages)
    predicted = cost.predict(
        result.stages,
        optimal=result.optimal,
        lower_bound_s=result.lower_bound_s,
        objective=objective,
        quality=quality,
    )
    return Plan(
        model=profile.model,
        profile_hash=profile.digest(),
        cluster_hash=cluster.digest(),
        batch_size=profile.batch_size,
        objective=objective,
        planner=PlannerInfo(
            name=planner, version=version, options=dict(result.options), elapsed_s=elapsed_s
        ),
        stages=result.stages,
        predicted=predicted,
    )


def _checked(choices: PrecisionChoices, profile: ModelProfile) -> PrecisionChoices:
    if not choices.dtypes or not choices.link_encodings:
        raise ConfigError("allow at least one dtype and one link encoding")
    if len(set(choices.dtypes)) != len(choices.dtypes) or len(set(choices.link_encodings)) != len(
        choices.link_encodings
    ):
        raise ConfigError("each dtype and link encoding may be listed once")
    if choices.max_quality_loss is not None:
        if choices.quality is None:
            raise ConfigError(
                "--max-quality-loss needs a quality table (--quality TABLE.json, written by "
                "`edgesplit quality`)"
            )
        if choices.max_quality_loss < 0:
            raise ConfigError(f"max quality loss must be >= 0, not {choices.max_quality_loss}")
    table = choices.quality
    if table is not None and table.num_units != profile.num_units:
        raise ConfigError(
            f"quality table of '{table.model}' has {table.num_units} units but the profile of "
            f"'{profile.model}' has {profile.num_units}; measure the table at the profile's "
            "unit granularity (edgesplit quality)"
        )
    missing = [d for d in choices.dtypes if d not in profile.dtypes]
    if missing:
        raise ConfigError(
            f"profile of '{profile.model}' has no figures for dtype(s) {missing} (present: "
            f"{list(profile.dtypes)}); run `edgesplit profile --dtype "
            f"{','.join(dict.fromkeys([profile.dtype, *choices.dtypes]))}`"
        )
    return choices


def _stamped(result: PlannerResult, choices: PrecisionChoices) -> PlannerResult:
    """A single-precision planner's stages with that dtype and encoding (final output float32)."""
    dtype, encoding = choices.dtypes[0], choices.link_encodings[0]
    if dtype == "float32" and encoding == "float32":
        return result
    last = len(result.stages) - 1
    stages = tuple(
        s.with_precision(dtype, encoding if i < last else "float32")
        for i, s in enumerate(result.stages)
    )
    options = (*result.options, ("dtype", dtype), ("link_encoding", encoding))
    return PlannerResult(stages, result.optimal, result.lower_bound_s, options)


def _predicted_quality(
    choices: PrecisionChoices, stages: Sequence[StagePlacement]
) -> PredictedQuality | None:
    """The plan's predicted loss under the table ([Note: quality loss]); raises past the budget."""
    table = choices.quality
    if table is None:
        return None
    loss = table.predicted_loss(
        [(s.start, s.end, s.dtype) for s in stages],
        [(s.end, s.link_encoding) for s in stages[:-1]],
    )
    budget = choices.max_quality_loss
    if budget is not None and loss > budget + 1e-9:
        raise PlanInfeasibleError(
            f"every plan within memory in {list(choices.dtypes)} with link encodings "
            f"{list(choices.link_encodings)} predicts a quality loss above {budget:g} "
            f"{table.loss_unit} (this one: {loss:.4g}); allow float32 or a larger "
            "--max-quality-loss"
        )
    return PredictedQuality(
        metric=table.metric,
        loss=loss,
        loss_unit=table.loss_unit,
        max_loss=budget,
        table_hash=table.digest(),
    )


def _raise_if_overfull(cost: CostModel, stages: Sequence[StagePlacement], planner: str) -> None:
    overfull = cost.overfull_stages(stages)
    if not overfull:
        return
    device, need, have = max(overfull, key=lambda t: t[1] - t[2])
    stage = next(s for s in stages if s.device == device)
    raise PlanInfeasibleError(
        f"planner '{planner}': stage on '{device}' needs {need / 1e6:.1f} MB for units "
        f"[{stage.start}, {stage.end}) but the device has {have / 1e6:.1f} MB "
        f"({(need - have) / 1e6:.1f} MB short); use the 'optimal' planner, add a device, "
        "or lower the batch size",
        shortfall_bytes=need - have,
    )
