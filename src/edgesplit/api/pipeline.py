"""The pipeline capability (EdgePipe): profile(), plan(), compare(), simulate(), run().

Everything the CLI does for split inference goes through here, so scripts get the same behaviour.
This module wires layers together (e.g. it injects a planner into the runtime for re-planning);
it holds no logic of its own beyond that.

Example:
    >>> from edgesplit import api
    >>> profile = api.import_pipeedge_profile("google/vit-large-patch16-224")
    >>> cluster = api.load_cluster("examples/pipeedge-4+4.toml")
    >>> plan = api.plan(profile, cluster)
    >>> round(plan.predicted.period_s, 2)
    5.04
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from edgesplit.core.cluster import Cluster, load_cluster
from edgesplit.core.plan import Objective, Plan
from edgesplit.core.precision import LinkEncoding, StageDtype
from edgesplit.core.profile import ModelProfile
from edgesplit.core.quality import QualityTable
from edgesplit.core.schema import read_json_file, write_json_file
from edgesplit.errors import EdgesplitError
from edgesplit.planners import PrecisionChoices, available_planners, make_plan
from edgesplit.planners.progress import ProgressFn
from edgesplit.runtime.config import RuntimeConfig, ScheduledFault, parse_fault, parse_kill
from edgesplit.runtime.report import RunHealth, RunReport
from edgesplit.sim import SimConfig, SimResult
from edgesplit.sim import simulate as _simulate

__all__ = [
    "PlannerOutcome",
    "RunHealth",
    "RunReport",
    "RuntimeConfig",
    "ScheduledFault",
    "available_planners",
    "compare",
    "import_pipeedge_profile",
    "load_cluster",
    "load_plan",
    "load_profile",
    "parse_fault",
    "parse_kill",
    "plan",
    "prepare_profile",
    "profile",
    "run",
    "save",
    "simulate",
]

logger = logging.getLogger(__name__)


def load_profile(path: Path | str) -> ModelProfile:
    return read_json_file(ModelProfile, Path(path))


def load_plan(path: Path | str) -> Plan:
    return read_json_file(Plan, Path(path))


def save(obj: BaseModel, path: Path | str) -> Path:
    """Write a profile, plan or report as stable JSON."""
    return write_json_file(obj, Path(path))


def import_pipeedge_profile(
    model: str, batch_size: int = 8, data_dir: Path | None = None
) -> ModelProfile:
    """A profile from PipeEdge's published measurements (Minnowboard, RCC-VE boards)."""
    from edgesplit.profile.pipeedge import DEFAULT_PIPEEDGE_DIR, import_pipeedge

    return import_pipeedge(model, batch_size, data_dir or DEFAULT_PIPEEDGE_DIR)


def profile(
    model: str,
    batch_size: int = 1,
    *,
    repeats: int = 5,
    warmup: int = 2,
    num_threads: int = 1,
    device_kind: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    seq_len: int | None = None,
    dtypes: Sequence[StageDtype] = ("float32",),
) -> ModelProfile:
    """Measure every unit of `model` (a preset name or a checkpoint directory) on this host.

    `seq_len` sets the token count of text models' example inputs (default: the preset's);
    `dtypes` beyond float32 add each unit's weight bytes and times in those dtypes.
    """
    from edgesplit.models import model_spec_from_name
    from edgesplit.profile.measure import profile_model

    return profile_model(
        model_spec_from_name(model),
        batch_size,
        repeats=repeats,
        warmup=warmup,
        num_threads=num_threads,
        device_kind=device_kind,
        progress=progress,
        seq_len=seq_len,
        dtypes=dtypes,
    )


def prepare_profile(profile: ModelProfile, cluster: Cluster) -> ModelProfile:
    """Add the cluster's derived kinds ([[kinds]] in cluster.toml) to the profile.

    A note about how `relative_to = "host"` was bound (`Cluster.check_kinds`) is logged once
    per process as a warning (the command line shows it).

    Raises:
        ProfileMissingError: a device's kind has no times (named by its cluster.toml entry),
            or a [[kinds]] entry would replace a measured kind.
    """
    for note in cluster.check_kinds(profile.device_kinds, profile.model):
        _note_once(note)
    measured = profile.device_kinds  # "host" means the kind measured here, not a derived one
    for kind in cluster.kinds:
        relative_to = kind.relative_to
        if relative_to == "host" and len(measured) == 1:
            relative_to = measured[0]
        profile = profile.with_derived_kind(kind.name, relative_to, kind.slowdown)
    return profile


