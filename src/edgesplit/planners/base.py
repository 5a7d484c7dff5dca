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
from edgesplit.core.profile import ModelProfile
from edgesplit.errors import ConfigError, PlanInfeasibleError
from edgesplit.planners.progress import ProgressFn

__all__ = [
    "PlanOptions",
    "PlannerFn",
    "PlannerResult",
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
) -> Plan:
    """Run a registered planner and wrap its stages into a validated Plan with predictions.

    Args:
        time_limit_s: stop searching after this many seconds and return the best plan found,
            with `predicted.optimal` false and `predicted.gap` to the certified lower bound.
        target_gap: accept a plan within this relative gap of the lower bound (0: optimal).
        progress: called with `SolveProgress` about once a second during long searches.
    """
    if time_limit_s is not None and time_limit_s <= 0:
        raise ConfigError(f"time limit must be positive, not {time_limit_s} s")
    if not 0 <= target_gap < 1:
        raise ConfigError(f"target gap must be in [0, 1), not {target_gap}")
    if objective not in ("throughput", "latency"):
        raise ConfigError(f"objective must be 'throughput' or 'latency', not {objective!r}")
    fn, version = get_planner(planner)
    cost = CostModel(profile, cluster)
    started = time.perf_counter()
    options = PlanOptions(time_limit_s=time_limit_s, target_gap=target_gap, progress=progress)
    result = fn(cost, objective, options)
    elapsed_s = time.perf_counter() - started
    if check_memory:
        _raise_if_overfull(cost, result.stages, planner)
    predicted = cost.predict(
        result.stages,
        optimal=result.optimal,
        lower_bound_s=result.lower_bound_s,
        objective=objective,
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
