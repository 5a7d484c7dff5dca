"""The robust-split capability (EASTER): measure a model, plan placements, evaluate, fine-tune.

Owns the glue between models (torch: width model, importance, masked evaluation, failout) and
planners/robust (pure: placements, surrogate scoring, Pareto search): `build_problem`,
`robust_plan`, `measure_plan` (real masked evaluation of a plan under device failures) and
`failout_study` (failure-aware fine-tuning vs an equal-steps control). Used by `edgesplit robust`
and benchmarks/robustness.py as `edgesplit.api.robust`.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from edgesplit.core.cluster import Cluster, DeviceSpec
from edgesplit.core.schema import FrozenModel, read_json_file
from edgesplit.errors import ConfigError
from edgesplit.models.importance import (
    ablation_importance,
    finetune,
    gradient_importance,
    measure_lost_sets,
)
from edgesplit.models.robust_tasks import RobustTask, build_task
from edgesplit.models.width import WidthModel
from edgesplit.planners.robust import (
    DEFAULT_PROBABILITIES,
    RobustPlan,
    RobustProblem,
    RobustUnit,
    StrategySpec,
    place,
    plan_robust,
)
from edgesplit.planners.robust_objective import (
    SurrogateCalibration,
    expected_from_k,
    failure_table,
)
from edgesplit.runtime.config import RuntimeConfig, ScheduledFault, parse_fault
from edgesplit.runtime.report import FailureRecord, LatencyStats, latency_stats

__all__ = [
    "DistributedCheck",
    "FailoutReport",
    "MeasuredPlan",
    "RobustPlan",
    "RobustProblem",
    "RobustRunReport",
    "RuntimeConfig",
    "ScheduledFault",
    "build_problem",
    "build_task",
    "distributed_check",
    "drill_problem",
    "failout_study",
    "load_robust_plan",
    "load_robust_problem",
    "load_task",
    "lost_units",
    "measure_plan",
    "parse_fault",
    "robust_plan",
    "run_robust",
    "synthetic_cluster",
]

log = logging.getLogger(__name__)

ImportanceMethod = Literal["ablation", "gradient"]
_DEVICE_FLOPS = 1e10  # per device, as planners.robust.predicted_latency_s assumes


def synthetic_cluster(
    num_devices: int, probability: float = 0.1, memory_mb: float = 1e6, bandwidth_mbps: float = 100
) -> Cluster:
    """A coordinator `coord` (the source) plus `num_devices` identical shard devices `dev0..`."""
    devices = [DeviceSpec(name="coord", kind="edge-server", memory_mb=memory_mb)]
    devices += [
        DeviceSpec(
            name=f"dev{i}", kind="edge-board", memory_mb=memory_mb, failure_probability=probability
        )
        for i in range(num_devices)
    ]
    return Cluster.model_validate(
        {
            "source": "coord",
            "defaults": {"bandwidth_mbps": bandwidth_mbps, "latency_ms": 2.0},
            "devices": [d.model_dump() for d in devices],
        }
    )


def lost_units(replicas: Sequence[Sequence[int]], failed: int) -> list[int]:
    """Units every holder of which is in the failed-device bitmask."""
    return [u for u, r in enumerate(replicas) if all((failed >> d) & 1 for d in r)]


def build_problem(
    task: RobustTask,
    *,
    seed: int = 0,
    importance: ImportanceMethod = "ablation",
    num_random: int = 24,
    structured_devices: Sequence[int] = (4, 8),
    num_structured: int = 12,
) -> RobustProblem:
    """Measure importance and calibrate the surrogate against real masked evaluations.

    Calibration sets (all on the calibration split): `num_random` random unit subsets with a lost
    fraction spread over (0, 0.8], plus `num_structured` device-failure lost sets per device
    count from the split / uniform(2) / tiered / pipeline placements.
    """
    rng = np.random.default_rng(seed)
    start = time.process_time()
    if importance == "ablation":
        d_loss, _ = ablation_importance(task)
    else:
        d_loss = gradient_importance(task)
    units = _units(task.model, [float(d_loss[u.index]) for u in task.model.units])
    n_units = len(units)
    lost_sets: list[list[int]] = []
    for q in np.linspace(0.02, 0.8, num_random):
        size = max(1, round(q * n_units))
        lost_sets.append(sorted(rng.choice(n_units, size=size, replace=False).tolist()))
    tokens = task.tokens_per_request()
    base = _problem(
        task.name,
        task.model,
        tokens,
        units,
        SurrogateCalibration(
            metric_name=task.metric_name,
            higher_is_better=task.higher_is_better,
            intact_metric=0.0,
            chance_metric=task.chance_metric,
            lost_importance=(),
            measured_metric=(),
        ),
    )
    specs = [
        StrategySpec(name="split"),
        StrategySpec(name="uniform", replication=2),
        StrategySpec(name="tiered", vital_fraction=0.25),
        StrategySpec(name="pipeline", standby=0),
    ]
    for num_devices in structured_devices:
        placements = [place(s, base, num_devices, [0.1] * num_devices) for s in specs]
        for j in range(num_structured):
            replicas = placements[j % len(placements)]
            k = int(rng.integers(1, num_devices))
            failed = int(sum(1 << int(d) for d in rng.choice(num_devices, size=k, replace=False)))
            lost = lost_units(replicas, failed)
            if lost:
                lost_sets.append(lost)
    measured = measure_lost_sets(task, lost_sets, split="calib")
    intact = task.evaluate(None, "calib").metric
    importance_arr = base.effective_importance()  # the surrogate's x-axis
    calibration = SurrogateCalibration(
        metric_name=task.metric_name,
        higher_is_better=task.higher_is_better,
        intact_metric=intact,
        chance_metric=task.chance_metric,
        lost_importance=tuple(float(importance_arr[s].sum()) for s in lost_sets),
        measured_metric=tuple(m[0] for m in measured),
    )
    log.info(
        "problem for %s: %d units, %.1f CPU-s", task.name, n_units, time.process_time() - start
    )
    return _problem(task.name, task.model, tokens, units, calibration)


def drill_problem(model: WidthModel, tokens_per_request: int, name: str = "drill") -> RobustProblem:
    """Every unit equally important, a flat surrogate, nothing measured: for placing and
    running a plan (latency, failover drills), not for judging its accuracy."""
    units = _units(model, [1.0] * model.num_units)
    calibration = SurrogateCalibration(
        metric_name="accuracy",
        higher_is_better=True,
        intact_metric=1.0,
        chance_metric=0.0,
        lost_importance=(1.0, float(len(units))),
        measured_metric=(0.9, 0.0),
    )
    return _problem(name, model, tokens_per_request, units, calibration)


def _units(model: WidthModel, importance: Sequence[float]) -> tuple[RobustUnit, ...]:
    return tuple(
        RobustUnit(
            name=u.name,
            layer_index=u.layer_index,
            kind=u.kind,
            param_bytes=u.param_bytes,
            flops_per_token=u.flops_per_token,
            importance=importance[u.index],
        )
        for u in model.units
    )


def _problem(
    name: str,
    model: WidthModel,
    tokens: int,
    units: tuple[RobustUnit, ...],
    calibration: SurrogateCalibration,
) -> RobustProblem:
    return RobustProblem(
        model=name,
        units=units,
        shared_bytes=model.shared_bytes,
        hidden_bytes=tokens * model.hidden_size * 4,
        tokens_per_request=tokens,
        calibration=calibration,
    )


def robust_plan(
    problem: RobustProblem,
    cluster: Cluster,
    *,
    memory_copies: float = 0.5,
    probability: float = 0.1,
    strategies: Sequence[StrategySpec] | None = None,
) -> tuple[RobustPlan, list[RobustPlan], list[RobustPlan]]:
    """(chosen, Pareto front, all candidates): see planners.robust.plan_robust."""
    return plan_robust(
        problem,
        cluster,
        memory_copies=memory_copies,
        probability=probability,
        strategies=strategies,
    )


class MeasuredPlan(FrozenModel):
    """Real masked evaluation of a plan under device failures (k = 0..N, all or sampled sets)."""

    strategy: str
    num_devices: int
    memory_copies: float
    metric_name: str
    mean_by_k: tuple[float, ...]  # k = 0..N−1
    worst_by_k: tuple[float, ...]
    num_sets_by_k: tuple[int, ...]
    exhaustive: bool
    expected_metric: dict[str, float]  # from per-k means with binomial weights (i.i.d. p)
    surrogate_expected_metric: dict[str, float]
    surrogate_mae: float  # mean |surrogate − real| over the measured sets
    extra_by_k: dict[str, tuple[float, ...]] = Field(default_factory=dict)
    eval_s: Annotated[float, Field(ge=0)] = 0.0


def measure_plan(
    task: RobustTask,
    plan: RobustPlan,
    problem: RobustProblem,
    *,
    probabilities: Sequence[float] = DEFAULT_PROBABILITIES,
    max_sets_per_k: int | None = None,
    seed: int = 0,
    cache: dict[tuple[int, ...], tuple[float, float, dict[str, float]]] | None = None,
) -> MeasuredPlan:
    """Evaluate `plan` for real: every failed-device set of each size k (or up to
    `max_sets_per_k`, always including the surrogate's worst set of that size)."""
    start = time.process_time()
    rng = np.random.default_rng(seed)
    replicas = plan.replica_indices()
    n = len(plan.devices)
    surrogate = problem.surrogate()
    table = failure_table(replicas, n, surrogate) if n <= 12 else None
    cache = {} if cache is None else cache
    means, worst, counts, errors = [], [], [], []
    extras: dict[str, list[float]] = {}
    exhaustive = True
    higher = task.higher_is_better
    for k in range(n + 1):
        subsets = [sum(1 << d for d in c) for c in itertools.combinations(range(n), k)]
        if max_sets_per_k is not None and len(subsets) > max_sets_per_k:
            exhaustive = False
            chosen: list[int] = []
            if table is not None:
                sel = np.flatnonzero(table.num_failed == k)
                worst_i = sel[
                    np.argmin(table.metric[sel]) if higher else np.argmax(table.metric[sel])
                ]
                chosen.append(int(table.failed[worst_i]))
            rest = [s for s in subsets if s not in chosen]
            picks = rng.choice(len(rest), size=max_sets_per_k - len(chosen), replace=False)
            subsets = chosen + [rest[int(i)] for i in picks]
        lost = [lost_units(replicas, f) for f in subsets]
        results = measure_lost_sets(task, lost, cache=cache)
        values = np.array([r[0] for r in results])
        if table is not None:
            predicted = np.array([table.metric[int(f)] for f in subsets])
            errors.extend(np.abs(predicted - values).tolist())
        means.append(float(values.mean()))
        worst.append(float(values.min() if higher else values.max()))
        counts.append(len(subsets))
        for key in results[0][2]:
            extras.setdefault(key, []).append(float(np.mean([r[2][key] for r in results])))
    expected = {f"{p:g}": expected_from_k(means, n, p) for p in probabilities}
    surrogate_expected = {}
    if table is not None:
        surrogate_expected = {f"{p:g}": table.expected(np.full(n, p)) for p in probabilities}
    return MeasuredPlan(
        strategy=plan.strategy.label,
        num_devices=n,
        memory_copies=plan.predicted.memory_copies,
        metric_name=task.metric_name,
        mean_by_k=tuple(means[:n]),
        worst_by_k=tuple(worst[:n]),
        num_sets_by_k=tuple(counts[:n]),
        exhaustive=exhaustive,
        expected_metric=expected,
        surrogate_expected_metric=surrogate_expected,
        surrogate_mae=float(np.mean(errors)) if errors else math.nan,
        extra_by_k={k: tuple(v[:n]) for k, v in extras.items()},
        eval_s=time.process_time() - start,
    )


class FailoutReport(FrozenModel):
    """Failure-aware fine-tuning vs an unmasked control of equal steps, each re-placed.

    `failout` / `control`: each arm under its own re-made chosen plan; `*_split`: each arm under
    plain split (no replication, so every failure costs units and the models' own robustness
    shows directly).
    """

    task: str
    steps: int
    rounds: int
    train_probability: float
    num_devices: int
    memory_copies: float
    before: MeasuredPlan
    before_split: MeasuredPlan
    failout: MeasuredPlan
    control: MeasuredPlan
    failout_split: MeasuredPlan
    control_split: MeasuredPlan
    train_s: dict[str, float]


def failout_study(
    task: RobustTask,
    problem: RobustProblem,
    cluster: Cluster,
    *,
    steps: int = 200,
    rounds: int = 2,
    train_probability: float = 0.25,
    memory_copies: float = 0.5,
    probability: float = 0.1,
    seed: int = 0,
    num_random: int = 16,
) -> FailoutReport:
    """Failout vs control. Each of `rounds`: fine-tune steps/rounds (failout: keep-masks from
    i.i.d. device failures at `train_probability` under the current placement), re-estimate
    importance, re-plan. Both arms end with their own re-made plan, measured for real."""
    chosen, _, _ = robust_plan(
        problem, cluster, memory_copies=memory_copies, probability=probability
    )
    split_only = [StrategySpec(name="split")]
    before = measure_plan(task, chosen, problem, seed=seed)
    split_plan, _, _ = robust_plan(problem, cluster, memory_copies=1.0, strategies=split_only)
    before_split = measure_plan(task, split_plan, problem, seed=seed)
    arms: dict[str, MeasuredPlan] = {}
    train_s: dict[str, float] = {}
    for arm in ("failout", "control"):
        current_task, current_problem, plan = task, problem, chosen
        total = 0.0
        for r in range(rounds):
            sampler = _keep_sampler(plan, task.model.num_units, train_probability)
            result = finetune(
                current_task,
                steps=steps // rounds,
                seed=seed * 100 + r,
                keep_sampler=sampler if arm == "failout" else None,
            )
            total += result.train_s
            current_task = result.task
            current_problem = build_problem(
                current_task,
                seed=seed,
                num_random=num_random,
                structured_devices=(len(plan.devices),),
                num_structured=8,
            )
            plan, _, _ = robust_plan(
                current_problem, cluster, memory_copies=memory_copies, probability=probability
            )
        arms[arm] = measure_plan(current_task, plan, current_problem, seed=seed)
        split_plan, _, _ = robust_plan(
            current_problem, cluster, memory_copies=1.0, strategies=split_only
        )
        arms[arm + "_split"] = measure_plan(current_task, split_plan, current_problem, seed=seed)
        train_s[arm] = total
    return FailoutReport(
        task=task.name,
        steps=steps,
        rounds=rounds,
        train_probability=train_probability,
        num_devices=len(chosen.devices),
        memory_copies=memory_copies,
        before=before,
        before_split=before_split,
        failout=arms["failout"],
        control=arms["control"],
        failout_split=arms["failout_split"],
        control_split=arms["control_split"],
        train_s=train_s,
    )


def _keep_sampler(
    plan: RobustPlan, num_units: int, p: float
) -> Callable[[np.random.Generator], np.ndarray]:
    replicas = plan.replica_indices()
    n = len(plan.devices)

    def sample(rng: np.random.Generator) -> np.ndarray:
        failed = int(sum(1 << d for d in range(n) if rng.random() < p))
        keep = np.ones(num_units, dtype=np.float32)
        keep[lost_units(replicas, failed)] = 0.0
        return keep

    return sample


def load_task(name: str, *, seed: int = 0, checkpoint: Path | None = None) -> RobustTask:
    """A study task by name (see models.robust_tasks.task_names)."""
    return build_task(name, seed=seed, checkpoint=checkpoint)


class DistributedCheck(FrozenModel):
    """A robust plan run on Ray shard actors, some killed, against the masked evaluation."""

    devices: tuple[str, ...]
    killed: tuple[str, ...]
    detected_failed: tuple[str, ...]
    lost_units: int
    failovers: int
    max_abs_diff_intact: float  # before any kill: distributed vs intact model
    max_abs_diff_masked: float  # after the kills: distributed vs masked evaluation
    wall_s: float


def distributed_check(
    task: RobustTask,
    plan: RobustPlan,
    kill: Sequence[str],
    *,
    deadline_s: float = 30.0,
    batch_size: int = 8,
) -> DistributedCheck:
    """Start one shard stage per device (Ray actors on the authenticated channel), run a batch,
    kill `kill`, run it again; compare with the intact model and with the masked evaluation of
    the same lost set."""
    from edgesplit.runtime.robust import RobustCoordinator, shard_payloads
    from edgesplit.runtime.shards import ChannelShardBackend

    start = time.perf_counter()
    unknown = sorted(set(kill) - set(plan.devices))
    if unknown:
        raise ConfigError(f"cannot kill {unknown}: the plan's devices are {list(plan.devices)}")
    replicas = plan.replica_indices()
    inputs = {k: v[:batch_size] for k, v in task.evaluation[0][0].items()}
    backend = ChannelShardBackend(
        plan.devices, shard_payloads(task.model, replicas, len(plan.devices))
    )
    try:
        coordinator = RobustCoordinator(
            task.model, plan.devices, replicas, backend, deadline_s=deadline_s
        )
        out, _ = coordinator.forward(inputs)
        diff_intact = task.max_abs_diff(inputs, out, task.masked_output(inputs, []))
        for device in kill:
            backend.kill(device)
        out, report = coordinator.forward(inputs)
        failed = {plan.devices.index(d) for d in kill}
        lost = [u for u, r in enumerate(replicas) if set(r) <= failed]
        diff_masked = task.max_abs_diff(inputs, out, task.masked_output(inputs, lost))
    finally:
        backend.close()
    return DistributedCheck(
        devices=plan.devices,
        killed=tuple(kill),
        detected_failed=tuple(report.failed_devices),
        lost_units=len(report.lost_units),
        failovers=report.failovers,
        max_abs_diff_intact=diff_intact,
        max_abs_diff_masked=diff_masked,
        wall_s=time.perf_counter() - start,
    )


class RobustRunReport(FrozenModel):
    """A width plan run on shard stages (the one stage worker and channel), emulated or real.

    latency_s: per request, device seconds (wall / time_scale); predicted_latency_s: the plan's.
    failures: the same `FailureRecord`s as a pipeline run (detected by the coordinator's
    deadline or a dead actor; recovered = the end of the first request after detection).
    """

    model: str
    strategy: str
    coordinator: str
    devices: tuple[str, ...]
    compute: Literal["real", "emulated"]
    link_shaping: str
    time_scale: float
    requests: int
    completed: int
    latency_s: LatencyStats
    predicted_latency_s: float
    failed_devices: tuple[str, ...]
    failovers: int
    lost_units: tuple[int, ...]
    failures: tuple[FailureRecord, ...]
    wall_s: float
    notes: str = ""


def run_robust(
    plan: RobustPlan,
    cluster: Cluster,
    model: WidthModel,
    inputs: Mapping[str, torch.Tensor],
    *,
    config: RuntimeConfig | None = None,
    requests: int = 16,
    faults: Sequence[ScheduledFault] = (),
    deadline_s: float | None = None,
) -> RobustRunReport:
    """Run `plan` like a pipeline plan: one shard stage per device on Ray, the coordinator here
    (the cluster's source), links shaped as `config.link_shaping` says, `faults` injected at
    their times (`--fault KIND:DEVICE@S`), `requests` requests of `inputs` one after another.

    `compute="emulated"` (the default) sends no weights: each shard sleeps the planner's time
    per unit (its mean FLOPs per token x tokens / 1e10 FLOP/s) and returns real-size zeros.
    """
    from edgesplit.runtime.failover import Suspicion
    from edgesplit.runtime.robust import RobustCoordinator, shard_payloads
    from edgesplit.runtime.shards import ChannelShardBackend

    config = config or RuntimeConfig()
    replicas = plan.replica_indices()
    if len(replicas) != model.num_units:
        raise ConfigError(f"plan has {len(replicas)} units, the model {model.num_units}")
    for device in (*plan.devices, plan.coordinator):
        cluster.device(device)
    unknown = sorted({f.device for f in faults} - set(plan.devices))
    if unknown:
        raise ConfigError(f"faults for {unknown}; the plan's devices are {list(plan.devices)}")
    with torch.no_grad():
        tokens = int(model.embed(dict(inputs))[0].shape[1])
    unit_s = float(np.mean([u.flops_per_token for u in model.units])) * tokens / _DEVICE_FLOPS
    n = len(plan.devices)
    payloads = (
        [({}, {})] * n if config.compute == "emulated" else shard_payloads(model, replicas, n)
    )
    backend = ChannelShardBackend(
        plan.devices, payloads, config, cluster=cluster, unit_s=unit_s * config.time_scale
    )
    deadline = deadline_s or max(config.hang_timeout_s, 10 * plan.predicted.latency_s)
    coordinator = RobustCoordinator(model, plan.devices, replicas, backend, deadline)
    timers = [threading.Timer(f.at_s, backend.group.inject, (f,)) for f in sorted(faults, key=_at)]
    latencies, ends, failovers, lost = [], [], 0, set()
    try:
        backend.group.check_faults(faults)
        t0 = time.time()
        for timer in timers:
            timer.start()
        for _ in range(requests):
            started = time.time()
            _, combined = coordinator.forward(dict(inputs))
            ends.append(time.time())
            latencies.append((ends[-1] - started) / config.time_scale)
            failovers += combined.failovers
            lost |= combined.lost_units
        log_ = backend.group.failures
        for device, cause, wall_s in coordinator.detections:
            suspicion = Suspicion(device, cause, wall_s, "no partial sum")  # type: ignore[arg-type]
            log_.detected([suspicion], wall_s, "standby")
        records = log_.records(t0, ends)
    finally:
        for timer in timers:
            timer.cancel()
        backend.close()
    return RobustRunReport(
        model=plan.model,
        strategy=plan.strategy.label,
        coordinator=plan.coordinator,
        devices=plan.devices,
        compute=config.compute,
        link_shaping=config.link_shaping,
        time_scale=config.time_scale,
        requests=requests,
        completed=len(ends),
        latency_s=latency_stats(latencies),
        predicted_latency_s=plan.predicted.latency_s,
        failed_devices=tuple(d for d, _, _ in coordinator.detections),
        failovers=failovers,
        lost_units=tuple(sorted(lost)),
        failures=tuple(records),
        wall_s=time.time() - t0,
        notes="; ".join(
            f"{f.kind}:{f.device}@{f.at_s:g} never fired: the run took {ends[-1] - t0:.2f} s"
            for f in faults
            if ends and f.at_s > ends[-1] - t0
        ),
    )


def _at(fault: ScheduledFault) -> float:
    return fault.at_s


def load_robust_plan(path: Path | str) -> RobustPlan:
    return read_json_file(RobustPlan, Path(path))


def load_robust_problem(path: Path | str) -> RobustProblem:
    return read_json_file(RobustProblem, Path(path))
