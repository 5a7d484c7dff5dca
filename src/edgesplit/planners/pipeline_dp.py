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

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgesplit.core.cost import CostModel
from edgesplit.core.plan import Objective, StagePlacement
from edgesplit.errors import PlanInfeasibleError
from edgesplit.planners.base import PlannerResult, PlanOptions, register_planner
from edgesplit.planners.milp import OPTIMAL_GAP
from edgesplit.planners.pipeline_milp import solve_pipeline, to_placements

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
        d: (
            cluster.device(d).kind,
            cluster.device(d).memory_bytes,
            cluster.device(d).stage_overhead_s,
            d == cluster.source,
        )
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


def _relabel(keys: Mapping[str, object]) -> dict[str, int]:
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
    stage_overhead_s: np.ndarray  # (K,) runtime cost of a stage (DeviceSpec.stage_overhead_ms)
    memory_bytes: np.ndarray  # (K,)
    bandwidth: np.ndarray  # (K, K) bytes/s between distinct devices of the classes (0 = none)
    latency_s: np.ndarray  # (K, K)
    input_cost: np.ndarray  # (K,) source -> class
    output_cost: np.ndarray  # (K,) class -> source

    @property
    def counts(self) -> np.ndarray:
        return np.array([len(c.devices) for c in self.classes], dtype=np.int64)


def class_data(cost: CostModel, groups: list[tuple[str, ...]], bound: str = "exact") -> ClassData:
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
    overheads = []
    for group in groups:
        overheads.append(pick([cluster.device(d).stage_overhead_s for d in group]))
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
        stage_overhead_s=np.array(overheads, dtype=float),
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
    input_cost: np.ndarray  # (K,) source -> class
    remaining_lb: np.ndarray  # (L+1,) fastest-kind compute of units [a, L)
    slowness: np.ndarray  # (K,) min over units of class time / fastest time (>= 1)
    group_of: np.ndarray  # (K,) link group of each class
    group_hop: np.ndarray  # (G, K, L+1): hop from a class of group g to class k'
    group_output_cost: np.ndarray  # (G,)


def _link_groups(hop: np.ndarray, output_cost: np.ndarray) -> np.ndarray:
    """Classes whose outgoing hops and output transfer are identical share a group.

    [Note: link-groups] The DP state only needs the last class through its outgoing costs, so
    it keeps one column per group; with uniform links (one default) that is 2 columns (the
    source's class and everyone else) instead of K.
    """
    groups: list[int] = []
    representatives: list[int] = []
    for k in range(hop.shape[0]):
        for g, r in enumerate(representatives):
            if np.array_equal(hop[k], hop[r]) and output_cost[k] == output_cost[r]:
                groups.append(g)
                break
        else:
            groups.append(len(representatives))
            representatives.append(k)
    return np.array(groups, dtype=np.int64)


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
        # The band only limits which widths are tried (stage_cost checks the bound exactly), so
        # it gets a little slack: prefix[a] + bound may round below prefix[b] even when
        # prefix[b] - prefix[a] <= bound.
        slack_bound = stage_bound_s * (1 + 1e-9) + 1e-12
        for prefix in data.time_prefix:
            reach = np.searchsorted(prefix, prefix[:-1] + slack_bound, side="right") - 1
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
            compute = (prefix[b] - prefix[a]) + data.stage_overhead_s[k]  # as CostModel.compute_s
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
    fastest, slowness = _speeds(data)
    remaining = np.concatenate([np.cumsum(fastest[::-1])[::-1], [0.0]])
    group_of = _link_groups(hop, data.output_cost)
    first_of_group = [int(np.nonzero(group_of == g)[0][0]) for g in range(group_of.max() + 1)]
    return _Problem(
        counts=data.counts,
        stage_cost=stage_cost,
        input_cost=data.input_cost,
        remaining_lb=remaining,
        slowness=slowness,
        group_of=group_of,
        group_hop=hop[first_of_group],
        group_output_cost=data.output_cost[first_of_group],
    )


