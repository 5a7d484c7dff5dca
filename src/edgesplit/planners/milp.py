"""Mixed-integer model of a `StageGraph`, solved with HiGHS (highspy): plans with certified gaps.

Owns `solve_stage_graph`, `SolveProgress` and `GraphSolution`. Imports numpy, highspy and
planners.stage_graph only (no torch, no ray). The model is the path formulation of the stage
graph (prima.cpp also solves its layer assignment with HiGHS; PipeEdge, DSD 2022 §III, is the DP
this generalises when devices are all distinct):

[Note: stage-milp]
    x[d, a, b] in {0, 1}   device d runs units [a, b)        (only stages that fit memory and
                                                               survive the relaxed-DP bounds)
    flow   Σ_{a=0} x = 1;  Σ_{b=p} x = Σ_{a=p} x  (0 < p < L)   the stages tile [0, L)
    device Σ_{a,b} x[d, ·, ·] <= 1                              each device at most once
    E[d, p] = Σ_a x[d, a, p] (d's stage ends at p),  S[e, p] = Σ_b x[e, p, b]
    sum part (latency, generation L): transition T[d, e, p] >= 0 with Σ_e T = E[d, p] and
        Σ_d T = S[e, p] over the *relevant* triples (those the relaxed DP cannot rule out against
        the incumbent), cost H[d, e, p] each; an irrelevant successor is thereby forbidden.
    max part of a mixed goal (generation P): Z >= Σ_{a,b} C[d, a, b] x[d, a, b] per device (at
        most one stage each, so this is its compute), Z >= in/out of the first/last stage,
        Z >= Hmax T per transition that could bind.
    objective: Σ costs (pure sum) or Z with Z >= sum_weight * total (mixed).
Pure bottleneck goals (the period) go to planners.period_search instead. Every model solved is
the true problem restricted to plans that could beat the incumbent, so HiGHS's dual bound is a
valid lower bound on every plan, and the incumbent (always evaluated exactly by
`StageGraph.evaluate`) is an upper bound.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import highspy
import numpy as np

from edgesplit.planners.highs import new_highs
from edgesplit.planners.period_search import search_bottleneck
from edgesplit.planners.progress import ProgressFn, SolveProgress
from edgesplit.planners.stage_graph import (
    Goal,
    PenalizedBounds,
    RelaxedBounds,
    StageGraph,
    lagrangian_bounds,
    relaxed_bounds,
)

__all__ = ["GraphSolution", "ProgressFn", "SolveProgress", "solve_stage_graph"]

logger = logging.getLogger(__name__)

INF = np.inf
OPTIMAL_GAP = 1e-6
"""Relative gap under which a plan is reported optimal (HiGHS works to 1e-6 tolerances)."""
_SLACK = 1e-9  # relative slack when comparing bounds with an incumbent (rounding of sums)


@dataclass(frozen=True, slots=True)
class GraphSolution:
    """Best stages found [(device index, start, end)], their value and a valid lower bound."""

    stages: tuple[tuple[int, int, int], ...]
    value: float
    lower_bound: float
    optimal: bool
    stats: dict[str, int | float | bool | str] = field(default_factory=dict)

    @property
    def gap(self) -> float:
        if not self.stages or self.lower_bound <= 0:
            return INF if not self.stages else 0.0
        return max(0.0, self.value / self.lower_bound - 1.0)


def _valid(graph: StageGraph, stages: Sequence[tuple[int, int, int]]) -> bool:
    if not stages or stages[0][1] != 0 or stages[-1][2] != graph.num_units:
        return False
    if len({d for d, _, _ in stages}) != len(stages):
        return False
    if graph.max_stages is not None and len(stages) > graph.max_stages:
        return False
    for (_, _, b), (_, a, _) in itertools.pairwise(stages):
        if a != b:
            return False
    return all(a < b and graph.fits(d, a, b) for d, a, b in stages)


class _Incumbent:
    def __init__(self, graph: StageGraph, goal: Goal) -> None:
        self.graph = graph
        self.goal = goal
        self.value = INF
        self.stages: tuple[tuple[int, int, int], ...] = ()

    def offer(self, stages: Sequence[tuple[int, int, int]]) -> bool:
        if not _valid(self.graph, stages):
            return False
        value = self.goal.combine(*self.graph.evaluate(list(stages)))
        if value < self.value:
            self.value = value
            self.stages = tuple(stages)
            return True
        return False


def solve_stage_graph(
    graph: StageGraph,
    goal: Goal,
    *,
    incumbents: Sequence[Sequence[tuple[int, int, int]]] = (),
    time_limit_s: float | None = None,
    target_gap: float = OPTIMAL_GAP,
    progress: ProgressFn | None = None,
    progress_interval_s: float = 1.0,
) -> GraphSolution:
    """Best plan of `graph` under `goal`, with a certified lower bound.

    Args:
        graph: the stage graph (devices, compute, memory, links).
        goal: which mix of bottleneck and total to minimise.
        incumbents: candidate plans from heuristics (invalid ones are ignored); the best warm-starts
            the solver and bounds the model.
        time_limit_s: wall-clock budget (None: until optimal or `target_gap`).
        target_gap: stop once best / bound - 1 is at most this.
        progress: called about every `progress_interval_s` during long solves.

    Returns:
        The best plan (empty stages when none fits memory), its exact value and a lower bound;
        `optimal` when the gap is below OPTIMAL_GAP.
    """
    started = time.perf_counter()
    deadline = INF if time_limit_s is None else started + time_limit_s
    compute = graph.compute()
    hop_sum = graph.hops(bottleneck=False)
    hop_max = hop_sum if graph.max_hop_latency else graph.hops(bottleneck=True)
    best = _Incumbent(graph, goal)
    for stages in incumbents:
        best.offer(stages)

    # Relaxed bounds (module docstring of stage_graph) and their own plans as incumbents.
    lower = 0.0
    bound_max: RelaxedBounds | None = None
    bound_sum: PenalizedBounds | None = None
    if goal.has_max:
        bound_max = relaxed_bounds(
            compute, hop_max, graph.in_max_s, graph.out_max_s, combine_sum=False
        )
        lower = max(lower, goal.max_weight * float(np.min(bound_max.finals(False))))
        best.offer(bound_max.path(False))
    if goal.has_sum:

        def offer(stages: list[tuple[int, int, int]]) -> float:
            best.offer(stages)
            return best.value / goal.sum_weight

        bound_sum = lagrangian_bounds(
            graph,
            compute,
            hop_sum,
            best.value / goal.sum_weight,
            deadline=deadline,
            target_gap=target_gap,
            on_plan=offer,
        )
        lower = max(lower, goal.sum_weight * bound_sum.lower_bound)
    stats: dict[str, int | float | bool | str] = {"relaxed_bound": lower}
    if not np.isfinite(lower):
        return GraphSolution((), INF, INF, False, {**stats, "infeasible": True})

    last_report = [started]

    def report(bound: float) -> None:
        # At most one report per interval, none in the first interval (quick solves stay quiet).
        now = time.perf_counter()
        if progress is not None and now - last_report[0] >= progress_interval_s:
            last_report[0] = now
            progress(SolveProgress(now - started, best.value, bound))

    if best.value <= lower * (1 + target_gap) or best.value <= lower * (1 + OPTIMAL_GAP):
        return _finish(best, lower, {**stats, "milp": False}, started)

    if goal.has_max and not goal.has_sum:
        return _search(
            graph, goal, compute, hop_max, best, lower, stats, started, deadline, report, target_gap
        )

    upper = best.value * (1 + _SLACK) if np.isfinite(best.value) else INF
    model = _Model(graph, goal, compute, hop_sum, hop_max, bound_sum, bound_max, upper, lower)
    stats.update(num_stage_vars=model.num_x, num_transition_vars=model.num_t)
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        outcome = model.solve(
            best.stages, remaining, target_gap, progress, progress_interval_s, started, best.value
        )
        if outcome.stages:
            best.offer(outcome.stages)
        if outcome.infeasible:
            if not best.stages:
                return GraphSolution((), INF, INF, False, {**stats, "infeasible": True})
            # Nothing beats the incumbent (within slack): it is optimal.
            lower = max(lower, best.value / (1 + _SLACK))
        else:
            lower = max(lower, min(outcome.dual_bound, best.value))
        report(lower)
    return _finish(best, lower, stats, started)


def _search(
    graph: StageGraph,
    goal: Goal,
    compute: np.ndarray,
    hop_max: np.ndarray,
    best: _Incumbent,
    lower: float,
    stats: dict[str, int | float | bool | str],
    started: float,
    deadline: float,
    report: Callable[[float], None],
    target_gap: float,
) -> GraphSolution:
    """Pure bottleneck goals: parametric search (planners.period_search)."""
    weight = goal.max_weight

    def evaluate(stages: Sequence[tuple[int, int, int]]) -> float | None:
        if not _valid(graph, stages):
            return None
        return graph.evaluate(list(stages))[0]

    finite = compute[np.isfinite(compute)]
    if not finite.size:
        return GraphSolution((), INF, INF, False, {**stats, "infeasible": True})
    ceiling = (
        best.value / weight
        if best.stages
        else float(
            max(
                finite.max(),
                graph.in_max_s.max(),
                graph.out_max_s.max(),
                np.nanmax(np.where(np.isfinite(hop_max), hop_max, 0.0)),
            )
        )
    )
    result = search_bottleneck(
        graph,
        compute,
        hop_max,
        lower=lower / weight,
        upper=ceiling,
        incumbent=best.stages,
        evaluate=evaluate,
        deadline=deadline,
        target_gap=target_gap,
        on_bound=lambda _best, bound: report(weight * bound),
    )
    if result.stages:
        best.offer(result.stages)
    stats.update(
        lp_solves=result.lp_solves, milp_solves=result.milp_solves, timed_out=result.timed_out
    )
    if not best.stages:
        return GraphSolution((), INF, INF, False, {**stats, "infeasible": True})
    return _finish(best, max(lower, weight * result.lower_bound), stats, started)


def _finish(
    best: _Incumbent, lower: float, stats: dict[str, int | float | bool | str], started: float
) -> GraphSolution:
    stats["solve_s"] = time.perf_counter() - started
    if not best.stages:
        return GraphSolution((), INF, lower, False, stats)
    lower = min(lower, best.value)
    optimal = best.value <= lower * (1 + OPTIMAL_GAP)
    return GraphSolution(best.stages, best.value, lower, optimal, stats)


@dataclass(frozen=True, slots=True)
class _Outcome:
    stages: tuple[tuple[int, int, int], ...]
    objective: float  # model objective of its solution (inf when none)
    dual_bound: float
    complete: bool  # solved to the requested gap (not stopped by the time limit)
    infeasible: bool


class _Model:
    """The HiGHS model of one stage graph; rows can be added between solves."""

    def __init__(
        self,
        graph: StageGraph,
        goal: Goal,
        compute: np.ndarray,
        hop_sum: np.ndarray,
        hop_max: np.ndarray,
        bound_sum: PenalizedBounds | None,
        bound_max: RelaxedBounds | None,
        upper: float,
        lower: float,
    ) -> None:
        self.graph = graph
        self.goal = goal
        self.hop_max = hop_max
        self.upper = upper
        num_units = graph.num_units
        limit = upper * (1 + _SLACK) + 1e-15 if np.isfinite(upper) else INF

        # Stage variables: memory-feasible and not ruled out by the relaxed bounds.
        keep = np.isfinite(compute)
        if goal.has_max and bound_max is not None and np.isfinite(limit):
            through = np.maximum(
                np.maximum(bound_max.f_in[:, :, None], compute), bound_max.b_after[:, None, :]
            )
            keep &= goal.max_weight * through <= limit
        if goal.has_sum and bound_sum is not None and np.isfinite(limit):
            # Priced bounds (stage_graph [Note: lagrangian]): valid for every plan.
            priced = bound_sum.bounds
            through = (
                priced.f_in[:, :, None]
                + (compute + bound_sum.penalty[:, None, None])
                + priced.b_after[:, None, :]
                - bound_sum.offset
            )
            keep &= goal.sum_weight * through <= limit
        d_index, a_index, b_index = np.nonzero(keep)
        self.arc_d, self.arc_a, self.arc_b = d_index, a_index, b_index
        self.arc_cost = compute[d_index, a_index, b_index]
        self.num_x = int(d_index.size)
        self.arc_of = {
            (int(d), int(a), int(b)): i
            for i, (d, a, b) in enumerate(zip(d_index, a_index, b_index, strict=True))
        }
        # E[d, p] and S[e, p] as column lists.
        self.ends: dict[tuple[int, int], list[int]] = {}
        self.starts: dict[tuple[int, int], list[int]] = {}
        for i in range(self.num_x):
            self.ends.setdefault((int(d_index[i]), int(b_index[i])), []).append(i)
            self.starts.setdefault((int(d_index[i]), int(a_index[i])), []).append(i)

        # Transition variables for the sum part over relevant triples.
        self.t_d = self.t_e = self.t_p = np.zeros(0, dtype=np.int64)
        if goal.has_sum:
            assert bound_sum is not None
            self._transitions(bound_sum, bound_max, hop_sum, limit)
        self.num_t = int(self.t_d.size)
        self.has_z = goal.has_max
        self.z = self.num_x + self.num_t
        num_cols = self.num_x + self.num_t + (1 if self.has_z else 0)

        highs = new_highs()
        # Presolve took 14 of 24 s on 16 distinct devices (latency) and removed one row.
        highs.setOptionValue("presolve", "off")
        highs.setOptionValue("mip_feasibility_tolerance", 1e-7)
        highs.setOptionValue("primal_feasibility_tolerance", 1e-8)
        self.highs = highs
        costs = np.zeros(num_cols)
        col_lower = np.zeros(num_cols)
        col_upper = np.ones(num_cols)
        in_cost = np.where(a_index == 0, graph.in_s[d_index], 0.0)
        out_cost = np.where(b_index == num_units, graph.out_s[d_index], 0.0)
        self.sum_cost = np.concatenate(
            [self.arc_cost + in_cost + out_cost, hop_sum[self.t_d, self.t_e, self.t_p]]
        )
        if self.has_z:
            costs[self.z] = 1.0
            col_lower[self.z] = lower
            col_upper[self.z] = upper if np.isfinite(upper) else highs.getInfinity()
        else:
            costs[: self.num_x + self.num_t] = self.sum_cost
        highs.addCols(
            num_cols,
            costs,
            col_lower,
            col_upper,
            0,
            np.zeros(0, dtype=np.int32),
            np.zeros(0, dtype=np.int32),
            np.zeros(0),
        )
        integrality = np.full(self.num_x, highspy.HighsVarType.kInteger)
        highs.changeColsIntegrality(self.num_x, np.arange(self.num_x, dtype=np.int32), integrality)
        self.rows = _Rows()
        self._structure_rows()
        if self.has_z:
            self._bottleneck_rows(lower)
        if goal.has_sum and self.has_z:
            # Z >= sum_weight * total.
            columns = list(range(self.num_x + self.num_t))
            values = list(-goal.sum_weight * self.sum_cost)
            self.rows.add([*columns, self.z], [*values, 1.0], 0.0, INF)
        self.rows.flush(highs)

    # -- building ----------------------------------------------------------------------------

    def _transitions(
        self,
        bound_sum: PenalizedBounds,
        bound_max: RelaxedBounds | None,
        hop_sum: np.ndarray,
        limit: float,
    ) -> None:
        graph, goal = self.graph, self.goal
        num_units = graph.num_units
        can_end = np.zeros((graph.num_devices, num_units + 1), dtype=bool)
        can_start = np.zeros((graph.num_devices, num_units + 1), dtype=bool)
        can_end[self.arc_d, self.arc_b] = True
        can_start[self.arc_d, self.arc_a] = True
        candidate = can_end[:, None, :] & can_start[None, :, :]  # (D, D, L+1)
        candidate[:, :, 0] = False
        candidate[:, :, num_units] = False
        candidate &= np.isfinite(hop_sum)
        if np.isfinite(limit):
            priced = bound_sum.bounds
            through = (
                priced.f_end[:, None, :] + hop_sum + priced.b_start[None, :, :] - bound_sum.offset
            )
            candidate &= goal.sum_weight * through <= limit
            if goal.has_max and bound_max is not None:
                through_max = np.maximum(
                    np.maximum(bound_max.f_end[:, None, :], self.hop_max),
                    bound_max.b_start[None, :, :],
                )
                candidate &= goal.max_weight * through_max <= limit
        self.t_d, self.t_e, self.t_p = (v.astype(np.int64) for v in np.nonzero(candidate))

    def _structure_rows(self) -> None:
        graph = self.graph
        num_units = graph.num_units
        rows = self.rows
        # Flow: one stage starts at 0; at every inner cut, stages ending = stages starting.
        first = [i for (d, a), cols in self.starts.items() if a == 0 for i in cols]
        rows.add(first, [1.0] * len(first), 1.0, 1.0)
        for p in range(1, num_units):
            ending = [i for d in range(graph.num_devices) for i in self.ends.get((d, p), [])]
            starting = [i for d in range(graph.num_devices) for i in self.starts.get((d, p), [])]
            if ending or starting:
                rows.add(ending + starting, [1.0] * len(ending) + [-1.0] * len(starting), 0, 0)
        # Each device at most once; optional cap on the number of stages.
        per_device: dict[int, list[int]] = {}
        for i in range(self.num_x):
            per_device.setdefault(int(self.arc_d[i]), []).append(i)
        for cols in per_device.values():
            if len(cols) > 1:
                rows.add(cols, [1.0] * len(cols), -INF, 1.0)
        if graph.max_stages is not None:
            rows.add(list(range(self.num_x)), [1.0] * self.num_x, -INF, float(graph.max_stages))
        # Transitions: Σ_e T[d, e, p] = E[d, p], Σ_d T[d, e, p] = S[e, p] (inner cuts).
        if self.goal.has_sum:
            out_of: dict[tuple[int, int], list[int]] = {}
            into: dict[tuple[int, int], list[int]] = {}
            for j in range(self.num_t):
                column = self.num_x + j
                out_of.setdefault((int(self.t_d[j]), int(self.t_p[j])), []).append(column)
                into.setdefault((int(self.t_e[j]), int(self.t_p[j])), []).append(column)
            for (d, p), cols in self.ends.items():
                if p == num_units:
                    continue
                trans = out_of.get((d, p), [])
                rows.add(trans + cols, [1.0] * len(trans) + [-1.0] * len(cols), 0, 0)
            for (e, p), cols in self.starts.items():
                if p == 0:
                    continue
                trans = into.get((e, p), [])
                rows.add(trans + cols, [1.0] * len(trans) + [-1.0] * len(cols), 0, 0)

    def _bottleneck_rows(self, lower: float) -> None:
        graph, goal, rows, z = self.graph, self.goal, self.rows, self.z
        weight = goal.max_weight
        num_units = graph.num_units
        per_device: dict[int, list[int]] = {}
        for i in range(self.num_x):
            per_device.setdefault(int(self.arc_d[i]), []).append(i)
        for cols in per_device.values():
            loads = [-weight * float(self.arc_cost[i]) for i in cols]
            if min(loads, default=0.0) < -lower:
                rows.add([*cols, z], [*loads, 1.0], 0.0, INF)
        first = [i for i in range(self.num_x) if self.arc_a[i] == 0]
        values = [-weight * float(graph.in_max_s[self.arc_d[i]]) for i in first]
        rows.add([*first, z], [*values, 1.0], 0.0, INF)
        last = [i for i in range(self.num_x) if self.arc_b[i] == num_units]
        values = [-weight * float(graph.out_max_s[self.arc_d[i]]) for i in last]
        rows.add([*last, z], [*values, 1.0], 0.0, INF)
        # Transitions exist (mixed goals only reach this model): Z >= Hmax T where it can bind.
        hops = weight * self.hop_max[self.t_d, self.t_e, self.t_p]
        for j in np.nonzero(hops > lower)[0]:
            rows.add([self.num_x + int(j), z], [-float(hops[j]), 1.0], 0.0, INF)

    # -- solving -------------------------------------------------------------------------------

    def solve(
        self,
        warm: Sequence[tuple[int, int, int]],
        time_limit_s: float,
        target_gap: float,
        progress: ProgressFn | None,
        interval_s: float,
        started: float,
        best_value: float,
    ) -> _Outcome:
        highs = self.highs
        highs.setOptionValue("time_limit", float(max(time_limit_s, 0.01)))
        highs.setOptionValue("mip_rel_gap", float(max(target_gap, 1e-9)))
        highs.setOptionValue("mip_abs_gap", 0.0)
        if warm:
            solution = self._columns_of(warm)
            if solution is not None:
                highs.setSolution(len(solution), np.arange(len(solution), dtype=np.int32), solution)
        last = [time.perf_counter()]
        callback = None
        if progress is not None:

            def callback(event: object) -> None:
                now = time.perf_counter()
                if now - last[0] < interval_s:
                    return
                last[0] = now
                out = event.data_out  # type: ignore[attr-defined]
                primal = float(out.mip_primal_bound)
                progress(
                    SolveProgress(now - started, min(best_value, primal), float(out.mip_dual_bound))
                )

            highs.cbMipInterrupt.subscribe(callback)
        try:
            highs.run()
        finally:
            if callback is not None:
                highs.cbMipInterrupt.unsubscribe(callback)
        status = highs.getModelStatus()
        info = highs.getInfo()
        if status == highspy.HighsModelStatus.kInfeasible:
            return _Outcome((), INF, INF, True, True)
        complete = status == highspy.HighsModelStatus.kOptimal
        dual = float(info.mip_dual_bound)
        if not np.isfinite(dual):
            dual = 0.0
        stages: tuple[tuple[int, int, int], ...] = ()
        objective = INF
        if info.primal_solution_status == 2:  # kSolutionStatusFeasible
            values = np.asarray(highs.getSolution().col_value)
            stages = self._decode(values)
            objective = float(info.objective_function_value)
        return _Outcome(stages, objective, dual, complete, False)

    def _columns_of(self, stages: Sequence[tuple[int, int, int]]) -> np.ndarray | None:
        num_cols = self.num_x + self.num_t + (1 if self.has_z else 0)
        values = np.zeros(num_cols)
        for d, a, b in stages:
            index = self.arc_of.get((d, a, b))
            if index is None:
                return None
            values[index] = 1.0
        if self.num_t:
            lookup = {
                (int(d), int(e), int(p)): j
                for j, (d, e, p) in enumerate(zip(self.t_d, self.t_e, self.t_p, strict=True))
            }
            for (d, _, b), (e, _, _) in itertools.pairwise(stages):
                j = lookup.get((d, e, b))
                if j is None:
                    return None
                values[self.num_x + j] = 1.0
        if self.has_z:
            bottleneck, total = self.graph.evaluate(list(stages))
            values[self.z] = self.goal.combine(bottleneck, total) * (1 + 1e-12)
        return values

    def _decode(self, values: np.ndarray) -> tuple[tuple[int, int, int], ...]:
        chosen = np.nonzero(values[: self.num_x] > 0.5)[0]
        stages = sorted(
            (int(self.arc_d[i]), int(self.arc_a[i]), int(self.arc_b[i])) for i in chosen
        )
        return tuple(sorted(stages, key=lambda s: s[1]))


class _Rows:
    """Rows collected in CSR form and added to HiGHS in one call."""

    def __init__(self) -> None:
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.starts: list[int] = []
        self.index: list[int] = []
        self.value: list[float] = []

    def add(self, columns: Sequence[int], values: Sequence[float], lo: float, hi: float) -> None:
        self.starts.append(len(self.index))
        self.index.extend(int(c) for c in columns)
        self.value.extend(float(v) for v in values)
        self.lower.append(float(lo))
        self.upper.append(float(hi))

    def flush(self, highs: highspy.Highs) -> None:
        if not self.starts:
            return
        infinity = highs.getInfinity()
        highs.addRows(
            len(self.starts),
            np.clip(np.asarray(self.lower), -infinity, infinity),
            np.clip(np.asarray(self.upper), -infinity, infinity),
            len(self.index),
            np.asarray(self.starts, dtype=np.int32),
            np.asarray(self.index, dtype=np.int32),
            np.asarray(self.value),
        )
        self.__init__()  # type: ignore[misc]
