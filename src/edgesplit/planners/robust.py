"""Robust width placement after EASTER (split every layer in width, replicate its vital slice,
stripe the rest): which devices hold which attention heads and FFN neuron groups, so that a failed
device costs a little accuracy instead of the whole inference.

Owns the robust problem/plan files (`RobustProblem`, `RobustPlan`), the placement strategies
(`split`, `uniform(r)`, `tiered(v)`, `greedy`, `ksafe(k)`, `full`, `pipeline` with standby), their
scoring (memory per device, predicted latency, expected metric under independent failures, mean and
worst metric over k failures, via `robust_objective`) and the Pareto search `plan_robust`.
Pure: imports core only (importance scores arrive as numbers measured in models/importance.py).

Placement = per unit an ordered replica list of device indices; the first live replica computes
the unit, others stand by (docs/architecture.md §5.3). Worked example, 4 devices, one layer with 4
heads of importance [0.9, 0.1, 0.5, 0.2]: `split` stripes heads by importance in snake order
(h0→d0, h2→d1, h3→d2, h1→d3); `tiered(0.25)` replicates the vital h0 on all 4 devices and keeps
the rest once; losing d0 then costs nothing, losing d1 costs h2 (0.5).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field

from edgesplit.core.cluster import Cluster
from edgesplit.core.plan import PlannerInfo
from edgesplit.core.schema import FrozenModel, VersionedFile
from edgesplit.errors import ConfigError, PlanInfeasibleError
from edgesplit.planners.robust_objective import (
    Surrogate,
    SurrogateCalibration,
    failure_table,
)

__all__ = [
    "DEFAULT_PROBABILITIES",
    "RobustPlan",
    "RobustPredicted",
    "RobustProblem",
    "RobustUnit",
    "StrategyName",
    "StrategySpec",
    "default_strategies",
    "evaluate_placement",
    "memory_bytes_per_device",
    "pareto_front",
    "place",
    "plan_robust",
    "predicted_latency_s",
]

StrategyName = Literal["split", "uniform", "tiered", "greedy", "ksafe", "full", "pipeline"]
UnitKind = Literal["attn", "ffn"]
DEFAULT_PROBABILITIES = (0.01, 0.05, 0.1, 0.2)
NonNegInt = Annotated[int, Field(ge=0)]


class RobustUnit(FrozenModel):
    """One width unit as the planner sees it (measured elsewhere)."""

    name: str
    layer_index: NonNegInt
    kind: UnitKind
    param_bytes: NonNegInt
    flops_per_token: NonNegInt
    importance: float  # Δloss on calibration data when this unit alone is lost


class RobustProblem(VersionedFile):
    """Everything a robust planner needs about a model: units, importance, surrogate calibration."""

    KIND: ClassVar[str] = "edgesplit.robust_problem"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: Literal["edgesplit.robust_problem"] = "edgesplit.robust_problem"
    schema_version: Literal[1] = 1
    model: str
    units: Annotated[tuple[RobustUnit, ...], Field(min_length=1)]
    shared_bytes: NonNegInt  # embeddings, norms, shared biases, head: on the coordinator
    hidden_bytes: NonNegInt  # one request's hidden state (sent out and summed back per part)
    tokens_per_request: Annotated[int, Field(ge=1)]
    calibration: SurrogateCalibration

    @property
    def copy_bytes(self) -> int:
        """Bytes of one copy of the shardable part (the unit of `memory_copies`)."""
        return sum(u.param_bytes for u in self.units)

    def parts(self) -> list[list[int]]:
        """Unit indices grouped by (layer, kind) in model order."""
        groups: dict[tuple[int, str], list[int]] = {}
        for i, u in enumerate(self.units):
            groups.setdefault((u.layer_index, u.kind), []).append(i)
        return [groups[key] for key in sorted(groups, key=lambda k: (k[0], k[1] != "attn"))]

    def effective_importance(self) -> np.ndarray:
        """Importance clipped below at 2 % of the mean positive importance.

        Single-unit ablation rates many units ~0 (or slightly negative), yet losing many of them
        together hurts; the floor keeps them replicable and counted by the surrogate.
        """
        raw = np.array([u.importance for u in self.units], dtype=float)
        positive = raw.clip(min=0.0)
        floor = 0.02 * float(positive.mean()) if positive.any() else 1e-12
        out: np.ndarray = np.maximum(raw, floor)
        return out

    def surrogate(self) -> Surrogate:
        return Surrogate.fit(self.effective_importance(), self.calibration)


class StrategySpec(FrozenModel):
    """A strategy and its parameter; `memory_copies` caps greedy/ksafe (per device)."""

    name: StrategyName
    replication: Annotated[int, Field(ge=1)] = 1  # uniform(r)
    vital_fraction: Annotated[float, Field(ge=0, le=1)] = 0.25  # tiered(v)
    vital_replication: Annotated[int, Field(ge=0)] = 0  # tiered: 0 = on every device
    k: Annotated[int, Field(ge=1)] = 1  # ksafe(k)
    standby: Annotated[int, Field(ge=0)] = 1  # pipeline with s standby replicas
    memory_copies: Annotated[float, Field(gt=0)] = 0.5  # greedy / ksafe cap

    @property
    def label(self) -> str:
        return {
            "split": "split",
            "uniform": f"uniform(r={self.replication})",
            "tiered": f"tiered(v={self.vital_fraction:g})",
            "greedy": f"greedy(m={self.memory_copies:g})",
            "ksafe": f"ksafe(k={self.k},m={self.memory_copies:g})",
            "full": "full",
            "pipeline": f"pipeline(standby={self.standby})",
        }[self.name]


class RobustPredicted(FrozenModel):
    """Scores of one placement (surrogate metric unless `measured`)."""

    memory_bytes_per_device: tuple[float, ...]
    memory_copies: float  # max over devices, in copies of the shardable part
    latency_s: float
    expected_metric: dict[str, float]  # p (as text) -> E[metric]
    mean_by_k: tuple[float, ...]  # k = 0..N−1 failed devices
    worst_by_k: tuple[float, ...]
    measured: bool = False


class RobustPlan(VersionedFile):
    """A robust width placement: per unit the ordered replica devices (first live computes)."""

    KIND: ClassVar[str] = "edgesplit.robust_plan"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: Literal["edgesplit.robust_plan"] = "edgesplit.robust_plan"
    schema_version: Literal[1] = 1
    model: str
    cluster_hash: str
    planner: PlannerInfo
    strategy: StrategySpec
    coordinator: str
    devices: Annotated[tuple[str, ...], Field(min_length=1)]
    unit_names: tuple[str, ...]
    replicas: tuple[tuple[str, ...], ...]
    metric_name: str
    higher_is_better: bool
    predicted: RobustPredicted

    def replica_indices(self) -> list[list[int]]:
        index = {d: i for i, d in enumerate(self.devices)}
        return [[index[d] for d in r] for r in self.replicas]

    def units_on(self, device: str) -> list[int]:
        return [u for u, r in enumerate(self.replicas) if device in r]


# -- placement strategies -----------------------------------------------------------------------


def _stripe(problem: RobustProblem, num_devices: int) -> list[int]:
    """Primary device per unit: per (layer, kind), by importance in snake order, rotated."""
    importance = problem.effective_importance()
    primary = [0] * len(problem.units)
    offset = 0
    for part in problem.parts():
        ranked = sorted(part, key=lambda u: (-importance[u], u))
        for rank, u in enumerate(ranked):
            rnd, pos = divmod(rank, num_devices)
            slot = pos if rnd % 2 == 0 else num_devices - 1 - pos
            primary[u] = (slot + offset) % num_devices
        offset += len(part)
    return primary


def _ring(primary: int, count: int, num_devices: int) -> list[int]:
    return [(primary + j) % num_devices for j in range(min(count, num_devices))]


def memory_bytes_per_device(
    problem: RobustProblem, replicas: Sequence[Sequence[int]], num_devices: int
) -> np.ndarray:
    load = np.zeros(num_devices)
    for u, devices in enumerate(replicas):
        for d in devices:
            load[d] += problem.units[u].param_bytes
    return load


def place(
    spec: StrategySpec,
    problem: RobustProblem,
    num_devices: int,
    probabilities: Sequence[float],
) -> list[list[int]]:
    """Replica lists (device indices, first = primary) for every unit under one strategy."""
    primary = _stripe(problem, num_devices)
    n_units = len(problem.units)
    if spec.name == "split":
        return [[primary[u]] for u in range(n_units)]
    if spec.name == "uniform":
        return [_ring(primary[u], spec.replication, num_devices) for u in range(n_units)]
    if spec.name == "full":
        return [_ring(primary[u], num_devices, num_devices) for u in range(n_units)]
    if spec.name == "tiered":
        # EASTER: the top-v fraction of each layer part (vital) is replicated, the rest striped
        r_vital = spec.vital_replication or num_devices
        importance = problem.effective_importance()
        replicas = [[primary[u]] for u in range(n_units)]
        for part in problem.parts():
            ranked = sorted(part, key=lambda u: (-importance[u], u))
            for u in ranked[: math.ceil(spec.vital_fraction * len(part) - 1e-9)]:
                replicas[u] = _ring(primary[u], r_vital, num_devices)
        return replicas
    if spec.name == "pipeline":
        return _pipeline(problem, num_devices, spec.standby)
    cap = spec.memory_copies * problem.copy_bytes
    if spec.name == "greedy":
        return _greedy(problem, primary, num_devices, np.asarray(probabilities), cap)
    return _ksafe(problem, primary, num_devices, spec.k, cap)


def _pipeline(problem: RobustProblem, num_devices: int, standby: int) -> list[list[int]]:
    """Contiguous layer ranges balanced by bytes; stage i on device i, standbys on i+1..i+s."""
    layers = sorted({u.layer_index for u in problem.units})
    layer_bytes = np.array(
        [sum(u.param_bytes for u in problem.units if u.layer_index == layer) for layer in layers]
    )
    cumulative = np.cumsum(layer_bytes) / layer_bytes.sum()
    stage_of_layer = {
        layer: min(
            num_devices - 1,
            int(np.searchsorted(np.arange(1, num_devices + 1) / num_devices, c - 1e-9)),
        )
        for layer, c in zip(layers, cumulative, strict=True)
    }
    return [_ring(stage_of_layer[u.layer_index], 1 + standby, num_devices) for u in problem.units]


def _greedy(
    problem: RobustProblem,
    primary: list[int],
    num_devices: int,
    probabilities: np.ndarray,
    cap_bytes: float,
) -> list[list[int]]:
    """Marginal replication by importance gain per byte under a per-device memory cap.

    Gain of adding device d to unit u's replicas = importance_u · Π_{e∈R_u} p_e · (1 − p_d): the
    drop in u's expected lost importance. A max-heap on gain / bytes; each pop places one replica
    on the device with the most free memory (ties: lowest p) and re-queues u with its next gain.
    """
    replicas = [[primary[u]] for u in range(len(problem.units))]
    load = memory_bytes_per_device(problem, replicas, num_devices)
    importance = problem.effective_importance()
    heap: list[tuple[float, int]] = []

    def push(u: int) -> None:
        unit = problem.units[u]
        if len(replicas[u]) >= num_devices or unit.param_bytes == 0:
            return
        lost_p = float(np.prod(probabilities[replicas[u]]))
        best_p = min(probabilities[d] for d in range(num_devices) if d not in replicas[u])
        gain = float(importance[u]) * lost_p * (1.0 - best_p)
        if gain > 0:
            heapq.heappush(heap, (-gain / unit.param_bytes, u))

    for u in range(len(problem.units)):
        push(u)
    while heap:
        _, u = heapq.heappop(heap)
        size = problem.units[u].param_bytes
        options = [
            d for d in range(num_devices) if d not in replicas[u] and load[d] + size <= cap_bytes
        ]
        if not options:
            continue
        d = min(options, key=lambda e: (probabilities[e], load[e], e))
        replicas[u].append(d)
        load[d] += size
        push(u)
    return replicas


def _ksafe(
    problem: RobustProblem, primary: list[int], num_devices: int, k: int, cap_bytes: float
) -> list[list[int]]:
    """k-safe knapsack: units with k+1 distinct holders survive any k failures.

    Items = units, value = importance, weight = k extra copies; filled greedily by value per byte
    (the LP-relaxation order of the knapsack), each extra copy on the least-loaded device.
    """
    replicas = [[primary[u]] for u in range(len(problem.units))]
    load = memory_bytes_per_device(problem, replicas, num_devices)
    importance = problem.effective_importance()
    order = sorted(
        range(len(problem.units)),
        key=lambda u: -importance[u] / max(problem.units[u].param_bytes, 1),
    )
    for u in order:
        size = problem.units[u].param_bytes
        free = [d for d in np.argsort(load, kind="stable") if d not in replicas[u]]
        chosen = [int(d) for d in free if load[d] + size <= cap_bytes][:k]
        if len(chosen) < min(k, num_devices - 1):
            continue
        for d in chosen:
            replicas[u].append(d)
            load[d] += size
    return replicas


# -- scoring --------------------------------------------------------------------------------------


def predicted_latency_s(
    problem: RobustProblem,
    replicas: Sequence[Sequence[int]],
    devices: Sequence[str],
    cluster: Cluster | None,
    device_flops_per_s: float = 1e10,
) -> float:
    """Σ over layer parts of max over participating devices of (send + compute + return).

    Only primaries compute (standbys idle); the hidden state goes coordinator → device and the
    partial sum comes back, each `hidden_bytes`, over the cluster's links.
    """
    total = 0.0
    for part in problem.parts():
        flops: dict[int, float] = {}
        for u in part:
            if replicas[u]:
                d = replicas[u][0]
                flops[d] = flops.get(d, 0.0) + problem.units[u].flops_per_token
        worst = 0.0
        for d, f in flops.items():
            hop = 0.0
            if cluster is not None:
                hop = cluster.transfer_s(problem.hidden_bytes, cluster.source, devices[d])
                hop += cluster.transfer_s(problem.hidden_bytes, devices[d], cluster.source)
            worst = max(worst, hop + f * problem.tokens_per_request / device_flops_per_s)
        total += worst
    return total


def evaluate_placement(
    problem: RobustProblem,
    replicas: Sequence[Sequence[int]],
    devices: Sequence[str],
    *,
    surrogate: Surrogate,
    cluster: Cluster | None = None,
    probabilities: Sequence[float] = DEFAULT_PROBABILITIES,
    device_probabilities: Sequence[float] | None = None,
) -> RobustPredicted:
    """Surrogate scores: expected metric at each i.i.d. p (and at the devices' own p when given),
    mean/worst over k failures (exact ≤ 12 devices, Monte Carlo beyond), memory, latency."""
    n = len(devices)
    load = memory_bytes_per_device(problem, replicas, n)
    expected: dict[str, float] = {}
    if n <= 12:
        table = failure_table(replicas, n, surrogate)
        for p in probabilities:
            expected[f"{p:g}"] = table.expected(np.full(n, p))
        if device_probabilities is not None:
            expected["devices"] = table.expected(np.asarray(device_probabilities))
        means, worst = table.by_k(surrogate.higher_is_better)
    else:
        rng = np.random.default_rng(0)
        for p in probabilities:
            expected[f"{p:g}"] = float(
                failure_table(replicas, n, surrogate, rng=rng, probability=p).metric.mean()
            )
        means, worst = [], []
    return RobustPredicted(
        memory_bytes_per_device=tuple(float(x) for x in load),
        memory_copies=float(load.max() / problem.copy_bytes),
        latency_s=predicted_latency_s(problem, replicas, devices, cluster),
        expected_metric=expected,
        mean_by_k=tuple(means),
        worst_by_k=tuple(worst),
    )


def default_strategies(num_devices: int, memory_copies: float) -> list[StrategySpec]:
    """The candidate set of the Pareto search for a per-device memory cap."""
    specs = [StrategySpec(name="split"), StrategySpec(name="full")]
    specs += [StrategySpec(name="uniform", replication=r) for r in range(2, num_devices)]
    specs += [StrategySpec(name="tiered", vital_fraction=v) for v in (0.1, 0.2, 0.3, 0.5)]
    specs += [StrategySpec(name="pipeline", standby=s) for s in (0, 1)]
    caps = sorted({memory_copies, 0.375, 0.5, 0.75})
    specs += [StrategySpec(name="greedy", memory_copies=c) for c in caps]
    specs += [StrategySpec(name="ksafe", k=1, memory_copies=c) for c in caps]
    return specs


def _score(predicted: RobustPredicted, p: float, higher_is_better: bool) -> float:
    value = predicted.expected_metric[f"{p:g}"]
    return value if higher_is_better else -value


def pareto_front(plans: Sequence[RobustPlan], p: float) -> list[RobustPlan]:
    """Non-dominated plans on (E[metric] at p ↑, worst at k=1 ↑, memory ↓, latency ↓)."""

    def key(plan: RobustPlan) -> tuple[float, float, float, float]:
        sign = 1.0 if plan.higher_is_better else -1.0
        pr = plan.predicted
        worst1 = pr.worst_by_k[1] if len(pr.worst_by_k) > 1 else pr.expected_metric[f"{p:g}"]
        return (
            sign * pr.expected_metric[f"{p:g}"],
            sign * worst1,
            -pr.memory_copies,
            -pr.latency_s,
        )

    keys = [key(plan) for plan in plans]
    front = []
    for i, a in enumerate(keys):
        dominated = any(
            all(x >= y for x, y in zip(b, a, strict=True)) and b != a
            for j, b in enumerate(keys)
            if j != i
        )
        if not dominated:
            front.append(plans[i])
    return front


def plan_robust(
    problem: RobustProblem,
    cluster: Cluster,
    *,
    memory_copies: float = 0.5,
    probability: float = 0.1,
    strategies: Sequence[StrategySpec] | None = None,
    devices: Sequence[str] | None = None,
) -> tuple[RobustPlan, list[RobustPlan], list[RobustPlan]]:
    """Search the strategies; return (chosen, Pareto front, all candidates).

    Devices are the cluster's devices except the source (the coordinator, which holds the
    shared parts). The chosen plan maximises the surrogate E[metric] at `probability` among
    plans with memory ≤ `memory_copies` per device (and ≤ each device's memory_mb).

    Raises:
        PlanInfeasibleError: when no candidate fits the memory caps.
    """
    start = time.perf_counter()
    names = tuple(devices or [d for d in cluster.device_names if d != cluster.source])
    if not names:
        raise ConfigError(f"cluster has no device besides the source '{cluster.source}'")
    n = len(names)
    device_p = [cluster.device(d).failure_probability or probability for d in names]
    surrogate = problem.surrogate()
    specs = list(strategies or default_strategies(n, memory_copies))
    plans: list[RobustPlan] = []
    for spec in specs:
        replicas = place(spec, problem, n, device_p)
        predicted = evaluate_placement(
            problem,
            replicas,
            names,
            surrogate=surrogate,
            cluster=cluster,
            probabilities=sorted({*DEFAULT_PROBABILITIES, probability}),
            device_probabilities=device_p,
        )
        plans.append(
            RobustPlan(
                model=problem.model,
                cluster_hash=cluster.digest(),
                planner=PlannerInfo(
                    name="robust",
                    options={
                        "strategy": spec.label,
                        "memory_copies": memory_copies,
                        "probability": probability,
                    },
                ),
                strategy=spec,
                coordinator=cluster.source,
                devices=names,
                unit_names=tuple(u.name for u in problem.units),
                replicas=tuple(tuple(names[d] for d in r) for r in replicas),
                metric_name=problem.calibration.metric_name,
                higher_is_better=problem.calibration.higher_is_better,
                predicted=predicted,
            )
        )
    capacity = [cluster.device(d).memory_bytes for d in names]
    feasible = [
        plan
        for plan in plans
        if plan.predicted.memory_copies <= memory_copies + 1e-9
        and all(
            m <= c for m, c in zip(plan.predicted.memory_bytes_per_device, capacity, strict=True)
        )
    ]
    if not feasible:
        need = min(plan.predicted.memory_copies for plan in plans) * problem.copy_bytes
        raise PlanInfeasibleError(
            f"no robust placement fits {memory_copies:g} model copies per device "
            f"({memory_copies * problem.copy_bytes / 1e6:.1f} MB); the smallest needs "
            f"{need / 1e6:.1f} MB per device; allow more memory or add devices",
            shortfall_bytes=need - memory_copies * problem.copy_bytes,
        )
    higher = problem.calibration.higher_is_better
    chosen = max(
        feasible,
        key=lambda plan: (
            _score(plan.predicted, probability, higher),
            -plan.predicted.memory_copies,
        ),
    )
    elapsed = time.perf_counter() - start
    chosen = chosen.model_copy(
        update={"planner": chosen.planner.model_copy(update={"elapsed_s": elapsed})}
    )
    return chosen, pareto_front(plans, probability), plans