def _speeds(data: ClassData) -> tuple[np.ndarray, np.ndarray]:
    """(L,) fastest time of each unit over classes; (K,) each class's least slowdown vs it."""
    per_unit = np.diff(data.time_prefix, axis=1)  # (K, L)
    fastest = per_unit.min(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(fastest[None, :] > 0, per_unit / fastest[None, :], np.inf)
    slowness = ratio.min(axis=1)
    return fastest, np.where(np.isfinite(slowness), slowness, 1.0)


def _combine(objective: Objective, x: np.ndarray, y: np.ndarray | float) -> np.ndarray:
    return np.maximum(x, y) if objective == "throughput" else x + y


@dataclass(slots=True)
class _Level:
    """All states with the same number of stages. Row r holds positions lo[r] + j, j < P."""

    ids: np.ndarray  # (N,) sorted mixed-radix ids of count vectors
    lo: np.ndarray  # (N,) first position held by the row
    table: np.ndarray  # (N, K, P) F values at positions lo + j

    def value(self, row: int, c: int, position: int) -> float:
        j = position - int(self.lo[row])
        if 0 <= j < self.table.shape[2]:
            return float(self.table[row, c, j])
        return INF


def _trim(ids: np.ndarray, lo: np.ndarray, table: np.ndarray) -> _Level:
    """Drop rows with nothing finite and shrink every row to its finite window of positions."""
    finite = np.isfinite(table).any(axis=1)  # (N, P)
    keep = finite.any(axis=1)
    ids, lo, table, finite = ids[keep], lo[keep], table[keep], finite[keep]
    if ids.size == 0:
        return _Level(ids=ids, lo=lo, table=table[:, :, :0])
    num_positions = finite.shape[1]
    first = np.argmax(finite, axis=1)
    last = num_positions - 1 - np.argmax(finite[:, ::-1], axis=1)
    span = int((last - first).max()) + 1
    index = first[:, None] + np.arange(span)  # (N, span)
    valid = index < num_positions
    index = np.minimum(index, num_positions - 1)
    shrunk = np.take_along_axis(
        table, np.broadcast_to(index[:, None, :], (table.shape[0], table.shape[1], span)), axis=2
    )
    shrunk[~np.broadcast_to(valid[:, None, :], shrunk.shape)] = INF
    return _Level(ids=ids, lo=lo + first, table=shrunk)


def solve_classes(
    cost: CostModel,
    data: ClassData,
    objective: Objective,
    upper_bound_s: float = INF,
) -> tuple[float, list[tuple[int, int, int]]]:
    """Exact DP over class count vectors.

    Returns (best value, [(class index, start, end), ...]); value is inf when nothing fits.
    `upper_bound_s` (a value known to be achievable, or inf) only prunes; it never changes the
    optimum: a run bounded by T keeps every pipeline whose period is <= T, so it finds the
    optimum whenever one exists below T, and tight bounds prune almost everything. Without a
    bound (throughput), thresholds rising geometrically from a lower bound are tried first.
    """
    if objective == "throughput":
        threshold = _period_lower_bound(cost, data)
        for _ in range(40):
            if not threshold < upper_bound_s:
                break
            value, solution = _solve_bounded(cost, data, objective, threshold)
            if solution:
                return value, solution
            threshold *= THRESHOLD_GROWTH
    return _solve_bounded(cost, data, objective, upper_bound_s)


THRESHOLD_GROWTH = 1.12
"""Factor between successive bounded DP runs (throughput); measured best among 1.04-1.15."""


def _period_lower_bound(cost: CostModel, data: ClassData) -> float:
    """Valid lower bound on the period: capacity of all devices, largest unit, in/out transfer."""
    fastest, slowness = _speeds(data)
    capacity = float(np.sum(data.counts / slowness))
    return max(
        float(fastest.sum()) / capacity,
        float(fastest.max()),
        float(data.input_cost.min()),
        float(data.output_cost.min()),
        1e-12,
    )


def _solve_bounded(
    cost: CostModel, data: ClassData, objective: Objective, upper_bound_s: float
) -> tuple[float, list[tuple[int, int, int]]]:
    """One DP run keeping every pipeline whose value is <= upper_bound_s."""
    problem = _build_problem(cost, data, objective, upper_bound_s)
    num_units = cost.num_units
    num_classes = len(data.classes)
    counts = problem.counts
    strides = np.concatenate([[1], np.cumprod(counts + 1)[:-1]]).astype(np.int64)
    width = problem.stage_cost.shape[2] - 1

    # Level 1: one stage [0, b) on class c.
    num_groups = problem.group_hop.shape[0]
    first = np.full((num_classes, num_groups, num_units + 1), INF)
    for c in range(num_classes):
        row = problem.stage_cost[c, 0, :]  # compute of [0, w)
        span = min(width, num_units)
        first[c, problem.group_of[c], 1 : span + 1] = _combine(
            objective, problem.input_cost[c], row[1 : span + 1]
        )
    order = np.argsort(strides)
    level = _trim(strides[order], np.zeros(num_classes, dtype=np.int64), first[order])

    best = upper_bound_s if np.isfinite(upper_bound_s) else INF
    best_at: tuple[int, int, int] | None = None  # (level index, row, group)
    levels: list[_Level] = []
    while level.ids.size:
        levels.append(level)
        j = num_units - level.lo
        done = (j >= 0) & (j < level.table.shape[2])
        if done.any():
            rows = np.nonzero(done)[0]
            at_end = level.table[rows, :, j[rows]]  # (R, G)
            finals = _combine(objective, at_end, problem.group_output_cost[None, :])
            r_best, g_best = np.unravel_index(int(np.argmin(finals)), finals.shape)
            value = finals[r_best, g_best]
            if value < best or (best_at is None and value <= best):
                best = float(value)
                best_at = (len(levels) - 1, int(rows[r_best]), int(g_best))
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
    num_groups = problem.group_hop.shape[0]
    num_units = problem.remaining_lb.size - 1
    num_positions = level.table.shape[2]
    positions = np.minimum(level.lo[:, None] + np.arange(num_positions), num_units)  # (N, P)
    used = (level.ids[:, None] // strides[None, :]) % (counts[None, :] + 1)  # (N, K)
    grown_width = num_positions + width
    parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # (c_next, ids, lo, G)
    for c_next in range(num_classes):
        rows = np.nonzero(used[:, c_next] < counts[c_next])[0]
        if rows.size == 0:
            continue
        position = positions[rows]  # (N', P)
        hop = np.moveaxis(problem.group_hop[:, c_next, :][:, position], 0, 1)  # (N', G, P)
        # base[s, a] = min_g F[s, g, a] (+) H[g, c_next, a]
        base = _combine(objective, level.table[rows], hop).min(axis=1)  # (N', P)
        finite = np.isfinite(base).any(axis=1)
        rows, base, position = rows[finite], base[finite], position[finite]
        if rows.size == 0:
            continue
        grown = np.full((rows.size, grown_width), INF)  # position lo + j
        stage = problem.stage_cost[c_next]  # (L+1, W+1)
        for w in range(1, width + 1):
            cand = _combine(objective, base, stage[position, w])
            window = grown[:, w : w + num_positions]
            np.minimum(window, cand, out=window)
        parts.append((c_next, level.ids[rows] + strides[c_next], level.lo[rows], grown))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return _Level(ids=empty, lo=empty, table=np.zeros((0, num_groups, 0)))
    all_ids = np.concatenate([ids for _, ids, _, _ in parts])
    all_lo = np.concatenate([lo for _, _, lo, _ in parts])
    unique_ids, inverse = np.unique(all_ids, return_inverse=True)
    offset = np.full(unique_ids.size, np.iinfo(np.int64).max)
    np.minimum.at(offset, inverse, all_lo)
    span = int((all_lo - offset[inverse]).max()) + grown_width
    table = np.full((unique_ids.size, num_groups, span), INF)
    for c_next, ids, lo, grown in parts:
        # A count vector has one predecessor per class, so targets are unique within c_next
        # (but several classes of one link group land in the same column: take the minimum).
        target = np.searchsorted(unique_ids, ids)
        columns = (lo - offset[target])[:, None] + np.arange(grown_width)
        group = problem.group_of[c_next]
        table[target[:, None], group, columns] = np.minimum(
            table[target[:, None], group, columns], grown
        )
    remaining = problem.remaining_lb[np.minimum(offset[:, None] + np.arange(span), num_units)]
    _prune(table, remaining, objective, best, have_best)
    if objective == "throughput" and np.isfinite(best):
        # Capacity bound: the devices still unused, each busy <= best per micro-batch, must be
        # able to do the remaining work even at their best speed relative to the fastest class.
        left = counts[None, :] - (unique_ids[:, None] // strides[None, :]) % (counts[None, :] + 1)
        capacity = (left * (best / problem.slowness)[None, :]).sum(axis=1)  # (N,)
        behind = (capacity[:, None] < remaining * (1 - 1e-9)) & (remaining > 0)  # (N, span)
        table[np.broadcast_to(behind[:, None, :], table.shape)] = INF
    return _trim(unique_ids, offset, table)


def _prune(
    table: np.ndarray, remaining: np.ndarray, objective: Objective, best: float, have_best: bool
) -> None:
    """Drop entries that cannot beat `best` (in place); `remaining` (N, P) bounds latency left.

    Ties are kept until a pipeline achieving `best` is in hand (`best` may be an outside bound).
    """
    if not np.isfinite(best):
        return
    bound = table if objective == "throughput" else table + remaining[:, None, :]
    table[(bound >= best) if have_best else (bound > best)] = INF


def _backtrack(
    levels: list[_Level],
    best_at: tuple[int, int, int],
    problem: _Problem,
    objective: Objective,
    strides: np.ndarray,
    num_units: int,
) -> list[tuple[int, int, int]]:
    """Walk predecessors whose recomputed value equals the stored one (bitwise).

    The state keeps the last stage's link group, not its class, so each step also recovers the
    class: one of the group's classes that the count vector uses.
    """
    level_index, row, group = best_at
    b = num_units
    counts = problem.counts
    stages: list[tuple[int, int, int]] = []
    while True:
        level = levels[level_index]
        value = level.value(row, group, b)
        used = (int(level.ids[row]) // strides) % (counts + 1)
        classes = [c for c in np.nonzero(problem.group_of == group)[0] if used[c] > 0]
        if level_index == 0:
            stages.append((int(classes[0]), 0, b))
            break
        prev = levels[level_index - 1]
        found = None
        for c in classes:
            prev_id = level.ids[row] - strides[c]
            prev_row = int(np.searchsorted(prev.ids, prev_id))
            if prev_row >= prev.ids.size or prev.ids[prev_row] != prev_id:
                continue
            found = _find_predecessor(prev, prev_row, int(c), b, value, problem, objective)
            if found is not None:
                stages.append((int(c), found[1], b))
                group, b, row = found[0], found[1], prev_row
                break
        assert found is not None, "DP backtrack found no predecessor"
        level_index -= 1
    return stages[::-1]


def _find_predecessor(
    prev: _Level,
    prev_row: int,
    c: int,
    b: int,
    value: float,
    problem: _Problem,
    objective: Objective,
) -> tuple[int, int] | None:
    """(group, cut) of a previous state that yields `value` for a stage [cut, b) on class c."""
    for a in range(b - 1, 0, -1):
        w = b - a
        if w >= problem.stage_cost.shape[2]:
            break
        stage = problem.stage_cost[c, a, w]
        if not np.isfinite(stage):
            continue
        for g_prev in range(problem.group_hop.shape[0]):
            f_prev = prev.value(prev_row, g_prev, a)
            if not np.isfinite(f_prev):
                continue
            hop = problem.group_hop[g_prev, c, a]
            if objective == "throughput":
                candidate = max(max(f_prev, hop), stage)
            else:
                candidate = (f_prev + hop) + stage
            if candidate == value:
                return (g_prev, a)
    return None


MAX_EXACT_VECTORS = 400_000
"""Count vectors (Π (n_k + 1)) up to which `optimal` solves exactly; beyond, it merges classes."""


def _num_vectors(groups: list[tuple[str, ...]]) -> int:
    return int(np.prod([len(g) + 1 for g in groups], dtype=np.float64))


def _to_stages(data: ClassData, solution: list[tuple[int, int, int]]) -> tuple[StagePlacement, ...]:
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
    shortfall = (
        f" ({short / 1e6:.1f} MB short)"
        if short > 0
        else " (enough in total, but no contiguous split fits each device's buffers)"
    )
    return PlanInfeasibleError(
        f"no placement of '{cost.profile.model}' fits: weights need {total_params / 1e6:.1f} MB "
        f"(plus activation buffers) and all {len(cluster.devices)} devices together have "
        f"{total_memory / 1e6:.1f} MB{shortfall}; add devices or memory, or lower the batch size",
        shortfall_bytes=short if short > 0 else None,
    )


def _greedy_fill(cost: CostModel, order: list[str], bound_s: float) -> list[StagePlacement] | None:
    """Devices in `order` each take the longest prefix that keeps every cost <= bound_s."""
    num_units = cost.num_units
    cluster = cost.cluster
    if cost.transfer_s(cost.profile.input_bytes, cluster.source, order[0]) > bound_s:
        return None
    stages: list[StagePlacement] = []
    start = 0
    for index, device in enumerate(order):
        prefix = cost.time_prefix(cluster.device(device).kind)
        budget = bound_s - cluster.device(device).stage_overhead_s
        end = int(np.searchsorted(prefix, prefix[start] + budget, side="right")) - 1
        end = min(end, num_units)
        following = order[index + 1] if index + 1 < len(order) else None
        while end > start:
            fits = cost.memory_bytes(start, end) <= cluster.device(device).memory_bytes
            if end == num_units:
                link_ok = cost.transfer_s(float(cost.output_bytes[-1]), device, cluster.source)
            elif following is None:
                link_ok = INF
            else:
                link_ok = cost.transfer_s(float(cost.output_bytes[end - 1]), device, following)
            if fits and link_ok <= bound_s:
                break
            end -= 1
        if end <= start:  # below start when the stage's own cost exceeds the bound
            return None
        stages.append(StagePlacement(device=device, start=start, end=end))
        start = end
        if start == num_units:
            return stages
    return None


def quick_upper_bound(cost: CostModel, objective: Objective) -> float:
    """A cheap achievable value: best single device, or (throughput) greedy fills, else inf."""
    best = INF
    for stages in heuristic_plans(cost, objective):
        best = min(best, _achieved(cost, stages, objective))
    return best


def heuristic_plans(cost: CostModel, objective: Objective) -> list[tuple[StagePlacement, ...]]:
    """Cheap feasible plans: every single device that fits, and (throughput) greedy fills.

    For throughput, each of a few device orders is filled greedily under a bound found by
    bisection; the best is usually within a few percent of the optimum, which keeps the exact
    DP's tables (and the MILP's variables) small.
    """
    plans: list[tuple[StagePlacement, ...]] = []
    best = INF
    num_units = cost.num_units
    for device in cost.cluster.devices:
        if cost.memory_bytes(0, num_units) <= device.memory_bytes:
            stage = (StagePlacement(device=device.name, start=0, end=num_units),)
            plans.append(stage)
            best = min(best, _achieved(cost, stage, objective))
    if objective != "throughput":
        return plans
    by_speed = sorted(cost.cluster.devices, key=lambda d: float(cost.time_prefix(d.kind)[-1]))
    fast_first = [d.name for d in by_speed]
    orders = [fast_first, fast_first[::-1], list(cost.cluster.device_names)]
    source = cost.cluster.source
    orders += [[source, *[d for d in o if d != source]] for o in orders[:2]]
    orders += [[*[d for d in o if d != source], source] for o in orders[:2]]
    per_unit = [np.diff(cost.time_prefix(d.kind)) for d in cost.cluster.devices]
    low = float(np.max(np.min(np.stack(per_unit), axis=0)))
    for order in orders:
        high = best if np.isfinite(best) else float(max(p.sum() for p in per_unit)) * 2 + 1e3
        if _greedy_fill(cost, order, high) is None:
            continue
        lo_s, hi_s = low, high
        for _ in range(30):
            mid = (lo_s + hi_s) / 2
            if _greedy_fill(cost, order, mid) is None:
                lo_s = mid
            else:
                hi_s = mid
        stages = _greedy_fill(cost, order, hi_s)
        if stages:
            plans.append(tuple(stages))
            best = min(best, _achieved(cost, tuple(stages), objective))
    return plans


DP_WORK_LIMIT = 4_000_000
"""Count vectors x classes² up to which `optimal` uses the exact class-count DP (0.01-0.6 s on
the benchmark's clusters of a few kinds); beyond it the HiGHS model of planners.pipeline_milp."""


def dp_work(groups: list[tuple[str, ...]]) -> int:
    """Rough size of the class-count DP: Π (n_k + 1) vectors x K classes x K link groups."""
    return _num_vectors(groups) * len(groups) ** 2


@register_planner("optimal", version="1")
def plan_optimal(cost: CostModel, objective: Objective, options: PlanOptions) -> PlannerResult:
    """Exact optimum of the §4 cost model (period or latency), or the best plan within the time
    limit with a certified gap.

    Clusters of a few device classes go to the class-count DP (exact, bitwise); clusters of
    many distinct devices go to the stage MILP (planners.pipeline_milp), which proves optimality
    or reports its gap to a valid lower bound.
    """
    classes = device_classes(cost)
    groups = [c.devices for c in classes]
    if _num_vectors(groups) <= MAX_EXACT_VECTORS and dp_work(groups) <= DP_WORK_LIMIT:
        bound = quick_upper_bound(cost, objective)
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
    return plan_milp(cost, objective, options, num_classes=len(classes))


def plan_milp(
    cost: CostModel, objective: Objective, options: PlanOptions, *, num_classes: int = 0
) -> PlannerResult:
    """The stage MILP on every device (planners.pipeline_milp), warm-started by heuristics."""
    solution, graph = solve_pipeline(
        cost,
        objective,
        incumbents=heuristic_plans(cost, objective),
        time_limit_s=options.time_limit_s,
        target_gap=max(options.target_gap, OPTIMAL_GAP),
        progress=options.progress,
    )
    if not solution.stages:
        raise _infeasible(cost)
    stages = to_placements(graph, solution.stages)
    info: list[tuple[str, str | int | float | bool]] = [
        ("engine", "milp"),
        ("exact", solution.optimal),
        ("target_gap", options.target_gap),
    ]
    if num_classes:
        info.append(("num_classes", num_classes))
    if options.time_limit_s is not None:
        info.append(("time_limit_s", options.time_limit_s))
    for key in ("lp_solves", "milp_solves", "timed_out", "lazy_rounds"):
        if key in solution.stats:
            info.append((key, solution.stats[key]))
    return PlannerResult(
        stages=stages,
        optimal=solution.optimal,
        lower_bound_s=solution.lower_bound,
        options=tuple(info),
    )


@register_planner("milp", version="1")
def plan_milp_only(cost: CostModel, objective: Objective, options: PlanOptions) -> PlannerResult:
    """The stage MILP even where the class-count DP would do (for comparisons and tests)."""
    return plan_milp(cost, objective, options)
