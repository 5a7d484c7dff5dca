"""Optimal pipeline partitioning over heterogeneous devices (EdgePipe / PipeEdge, made exact).

Hu et al., "PipeEdge: Pipeline Parallelism for Large-Scale Model Inference on Heterogeneous Edge
Devices" (DSD 2022), §III: dynamic programming over (units covered, devices used, last device).
We keep their recurrence but index "devices used" by a *count vector over device classes*:
devices of the same kind, memory and links are interchangeable, so 64 devices of 4 kinds need
17^4 vectors instead of 2^64 subsets. Imports core only (numpy, no torch/ray).

[Note: dp-table] F[n, c, a] = best objective of a pipeline that covers units [0, a), uses n_k
devices of each class k, and whose last stage runs on class c — counting the input transfer, every
stage's compute and every hop *between* stages, but not the hop out of the last stage (it depends
on the next class). With stage cost S_c(a, b) = compute_c(a, b) (inf if memory does not fit) and
hop cost H[c, c', a] = transfer(output_bytes[a-1], c -> c'):

    throughput:  F[n + e_c', c', b] = min_{c, a<b} max(F[n, c, a], H[c, c', a], S_c'(a, b))
    latency:     F[n + e_c', c', b] = min_{c, a<b}     F[n, c, a] + H[c, c', a] + S_c'(a, b)
    answer       = min_{n, c} F[n, c, L] (+) out_c            ((+) = max or +)

The min over c does not depend on b, so it is taken first (`base` below) and the stage cost is
applied as a band of widths w = b - a. Levels are processed by number of stages; whenever a
complete pipeline with value V is known, entries that cannot beat V are dropped (for latency we
add an admissible bound on the remaining compute), which keeps the table sparse. Worked example:
3 units, devices {A (source), B}; F[(1,0), A, 1] = S_A(0,1); F[(1,1), B, 3] =
max(F[(1,0), A, 1], H[A,B,1], S_B(1,3)); answer max(that, out_B).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgesplit.core.cost import CostModel
from edgesplit.core.plan import Objective, StagePlacement
from edgesplit.errors import PlanInfeasibleError
from edgesplit.planners.base import PlannerResult, register_planner

__all__ = ["ClassData", "DeviceClass", "class_data", "device_classes", "solve_classes"]

INF = np.inf


@dataclass(frozen=True, slots=True)
class DeviceClass:
    """Interchangeable devices: same kind, memory, and links to every other class."""

    devices: tuple[str, ...]
    kind: str
    memory_bytes: float


def device_classes(cost: CostModel) -> list[DeviceClass]:
    """Partition devices into classes whose members are interchangeable under the cost model.

    Start from (kind, memory, is_source) and refine by the set of (class, link) pairs to every
    other device until stable; classes whose pairwise links are still not uniform are split into
    single devices, which is always exact.
    """
    cluster = cost.cluster
    names = list(cluster.device_names)
    label = {
        d: (cluster.device(d).kind, cluster.device(d).memory_bytes, d == cluster.source)
        for d in names
    }
    ids = _relabel(label)
    while True:
        signature = {
            d: (
                ids[d],
                tuple(
                    sorted(
                        {(ids[e], cluster.link(d, e), cluster.link(e, d)) for e in names if e != d}
                    )
                ),
            )
            for d in names
        }
        new_ids = _relabel(signature)
        if len(set(new_ids.values())) == len(set(ids.values())):
            break
        ids = new_ids
    groups: dict[int, list[str]] = {}
    for d in names:
        groups.setdefault(ids[d], []).append(d)
    members = list(groups.values())
    if not _links_uniform(cost, members):
        members = [[d] for d in names]
    return [
        DeviceClass(
            devices=tuple(group),
            kind=cluster.device(group[0]).kind,
            memory_bytes=cluster.device(group[0]).memory_bytes,
        )
        for group in members
    ]


def _relabel(keys: dict[str, object]) -> dict[str, int]:
    order: dict[object, int] = {}
    for key in keys.values():
        order.setdefault(key, len(order))
    return {d: order[k] for d, k in keys.items()}


def _links_uniform(cost: CostModel, groups: list[list[str]]) -> bool:
    link = cost.cluster.link
    for ga in groups:
        for gb in groups:
            values = {link(x, y) for x in ga for y in gb if x != y}
            if len(values) > 1:
                return False
    return True


@dataclass(frozen=True, slots=True)
class ClassData:
    """Per-class numbers the DP needs; built exactly, or bounded when classes are merged."""

    classes: tuple[DeviceClass, ...]
    time_prefix: np.ndarray  # (K, L+1) cumulative seconds per unit
    memory_bytes: np.ndarray  # (K,)
    bandwidth: np.ndarray  # (K, K) bytes/s between distinct devices of the classes (0 = none)
    latency_s: np.ndarray  # (K, K)
    input_cost: np.ndarray  # (K,) source -> class
    output_cost: np.ndarray  # (K,) class -> source

    @property
    def counts(self) -> np.ndarray:
        return np.array([len(c.devices) for c in self.classes], dtype=np.int64)


def class_data(
    cost: CostModel, groups: list[tuple[str, ...]], bound: str = "exact"
) -> ClassData:
    """Numbers for a partition of the devices into classes.

    bound="exact" requires interchangeable members (see device_classes); "upper" takes the
    slowest time, smallest memory and worst link of each group (any plan it finds is feasible
    and no worse in reality); "lower" takes the best of each (its optimum is a lower bound).
    """
    cluster = cost.cluster
    source = cluster.source
    pick = np.max if bound == "upper" else np.min
    pick_best = np.min if bound == "upper" else np.max
    classes = []
    prefixes = []
    for group in groups:
        kinds = sorted({cluster.device(d).kind for d in group})
        per_unit = np.stack([np.diff(cost.time_prefix(k)) for k in kinds])
        prefixes.append(np.concatenate([[0.0], np.cumsum(pick(per_unit, axis=0))]))
        memory = pick_best([cluster.device(d).memory_bytes for d in group])
        classes.append(DeviceClass(devices=tuple(group), kind="+".join(kinds), memory_bytes=memory))
    size = len(groups)
    bandwidth = np.zeros((size, size))
    latency = np.zeros((size, size))
    for i, gi in enumerate(groups):
        for j, gj in enumerate(groups):
            pairs = [cluster.link(x, y) for x in gi for y in gj if x != y]
            if pairs:
                bandwidth[i, j] = pick_best([p[0] for p in pairs])
                latency[i, j] = pick([p[1] for p in pairs])
    input_bytes = cost.profile.input_bytes
    output_bytes = float(cost.output_bytes[-1])
    input_cost = np.array(
        [pick([cost.transfer_s(input_bytes, source, d) for d in g]) for g in groups]
    )
    output_cost = np.array(
        [pick([cost.transfer_s(output_bytes, d, source) for d in g]) for g in groups]
    )
    return ClassData(
        classes=tuple(classes),
        time_prefix=np.stack(prefixes),
        memory_bytes=np.array([c.memory_bytes for c in classes]),
        bandwidth=bandwidth,
        latency_s=latency,
        input_cost=input_cost,
        output_cost=output_cost,
    )


@dataclass(frozen=True, slots=True)
class _Problem:
    """Class-level arrays the DP works on (all float64, shapes in comments)."""

    counts: np.ndarray  # (K,) devices per class
    stage_cost: np.ndarray  # (K, L+1, W+1): compute of [a, a+w) on class k, inf if it can't
    hop: np.ndarray  # (K, K, L+1): transfer of output_bytes[a-1] from class k to k'
    input_cost: np.ndarray  # (K,) source -> class
    output_cost: np.ndarray  # (K,) class -> source
    remaining_lb: np.ndarray  # (L+1,) fastest-kind compute of units [a, L)


def _build_problem(
    cost: CostModel, data: ClassData, objective: Objective, stage_bound_s: float
) -> _Problem:
    num_units = cost.num_units
    num_classes = len(data.classes)
    params = cost.param_prefix
    outputs = cost.output_bytes
    in_bytes = np.concatenate([[cost.profile.input_bytes], outputs[:-1]])  # (L,) bytes into unit a
    # Widest stage any class can take without exceeding the bound (band of the DP).
    width = 1
    if objective == "throughput" and np.isfinite(stage_bound_s):
        for prefix in data.time_prefix:
            reach = np.searchsorted(prefix, prefix[:-1] + stage_bound_s, side="right") - 1
            width = max(width, int(np.max(np.minimum(reach, num_units) - np.arange(num_units))))
    else:
        width = num_units
    width = max(1, min(width, num_units))
    stage_cost = np.full((num_classes, num_units + 1, width + 1), INF)
    starts = np.arange(num_units + 1)
    for k in range(num_classes):
        prefix = data.time_prefix[k]
        for w in range(1, width + 1):
            a = starts[: num_units + 1 - w]
            b = a + w
            compute = prefix[b] - prefix[a]
            memory = params[b] - params[a] + 2.0 * (in_bytes[a] + outputs[b - 1])
            ok = memory <= data.memory_bytes[k]
            if objective == "throughput":
                ok &= compute <= stage_bound_s
            stage_cost[k, : num_units + 1 - w, w] = np.where(ok, compute, INF)
    hop = np.full((num_classes, num_classes, num_units + 1), INF)
    for k in range(num_classes):
        for j in range(num_classes):
            if data.bandwidth[k, j] > 0:
                # Same expression as Cluster.transfer_s, so values match the cost model bitwise.
                hop[k, j, 1:] = data.latency_s[k, j] + outputs / data.bandwidth[k, j]
    fastest = np.min(np.diff(data.time_prefix, axis=1), axis=0)
    remaining = np.concatenate([np.cumsum(fastest[::-1])[::-1], [0.0]])
    return _Problem(
        counts=data.counts,
        stage_cost=stage_cost,
        hop=hop,
        input_cost=data.input_cost,
        output_cost=data.output_cost,
        remaining_lb=remaining,
    )


def _combine(objective: Objective, x: np.ndarray, y: np.ndarray | float) -> np.ndarray:
    return np.maximum(x, y) if objective == "throughput" else x + y


@dataclass(slots=True)
class _Level:
    ids: np.ndarray  # (N,) sorted mixed-radix ids of count vectors
    table: np.ndarray  # (N, K, L+1) F values


def solve_classes(
    cost: CostModel,
    data: ClassData,
    objective: Objective,
    upper_bound_s: float = INF,
) -> tuple[float, list[tuple[int, int, int]]]:
    """Exact DP over class count vectors.

    Returns (best value, [(class index, start, end), ...]); value is inf when nothing fits.
    `upper_bound_s` (a value known to be achievable, or inf) only prunes; it never changes the
    optimum.
    """
    problem = _build_problem(cost, data, objective, upper_bound_s)
    num_units = cost.num_units
    num_classes = len(data.classes)
    counts = problem.counts
    strides = np.concatenate([[1], np.cumprod(counts + 1)[:-1]]).astype(np.int64)
    width = problem.stage_cost.shape[2] - 1

    # Level 1: one stage [0, b) on class c.
    first = np.full((num_classes, num_classes, num_units + 1), INF)
    for c in range(num_classes):
        row = problem.stage_cost[c, 0, :]  # compute of [0, w)
        span = min(width, num_units)
        first[c, c, 1 : span + 1] = _combine(objective, problem.input_cost[c], row[1 : span + 1])
    level = _Level(ids=strides.copy(), table=first)
    order = np.argsort(level.ids)
    level = _Level(ids=level.ids[order], table=level.table[order])

    best = upper_bound_s if np.isfinite(upper_bound_s) else INF
    best_at: tuple[int, int, int] | None = None  # (level index, row, class)
    levels: list[_Level] = []
    while level.ids.size:
        levels.append(level)
        finals = _combine(objective, level.table[:, :, num_units], problem.output_cost[None, :])
        row, c = np.unravel_index(int(np.argmin(finals)), finals.shape)
        if finals[row, c] < best or (best_at is None and finals[row, c] <= best):
            best = float(finals[row, c])
            best_at = (len(levels) - 1, int(row), int(c))
        level = _next_level(level, problem, objective, strides, width, best, best_at is not None)

    if best_at is None:
        return INF, []
    return best, _backtrack(levels, best_at, problem, objective, strides, num_units)


def _next_level(
    level: _Level,
    problem: _Problem,
    objective: Objective,
    strides: np.ndarray,
    width: int,
    best: float,
    have_best: bool,
) -> _Level:
    counts = problem.counts
    num_classes = counts.size
    num_positions = level.table.shape[2]
    used = (level.ids[:, None] // strides[None, :]) % (counts[None, :] + 1)  # (N, K)
    grown_by_class: list[tuple[int, np.ndarray, np.ndarray]] = []  # (c_next, target ids, G)
    for c_next in range(num_classes):
        rows = np.nonzero(used[:, c_next] < counts[c_next])[0]
        if rows.size == 0:
            continue
        # base[s, a] = min_c F[s, c, a] (+) H[c, c_next, a]   (N', L+1)
        base = _combine(objective, level.table[rows], problem.hop[None, :, c_next, :]).min(axis=1)
        finite = np.isfinite(base).any(axis=1)
        rows, base = rows[finite], base[finite]
        if rows.size == 0:
            continue
        grown = np.full_like(base, INF)
        stage = problem.stage_cost[c_next]
        for w in range(1, min(width, num_positions - 1) + 1):
            cand = _combine(objective, base[:, : num_positions - w], stage[: num_positions - w, w])
            np.minimum(grown[:, w:], cand, out=grown[:, w:])
        grown_by_class.append((c_next, level.ids[rows] + strides[c_next], grown))
    if not grown_by_class:
        return _Level(ids=np.zeros(0, dtype=np.int64), table=np.zeros((0, num_classes, 0)))
    unique_ids = np.unique(np.concatenate([ids for _, ids, _ in grown_by_class]))
    table = np.full((unique_ids.size, num_classes, num_positions), INF)
    for c_next, ids, grown in grown_by_class:
        # A count vector has one predecessor per class, so ids are unique within c_next.
        table[np.searchsorted(unique_ids, ids), c_next, :] = grown
    _prune(table, problem, objective, best, have_best)
    keep = np.isfinite(table).any(axis=(1, 2))
    return _Level(ids=unique_ids[keep], table=table[keep])


def _prune(
    table: np.ndarray, problem: _Problem, objective: Objective, best: float, have_best: bool
) -> None:
    """Drop entries that cannot beat `best` (in place).

    Ties are kept until a pipeline achieving `best` is in hand (`best` may be an outside bound).
    """
    if not np.isfinite(best):
        return
    bound = table if objective == "throughput" else table + problem.remaining_lb[None, None, :]
    table[(bound >= best) if have_best else (bound > best)] = INF


def _backtrack(
    levels: list[_Level],
    best_at: tuple[int, int, int],
    problem: _Problem,
    objective: Objective,
    strides: np.ndarray,
    num_units: int,
) -> list[tuple[int, int, int]]:
    """Walk predecessors whose recomputed value equals the stored one (bitwise)."""
    level_index, row, c = best_at
    b = num_units
    stages: list[tuple[int, int, int]] = []
    while True:
        level = levels[level_index]
        value = level.table[row, c, b]
        if level_index == 0:
            stages.append((c, 0, b))
            break
        prev = levels[level_index - 1]
        prev_id = level.ids[row] - strides[c]
        prev_row = int(np.searchsorted(prev.ids, prev_id))
        found = None
        for a in range(b - 1, 0, -1):
            w = b - a
            if w >= problem.stage_cost.shape[2]:
                break
            stage = problem.stage_cost[c, a, w]
            if not np.isfinite(stage):
                continue
            for c_prev in range(problem.counts.size):
                f_prev = prev.table[prev_row, c_prev, a]
                if not np.isfinite(f_prev):
                    continue
                hop = problem.hop[c_prev, c, a]
                if objective == "throughput":
                    candidate = max(max(f_prev, hop), stage)
                else:
                    candidate = (f_prev + hop) + stage
                if candidate == value:
                    found = (c_prev, a)
                    break
            if found:
                break
        assert found is not None, "DP backtrack found no predecessor"
        stages.append((c, found[1], b))
        c, b, row, level_index = found[0], found[1], prev_row, level_index - 1
    return stages[::-1]


MAX_EXACT_VECTORS = 400_000
"""Count vectors (Π (n_k + 1)) up to which `optimal` solves exactly; beyond, it merges classes."""


def _num_vectors(groups: list[tuple[str, ...]]) -> int:
    return int(np.prod([len(g) + 1 for g in groups], dtype=np.float64))


def _to_stages(
    data: ClassData, solution: list[tuple[int, int, int]]
) -> tuple[StagePlacement, ...]:
    """Map class-level stages to concrete devices (members taken in cluster order)."""
    taken = [0] * len(data.classes)
    stages = []
    for k, start, end in solution:
        device = data.classes[k].devices[taken[k]]
        taken[k] += 1
        stages.append(StagePlacement(device=device, start=start, end=end))
    return tuple(stages)


def _achieved(cost: CostModel, stages: tuple[StagePlacement, ...], objective: Objective) -> float:
    predicted = cost.predict(stages)
    return predicted.period_s if objective == "throughput" else predicted.latency_s


def _coarsen(cost: CostModel, classes: list[DeviceClass]) -> list[tuple[str, ...]]:
    """Merge classes until the DP is small: first by kind, then kinds of similar speed."""
    by_kind: dict[str, list[str]] = {}
    source = cost.cluster.source
    groups: list[tuple[str, ...]] = [(source,)]
    for cls in classes:
        for d in cls.devices:
            if d != source:
                by_kind.setdefault(cls.kind, []).append(d)
    kinds = sorted(by_kind, key=lambda k: float(cost.time_prefix(k)[-1]))
    buckets = [[k] for k in kinds]
    while (
        _num_vectors(groups + [tuple(d for k in b for d in by_kind[k]) for b in buckets])
        > MAX_EXACT_VECTORS
        and len(buckets) > 1
    ):
        # Merge the two adjacent (by total time) buckets whose speeds are closest.
        totals = [max(float(cost.time_prefix(k)[-1]) for k in b) for b in buckets]
        ratios = [totals[i + 1] / totals[i] for i in range(len(buckets) - 1)]
        i = int(np.argmin(ratios))
        buckets[i : i + 2] = [buckets[i] + buckets[i + 1]]
    return groups + [tuple(d for k in b for d in by_kind[k]) for b in buckets]


def _infeasible(cost: CostModel) -> PlanInfeasibleError:
    """Explain why no pipeline fits: the unit that fits nowhere, or the total memory short."""
    cluster = cost.cluster
    largest = max(cluster.devices, key=lambda d: d.memory_bytes)
    for unit_index, unit in enumerate(cost.profile.units):
        need = cost.memory_bytes(unit_index, unit_index + 1)
        if need > largest.memory_bytes:
            return PlanInfeasibleError(
                f"unit '{unit.name}' alone needs {need / 1e6:.1f} MB but the largest device "
                f"'{largest.name}' has {largest.memory_bytes / 1e6:.1f} MB "
                f"({(need - largest.memory_bytes) / 1e6:.1f} MB short); add a bigger device, "
                "lower the batch size, or profile at a finer unit granularity",
                shortfall_bytes=need - largest.memory_bytes,
            )
    total_params = float(cost.param_prefix[-1])
    total_memory = sum(d.memory_bytes for d in cluster.devices)
    short = max(0.0, total_params - total_memory)
    return PlanInfeasibleError(
        f"no placement of '{cost.profile.model}' fits: weights need {total_params / 1e6:.1f} MB "
        f"(plus activation buffers) and all {len(cluster.devices)} devices together have "
        f"{total_memory / 1e6:.1f} MB; add devices or memory, or lower the batch size",
        shortfall_bytes=short if short > 0 else None,
    )


def quick_upper_bound(cost: CostModel, objective: Objective) -> float:
    """A cheap achievable value (best single device, or a speed-proportional split), else inf."""
    from edgesplit.planners.baselines import speed_proportional_stages

    best = INF
    num_units = cost.num_units
    for device in cost.cluster.devices:
        if cost.memory_bytes(0, num_units) <= device.memory_bytes:
            stage = (StagePlacement(device=device.name, start=0, end=num_units),)
            best = min(best, _achieved(cost, stage, objective))
    if objective == "throughput":
        stages = speed_proportional_stages(cost)
        if stages and not cost.overfull_stages(stages):
            best = min(best, _achieved(cost, stages, objective))
    return best


@register_planner("optimal", version="1")
def plan_optimal(cost: CostModel, objective: Objective) -> PlannerResult:
    """Exact optimum of the §4 cost model (period or latency); merges classes only when huge."""
    classes = device_classes(cost)
    groups = [c.devices for c in classes]
    bound = quick_upper_bound(cost, objective)
    if _num_vectors(groups) <= MAX_EXACT_VECTORS:
        data = class_data(cost, groups, "exact")
        value, solution = solve_classes(cost, data, objective, bound)
        if not solution:
            if np.isfinite(bound):
                raise AssertionError("DP found nothing below a feasible bound")
            raise _infeasible(cost)
        stages = _to_stages(data, solution)
        return PlannerResult(
            stages=stages,
            optimal=True,
            lower_bound_s=value,
            options=(("num_classes", len(classes)), ("exact", True)),
        )
    merged = _coarsen(cost, classes)
    upper = class_data(cost, merged, "upper")
    _, solution = solve_classes(cost, upper, objective, INF)
    if not solution:
        raise _infeasible(cost)
    stages = _to_stages(upper, solution)
    lower_value, _ = solve_classes(cost, class_data(cost, merged, "lower"), objective, INF)
    achieved = _achieved(cost, stages, objective)
    return PlannerResult(
        stages=stages,
        optimal=bool(achieved <= lower_value),
        lower_bound_s=float(lower_value),
        options=(("num_classes", len(classes)), ("merged_classes", len(merged)), ("exact", False)),
    )
