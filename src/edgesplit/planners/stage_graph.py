"""The pipeline placement problem as a graph of stages, and its cheap relaxed bounds.

Owns `StageGraph` (per-device stage costs, memory, links, input/output transfers), `Goal` (which
mix of bottleneck and sum is minimised) and the relaxed dynamic programme that bounds both. Every
planner that places contiguous unit ranges on distinct devices (pipeline, generation) builds one
of these; `planners.milp` solves it. Imports numpy only (no torch, no ray, no edgesplit.core).

[Note: stage-graph] A plan is a path S -> (d1, [0, b1)) -> (d2, [b1, b2)) -> ... -> T. Each
stage (d, a, b) has compute C[d, a, b] and must fit d's memory; the cut at b from d to e costs a
hop H[d, e, b] = latency(d, e) + cut_bytes[b] / bandwidth(d, e) (Cluster.transfer_s); the path
pays in[d1] and out[dk]. Each device appears at most once. The objective value is

    value = max(max_weight * bottleneck, sum_weight * total)
    bottleneck = max(in_max[d1], max_i C_i, max_i Hmax_i, out_max[dk])
    total = in + Σ C + Σ H + out

so the §4 period is Goal(1, 0), the §4 latency Goal(0, 1), and generation tokens/s with S
sequences Goal(1, 1/S) (1 / tokens_per_s = max(P, L / S)). The max part may use different hops
(generation: serialisation only, no latency) than the sum part.

Relaxed DP (the same graph without "each device at most once"): F_end[d, b] = best value of a
prefix [0, b) whose last stage runs on d; F_in[d, a] = best value reaching a stage on d that starts
at a; B_* the same from the back. They are lower bounds on any plan through a stage or cut, so a
stage (d, a, b) with F_in[d, a] (+) C[d, a, b] (+) B_after[d, b] > UB cannot be in a plan better
than an incumbent UB and is dropped before the MILP is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Goal",
    "PenalizedBounds",
    "RelaxedBounds",
    "StageGraph",
    "beam_plan",
    "lagrangian_bounds",
    "relaxed_bounds",
]

INF = np.inf


@dataclass(frozen=True, slots=True)
class Goal:
    """value = max(max_weight * bottleneck, sum_weight * total); weights >= 0, not both 0."""

    max_weight: float
    sum_weight: float

    @property
    def has_max(self) -> bool:
        return self.max_weight > 0

    @property
    def has_sum(self) -> bool:
        return self.sum_weight > 0

    def combine(self, bottleneck: float, total: float) -> float:
        return max(
            self.max_weight * bottleneck if self.has_max else 0.0,
            self.sum_weight * total if self.has_sum else 0.0,
        )


@dataclass(frozen=True, slots=True)
class StageGraph:
    """Device-level numbers of one placement problem (D devices, L units; shapes in comments).

    `stage_memory[a, b]` is the memory of a stage [a, b) (computed by the caller with its cost
    model's own expression, so that fits agree bitwise); it must be <= capacity[d].
    """

    devices: tuple[str, ...]
    time_prefix: np.ndarray  # (D, L+1) cumulative compute seconds per device
    stage_memory: np.ndarray  # (L+1, L+1) bytes of a stage [a, b) (a < b; rest ignored)
    capacity: np.ndarray  # (D,) bytes
    latency_s: np.ndarray  # (D, D) link latency d -> e
    bandwidth: np.ndarray  # (D, D) bytes/s d -> e
    cut_bytes: np.ndarray  # (L+1,) bytes crossing a cut at position p (1 <= p < L)
    in_s: np.ndarray  # (D,) source -> first stage (sum part)
    out_s: np.ndarray  # (D,) last stage -> source (sum part)
    in_max_s: np.ndarray  # (D,) the same for the bottleneck part
    out_max_s: np.ndarray  # (D,)
    max_hop_latency: bool = True  # whether the bottleneck's hops include link latency
    max_stages: int | None = None
    stage_overhead_s: np.ndarray | None = None  # (D,) runtime cost per stage (DeviceSpec)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def num_units(self) -> int:
        return int(self.time_prefix.shape[1]) - 1

    def compute(self) -> np.ndarray:
        """(D, L+1, L+1): C[d, a, b] for a < b when the stage fits memory, else inf."""
        num_units = self.num_units
        prefix = self.time_prefix
        compute = prefix[:, None, :] - prefix[:, :, None]
        if self.stage_overhead_s is not None:  # CostModel.compute_s: units + the stage's cost
            compute = compute + self.stage_overhead_s[:, None, None]
        memory = self.stage_memory
        upper = np.triu(np.ones((num_units + 1, num_units + 1), dtype=bool), k=1)
        fits = (memory[None, :, :] <= self.capacity[:, None, None]) & upper[None, :, :]
        result: np.ndarray = np.where(fits, compute, INF)
        return result

    def hops(self, *, bottleneck: bool) -> np.ndarray:
        """(D, D, L+1): hop of a cut at p from d to e (inf on the diagonal).

        Same expression as Cluster.transfer_s (latency + bytes / bandwidth), so values match the
        cost model bitwise.
        """
        latency = (
            self.latency_s if (not bottleneck or self.max_hop_latency) else 0.0 * self.latency_s
        )
        hop: np.ndarray = (
            latency[:, :, None] + self.cut_bytes[None, None, :] / self.bandwidth[:, :, None]
        )
        index = np.arange(self.num_devices)
        hop[index, index, :] = INF
        return hop

    def evaluate(self, stages: list[tuple[int, int, int]]) -> tuple[float, float]:
        """(bottleneck, total) of stages [(device index, start, end)] in pipeline order."""
        first, last = stages[0][0], stages[-1][0]
        bottleneck = max(float(self.in_max_s[first]), float(self.out_max_s[last]))
        total = float(self.in_s[first])
        for index, (d, a, b) in enumerate(stages):
            compute = float(self.time_prefix[d, b] - self.time_prefix[d, a])
            if self.stage_overhead_s is not None:
                compute = compute + float(self.stage_overhead_s[d])
            bottleneck = max(bottleneck, compute)
            total = total + compute
            if index + 1 < len(stages):
                e = stages[index + 1][0]
                size = float(self.cut_bytes[b])
                hop = float(self.latency_s[d, e]) + size / float(self.bandwidth[d, e])
                hop_max = hop if self.max_hop_latency else size / float(self.bandwidth[d, e])
                bottleneck = max(bottleneck, hop_max)
                total = total + hop
        total = total + float(self.out_s[last])
        return bottleneck, total

    def fits(self, d: int, a: int, b: int) -> bool:
        return bool(self.stage_memory[a, b] <= self.capacity[d])


@dataclass(frozen=True, slots=True)
class RelaxedBounds:
    """Forward/backward relaxed values (module docstring), for one combine rule."""

    f_in: np.ndarray  # (D, L+1) best prefix value reaching a stage on d starting at a
    f_end: np.ndarray  # (D, L+1) best prefix value whose last stage on d ends at b
    b_start: np.ndarray  # (D, L+1) best suffix value from a stage on d starting at a
    b_after: np.ndarray  # (D, L+1) best suffix value after a stage on d ending at b
    f_in_arg: np.ndarray  # (D, L+1) previous device of f_in (-1 at a = 0)
    f_end_arg: np.ndarray  # (D, L+1) start a of the stage achieving f_end

    def finals(self, combine_sum: bool) -> np.ndarray:
        """(D,) relaxed value of the best plan whose last stage runs on d."""
        finals: np.ndarray = (
            self.f_end[:, -1] + self.b_after[:, -1]
            if combine_sum
            else np.maximum(self.f_end[:, -1], self.b_after[:, -1])
        )
        return finals

    def path(self, combine_sum: bool) -> list[tuple[int, int, int]]:
        """The relaxed optimum's stages (devices may repeat)."""
        num_units = self.f_end.shape[1] - 1
        finals = self.finals(combine_sum)
        d = int(np.argmin(finals))
        if not np.isfinite(finals[d]):
            return []
        b = num_units
        stages: list[tuple[int, int, int]] = []
        while True:
            a = int(self.f_end_arg[d, b])
            stages.append((d, a, b))
            if a == 0:
                break
            d, b = int(self.f_in_arg[d, a]), a
        return stages[::-1]


def relaxed_bounds(
    compute: np.ndarray,
    hops: np.ndarray,
    in_s: np.ndarray,
    out_s: np.ndarray,
    *,
    combine_sum: bool,
    backward: bool = True,
) -> RelaxedBounds:
    """Relaxed DP over (position, last device), summed (latency) or maxed (bottleneck).

    O(D·L² + D²·L) with numpy; 64 devices x 128 units take ~0.1 s.
    """
    num_devices, positions, _ = compute.shape
    num_units = positions - 1
    op = np.add if combine_sum else np.maximum
    f_in = np.full((num_devices, positions), INF)
    f_end = np.full((num_devices, positions), INF)
    f_in_arg = np.full((num_devices, positions), -1, dtype=np.int64)
    f_end_arg = np.full((num_devices, positions), -1, dtype=np.int64)
    f_in[:, 0] = in_s
    for b in range(1, positions):
        candidates = op(f_in[:, :b], compute[:, :b, b])  # (D, b)
        f_end_arg[:, b] = np.argmin(candidates, axis=1)
        f_end[:, b] = candidates[np.arange(num_devices), f_end_arg[:, b]]
        if b < num_units:
            into = op(f_end[:, b][:, None], hops[:, :, b])  # (from e, to d)
            f_in_arg[:, b] = np.argmin(into, axis=0)
            f_in[:, b] = into[f_in_arg[:, b], np.arange(num_devices)]
    b_after = np.full((num_devices, positions), INF)
    b_start = np.full((num_devices, positions), INF)
    b_after[:, num_units] = out_s
    for a in range(num_units - 1 if backward else -1, -1, -1):
        b_start[:, a] = op(compute[:, a, a + 1 :], b_after[:, a + 1 :]).min(axis=1)
        if a > 0:
            b_after[:, a] = op(hops[:, :, a], b_start[:, a][None, :]).min(axis=1)
    return RelaxedBounds(
        f_in=f_in,
        f_end=f_end,
        b_start=b_start,
        b_after=b_after,
        f_in_arg=f_in_arg,
        f_end_arg=f_end_arg,
    )


def beam_plan(
    graph: StageGraph,
    compute: np.ndarray,
    hop_max: np.ndarray,
    tau: float,
    width: int = 32,
) -> list[tuple[int, int, int]] | None:
    """A plan with bottleneck <= tau found by beam search over device orders, or None.

    Each state is (position reached, last device, devices used); a step appends an unused
    device that takes its longest range within tau (compute, memory, output transfer) if the
    hop into it is within tau. States are ranked by position, then by the compute speed they
    have spent (slower first keeps fast devices for later). A heuristic: None proves nothing.
    """
    num_devices, num_units = graph.num_devices, graph.num_units
    ok = compute <= tau  # (D, L+1, L+1); inf (memory) is never <= tau
    ok[:, :, num_units] &= (graph.out_max_s <= tau)[:, None]
    positions = np.arange(num_units + 1)
    # reach[d, a] = largest b with ok[d, a, b], or a when none.
    reach = np.where(ok.any(axis=2), num_units - np.argmax(ok[:, :, ::-1], axis=2), positions)
    capacity_units = tau * num_units / np.maximum(graph.time_prefix[:, -1], 1e-30)  # (D,)
    pos = np.zeros(1, dtype=np.int64)
    last = np.full(1, -1, dtype=np.int64)
    used = np.zeros((1, num_devices), dtype=bool)
    spent = np.zeros(1)  # capacity (units) of the devices used so far
    parents: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (parent, device, pos)
    for _ in range(min(num_devices, num_units)):
        new_pos = reach[:, pos].T  # (B, D)
        allowed = (~used) & (new_pos > pos[:, None])
        first = last < 0
        if first.any():
            allowed[first] &= (graph.in_max_s <= tau)[None, :]
        inner = ~first
        if inner.any():
            hops = hop_max[last[inner], :, pos[inner]]  # (B', D)
            allowed[inner] &= hops <= tau
        rows, devices = np.nonzero(allowed)
        if rows.size == 0:
            return None
        reached = new_pos[rows, devices]
        cost = spent[rows] + capacity_units[devices]
        done = np.nonzero(reached == num_units)[0]
        if done.size:
            k = done[np.argmin(cost[done])]
            stages = [(int(devices[k]), int(pos[rows[k]]), num_units)]
            row = int(rows[k])
            for parent, device, start in reversed(parents):
                stages.append((int(device[row]), int(start[row]), stages[-1][1]))
                row = int(parent[row])
            return stages[::-1]
        order = np.argsort(cost - reached, kind="stable")[:width]
        rows, devices = rows[order], devices[order]
        parents.append((rows, devices, pos[rows]))
        used = used[rows].copy()
        used[np.arange(rows.size), devices] = True
        pos, last, spent = reached[order], devices, cost[order]
    return None


@dataclass(frozen=True, slots=True)
class PenalizedBounds:
    """Relaxed sum bounds of compute + penalty[d] per stage; subtract `offset` (Σ penalty)."""

    bounds: RelaxedBounds
    penalty: np.ndarray  # (D,)
    lower_bound: float

    @property
    def offset(self) -> float:
        return float(self.penalty.sum())


def lagrangian_bounds(
    graph: StageGraph,
    compute: np.ndarray,
    hop_sum: np.ndarray,
    upper: float,
    *,
    deadline: float,
    max_iterations: int = 150,
    target_gap: float = 0.0,
    on_plan: object = None,
) -> PenalizedBounds:
    """Lagrangian relaxation of "each device at most once" for the summed objective.

    [Note: lagrangian] With a price penalty[d] >= 0 per stage on d, the relaxed DP (devices may
    repeat) of compute + penalty, minus Σ penalty, is a lower bound on every plan (a plan uses
    each device at most once, so it pays at most Σ penalty). Prices follow the subgradient
    uses[d] - 1 with Polyak steps towards `upper`; each relaxed optimum that uses no device twice
    is a real plan and is passed to `on_plan(stages) -> value | None`, which may lower `upper`.
    On the benchmark's clusters the bound closes to the LP optimum of the MILP within ~100 steps.
    """
    import time

    num_devices = graph.num_devices
    penalty = np.zeros(num_devices)
    best_penalty = penalty.copy()
    best_lower = -INF
    theta = 2.0
    stall = 0
    for _ in range(max_iterations):
        if time.perf_counter() >= deadline:
            break
        priced = compute + penalty[:, None, None]
        forward = relaxed_bounds(
            priced, hop_sum, graph.in_s, graph.out_s, combine_sum=True, backward=False
        )
        finals = forward.f_end[:, -1] + graph.out_s
        value = float(np.min(finals))
        if not np.isfinite(value):
            break
        lower = value - float(penalty.sum())
        if lower > best_lower * (1 + 1e-12):
            best_lower, best_penalty, stall = lower, penalty.copy(), 0
        else:
            stall += 1
            if stall >= 5:
                theta, stall = theta / 2, 0
        path = forward.path(True)
        uses = np.bincount([d for d, _, _ in path], minlength=num_devices).astype(np.float64)
        if uses.max() <= 1 and callable(on_plan):
            found = on_plan(path)
            if found is not None:
                upper = min(upper, float(found))
        if np.isfinite(upper) and upper <= best_lower * (1 + target_gap):
            break
        subgradient = uses - 1.0
        subgradient[(penalty <= 0) & (subgradient < 0)] = 0.0
        norm = float(subgradient @ subgradient)
        if norm == 0:
            break  # complementary slackness: the relaxed optimum is optimal
        aim = upper if np.isfinite(upper) else abs(best_lower) * 1.05 + 1e-9
        step = theta * max(aim - lower, 1e-9 * abs(aim)) / norm
        penalty = np.maximum(0.0, penalty + step * subgradient)
        if theta < 1e-4:
            break
    priced = compute + best_penalty[:, None, None]
    bounds = relaxed_bounds(priced, hop_sum, graph.in_s, graph.out_s, combine_sum=True)
    return PenalizedBounds(bounds=bounds, penalty=best_penalty, lower_bound=best_lower)