@functools.cache
def _note_once(note: str) -> None:
    # Once per process: a generation profile prepares its decode and prefill parts, `run
    # --dtype` prepares again to re-predict; the user needs to read it once.
    logger.warning("%s", note)


def plan(
    profile: ModelProfile,
    cluster: Cluster,
    objective: Objective = "throughput",
    planner: str = "optimal",
    *,
    time_limit_s: float | None = None,
    target_gap: float = 0.0,
    progress: ProgressFn | None = None,
    dtypes: Sequence[StageDtype] = ("float32",),
    link_encodings: Sequence[LinkEncoding] = ("float32",),
    quality: QualityTable | None = None,
    max_quality_loss: float | None = None,
) -> Plan:
    """Partition the profile's units over the cluster (see docs/architecture.md §4).

    `time_limit_s` bounds the search (the best plan found is returned with its certified gap),
    `target_gap` accepts a plan that close to the lower bound, `progress` receives
    `SolveProgress` reports on long searches (docs/planner.md). `dtypes` / `link_encodings`
    are the stage dtypes and link encodings allowed (several: chosen per stage and per link
    with the partition; docs/precision.md "Planning with dtypes"), `quality` a quality table
    whose predicted loss the plan records and `max_quality_loss` bounds.
    """
    return make_plan(
        prepare_profile(profile, cluster),
        cluster,
        objective,
        planner,
        time_limit_s=time_limit_s,
        target_gap=target_gap,
        progress=progress,
        precision=PrecisionChoices(tuple(dtypes), tuple(link_encodings), quality, max_quality_loss),
    )


class PlannerOutcome:
    """One row of a comparison: a plan, or the reason a planner could not produce one."""

    def __init__(self, planner: str, plan: Plan | None, error: str | None) -> None:
        self.planner = planner
        self.plan = plan
        self.error = error


def compare(
    profile: ModelProfile,
    cluster: Cluster,
    objective: Objective = "throughput",
    planners: list[str] | None = None,
) -> list[PlannerOutcome]:
    """Run several planners on one scenario; infeasible ones report why instead of failing."""
    outcomes = []
    for name in planners or available_planners():
        try:
            outcomes.append(PlannerOutcome(name, plan(profile, cluster, objective, name), None))
        except EdgesplitError as e:
            outcomes.append(PlannerOutcome(name, None, str(e)))
    return outcomes


def simulate(
    plan: Plan, profile: ModelProfile, cluster: Cluster, config: SimConfig | None = None
) -> SimResult:
    """Discrete-event simulation of the plan; steady state agrees with the cost model."""
    return _simulate(plan, prepare_profile(profile, cluster), cluster, config)


def run(
    plan: Plan,
    cluster: Cluster,
    profile: ModelProfile,
    *,
    config: RuntimeConfig | None = None,
    requests: int | Iterable[Mapping[str, np.ndarray] | None] = 64,
    faults: Sequence[ScheduledFault] = (),
    planner: str = "optimal",
    on_result: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    on_error: Callable[[int, str], None] | None = None,
    on_health: Callable[[RunHealth], None] | None = None,
    progress: Callable[[int, int | None, float], None] | None = None,
    timeline_path: Path | str | None = None,
    metrics_port: int | None = None,
) -> RunReport:
    """Run a plan on Ray (embedded locally, or the cluster in `config.ray_address`).

    After a device fails and no standby is left, the runtime calls back here to re-plan over
    the survivors with `planner` (the runtime itself never imports planners). A server feeds
    `requests` from its queue (None = nothing now) and follows `on_error` / `on_health`
    (see `runtime.pipeline.run_plan`).
    """
    from edgesplit.runtime import run_plan

    prepared = prepare_profile(profile, cluster)
    standby = set((config or RuntimeConfig()).standby_devices)

    def replanner(survivors: Cluster) -> Plan:
        spare = standby & set(survivors.device_names)
        return make_plan(
            prepared,
            survivors.without(spare),
            plan.objective,
            planner,
            precision=PrecisionChoices.of_plan(plan, prepared),
        )

    return run_plan(
        plan,
        cluster,
        prepared,
        None,
        config,
        requests,
        replanner,
        faults=faults,
        on_result=on_result,
        on_error=on_error,
        on_health=on_health,
        progress=progress,
        timeline_path=timeline_path,
        metrics_port=metrics_port,
    )
