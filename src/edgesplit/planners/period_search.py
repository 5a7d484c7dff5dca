"""Parametric search on the bottleneck (period) of a `StageGraph`: LP bisection, then MILP.

Owns `search_bottleneck`. Imports numpy, highspy and planners only (no torch, no ray).

[Note: period-search] The period of any plan is one of finitely many candidate values: a stage's
compute (or, for the first/last stage, the input/output transfer when larger) or a hop. For a
threshold tau the question "is there a plan with period <= tau?" is the feasibility problem

    x[d, a, b] in {0, 1} for stages whose key (compute, in, out) <= tau
    flow   Σ_{a=0} x = 1;  Σ_{b=p} x = Σ_{a=p} x        device  Σ x[d, ·, ·] <= 1
    hops   E[d, p] + S[e, p] <= 1  whenever H[d, e, p] > tau

whose LP relaxation turned out nearly exact on the benchmark's distinct clusters (the LP bisection
bound was within 0.01 % of the optimum at 16 devices, where the min-period LP was 2.6 % off: the
min-period LP may spread a device over stages longer than the period; at a fixed tau they are
gone). So: bisect over the sorted candidates with LPs (one model; each tau only changes column and
row bounds, so the simplex warm-starts); the smallest LP-feasible candidate is a valid lower bound.
Then bisect between that bound and the incumbent with MILP feasibility solves (first feasible
plan ends a solve); a plan found at the lower bound is optimal exactly (its period is a candidate
>= the bound). Hop rows exist only for hops inside (lower bound, incumbent]; hops above the
incumbent are forbidden outright; hops below the bound can never bind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import highspy
import numpy as np

from edgesplit.planners.highs import new_highs
from edgesplit.planners.stage_graph import StageGraph, beam_plan

__all__ = ["BottleneckResult", "search_bottleneck"]

logger = logging.getLogger(__name__)

INF = np.inf
TAU_SLACK = 1e-9
BEAM_WIDTHS = (64, 512)
"""Beam widths tried in turn: the wider one costs ~0.1 s at 64 devices and 128 units."""


@dataclass(frozen=True, slots=True)
class BottleneckResult:
    stages: tuple[tuple[int, int, int], ...]  # best plan found (may be the incumbent)
    lower_bound: float  # every plan has bottleneck >= this
    proven: bool  # lower bound reached by a plan (optimal)
    lp_solves: int
    milp_solves: int
    timed_out: bool


class _Feasibility:
    """One HiGHS model for thresholds in [low, high]; tau changes bounds only."""

    def __init__(
        self,
        graph: StageGraph,
        compute: np.ndarray,
        hop_max: np.ndarray,
        low: float,
        high: float,
        *,
        with_hops: bool = True,
    ) -> None:
        num_units = graph.num_units
        key = compute.copy()
        key[:, 0, :] = np.maximum(key[:, 0, :], graph.in_max_s[:, None])
        key[:, :, num_units] = np.maximum(key[:, :, num_units], graph.out_max_s[:, None])
        keep = key <= high
        d_index, a_index, b_index = np.nonzero(keep)
        self.arc_d, self.arc_a, self.arc_b = d_index, a_index, b_index
        self.key = key[d_index, a_index, b_index]
        self.num_x = int(d_index.size)
        self.arc_of = {
            (int(d), int(a), int(b)): i
            for i, (d, a, b) in enumerate(zip(d_index, a_index, b_index, strict=True))
        }
        ends: dict[tuple[int, int], list[int]] = {}
        starts: dict[tuple[int, int], list[int]] = {}
        for i in range(self.num_x):
            ends.setdefault((int(d_index[i]), int(b_index[i])), []).append(i)
            starts.setdefault((int(d_index[i]), int(a_index[i])), []).append(i)

        lower_rows: list[float] = []
        upper_rows: list[float] = []
        row_starts: list[int] = []
        row_index: list[int] = []
        row_value: list[float] = []

        def add(cols: Sequence[int], values: Sequence[float], lo: float, hi: float) -> None:
            row_starts.append(len(row_index))
            row_index.extend(cols)
            row_value.extend(values)
            lower_rows.append(lo)
            upper_rows.append(hi)

        first = [i for i in range(self.num_x) if a_index[i] == 0]
        add(first, [1.0] * len(first), 1.0, 1.0)
        for p in range(1, num_units):
            ending = [i for d in range(graph.num_devices) for i in ends.get((d, p), [])]
            starting = [i for d in range(graph.num_devices) for i in starts.get((d, p), [])]
            if ending or starting:
                add(ending + starting, [1.0] * len(ending) + [-1.0] * len(starting), 0.0, 0.0)
        for d in range(graph.num_devices):
            cols = [i for i in range(self.num_x) if d_index[i] == d]
            if len(cols) > 1:
                add(cols, [1.0] * len(cols), -INF, 1.0)
        if graph.max_stages is not None:
            add(list(range(self.num_x)), [1.0] * self.num_x, -INF, float(graph.max_stages))
        # Hops: above `high` forbidden outright (aggregated over successors), inside
        # (low, high] one switchable pair row each (upper 1 = active, 2 = slack).
        hop_rows: list[int] = []
        hop_values: list[float] = []
        self.num_conflict_rows = 0
        for (d, p), cols in ends.items():
            if p == 0 or p == num_units or not with_hops:
                continue
            row = hop_max[d, :, p]
            bad = [i for e in np.nonzero(row > high)[0] for i in starts.get((int(e), p), [])]
            if bad:
                self.num_conflict_rows += 1
                add(cols + bad, [1.0] * (len(cols) + len(bad)), -INF, 1.0)
            for e in np.nonzero((row > low) & (row <= high))[0]:
                following = starts.get((int(e), p), [])
                if following:
                    hop_rows.append(len(row_starts))
                    hop_values.append(float(row[e]))
                    add(cols + following, [1.0] * (len(cols) + len(following)), -INF, 2.0)
        self.hop_rows = np.asarray(hop_rows, dtype=np.int32)
        self.hop_values = np.asarray(hop_values)

        highs = new_highs()
        highs.setOptionValue("presolve", "off")
        self.highs = highs
        zeros = np.zeros(self.num_x)
        highs.addCols(
            self.num_x,
            zeros,
            zeros,
            np.ones(self.num_x),
            0,
            np.zeros(0, dtype=np.int32),
            np.zeros(0, dtype=np.int32),
            np.zeros(0),
        )
        infinity = highs.getInfinity()
        highs.addRows(
            len(row_starts),
            np.clip(np.asarray(lower_rows), -infinity, infinity),
            np.clip(np.asarray(upper_rows), -infinity, infinity),
            len(row_index),
            np.asarray(row_starts, dtype=np.int32),
            np.asarray(row_index, dtype=np.int32),
            np.asarray(row_value),
        )
        self.columns = np.arange(self.num_x, dtype=np.int32)
        self.integer = np.full(self.num_x, highspy.HighsVarType.kInteger)
        self.continuous = np.full(self.num_x, highspy.HighsVarType.kContinuous)
        self.tau = INF

    def set_threshold(self, tau: float) -> None:
        tau = tau * (1 + TAU_SLACK)  # admit the run of near-equal values (see _candidates)
        self.tau = tau
        upper = (self.key <= tau).astype(np.float64)
        self.highs.changeColsBounds(self.num_x, self.columns, np.zeros(self.num_x), upper)
        if self.hop_rows.size:
            row_upper = np.where(self.hop_values > tau, 1.0, 2.0)
            self.highs.changeRowsBounds(  # type: ignore[attr-defined]  # missing from stubs
                self.hop_rows.size,
                self.hop_rows,
                np.full(self.hop_rows.size, -self.highs.getInfinity()),
                row_upper,
            )

    def lp_feasible(self, time_limit_s: float) -> bool | None:
        """LP relaxation feasible at the current threshold (None: undecided in time).

        Interior point decides these feasibility LPs 3-10x faster than simplex here. HiGHS's
        presolve sometimes ends an IPM run in a solve error (32 distinct devices, seed 3), so an
        undecided run is retried without presolve, then with the simplex.
        """
        started = time.perf_counter()
        highs = self.highs
        highs.changeColsIntegrality(self.num_x, self.columns, self.continuous)
        for solver, presolve in (("ipm", "on"), ("ipm", "off"), ("simplex", "on")):
            remaining = time_limit_s - (time.perf_counter() - started)
            if remaining <= 0:
                return None
            highs.setOptionValue("presolve", presolve)
            highs.setOptionValue("solver", solver)
            highs.setOptionValue("run_crossover", "off")
            highs.setOptionValue("time_limit", float(max(remaining, 0.01)))
            highs.run()
            status = highs.getModelStatus()
            if status == highspy.HighsModelStatus.kInfeasible:
                return False
            if status == highspy.HighsModelStatus.kOptimal:
                return True
            logger.debug("period search: %s ended %s; retrying", solver, status)
        return None

    def milp(
        self, time_limit_s: float, warm: Sequence[tuple[int, int, int]]
    ) -> tuple[bool | None, tuple[tuple[int, int, int], ...]]:
        """(feasible, stages) at the current threshold; feasible None when undecided in time."""
        highs = self.highs
        highs.changeColsIntegrality(self.num_x, self.columns, self.integer)
        highs.setOptionValue("solver", "choose")
        highs.setOptionValue("presolve", "on")
        highs.setOptionValue("time_limit", float(max(time_limit_s, 0.01)))
        if warm:
            values = np.zeros(self.num_x)
            ok = True
            for stage in warm:
                index = self.arc_of.get(stage)
                if index is None or self.key[index] > self.tau:
                    ok = False
                    break
                values[index] = 1.0
            if ok:
                highs.setSolution(self.num_x, self.columns, values)
        highs.run()
        status = highs.getModelStatus()
        if status == highspy.HighsModelStatus.kInfeasible:
            return False, ()
        info = highs.getInfo()
        if info.primal_solution_status == 2:
            values = np.asarray(highs.getSolution().col_value)
            chosen = np.nonzero(values > 0.5)[0]
            stages = sorted(
                ((int(self.arc_d[i]), int(self.arc_a[i]), int(self.arc_b[i])) for i in chosen),
                key=lambda s: s[1],
            )
            return True, tuple(stages)
        return None, ()


def search_bottleneck(
    graph: StageGraph,
    compute: np.ndarray,
    hop_max: np.ndarray,
    *,
    lower: float,
    upper: float,
    incumbent: Sequence[tuple[int, int, int]],
    evaluate: object,
    deadline: float,
    target_gap: float = 0.0,
    on_bound: object = None,
) -> BottleneckResult:
    """Tighten [lower, upper] on the best bottleneck (module docstring).

    `evaluate(stages) -> float | None` returns a plan's exact bottleneck (None if invalid);
    `on_bound(best, bound)` is told each improvement.
    """
    assert callable(evaluate)
    best_stages = tuple(incumbent)
    best_value = upper
    candidates = _candidates(graph, compute, hop_max, lower, upper)
    lp_solves = milp_solves = 0
    timed_out = False

    def tell(bound: float) -> None:
        if callable(on_bound):
            on_bound(best_value, bound)

    if not best_stages:
        # No incumbent: settle feasibility at the largest candidate first.
        model = _Feasibility(graph, compute, hop_max, upper, upper)
        model.set_threshold(upper)
        milp_solves += 1
        feasible, stages = model.milp(max(deadline - time.perf_counter(), 0.01), ())
        value = evaluate(stages) if feasible else None  # type: ignore[operator]
        if value is None:
            return BottleneckResult((), INF if feasible is False else lower, False, 0, 1, True)
        best_value, best_stages = float(value), stages
    bound = lower
    # Beam bisection (cheap, a heuristic): a near-optimal incumbent first.
    floor = lower
    for index, width in enumerate(BEAM_WIDTHS):
        # The narrow beam brackets the value to 0.1 %; the wide one refines just below it.
        precision = 1e-3 if index == 0 else 1e-5
        for _ in range(40):
            if time.perf_counter() >= deadline or best_value <= floor * (1 + precision):
                break
            tau = (floor + best_value) / 2
            beam = beam_plan(graph, compute, hop_max, tau, width)
            value = evaluate(beam) if beam else None  # type: ignore[operator]
            if value is not None and value < best_value:
                best_value, best_stages = float(value), tuple(beam or ())
            else:
                floor = tau
        floor = max(lower, min(floor, best_value) * (1 - 0.01))
    tell(bound)
    # Phase A: LP bisection without hop rows (a relaxation: hops only restrict plans), each
    # feasible threshold also tried by the beam; phase B: the same with pair rows for the hops
    # inside (bound, best] (skipped when there are none); phase C: MILP bisection on that model.
    band_model: _Feasibility | None = None
    for phase in ("A", "B", "C"):
        if timed_out or best_value <= bound * (1 + target_gap):
            break
        if phase == "A":
            model = _Feasibility(graph, compute, hop_max, best_value, best_value, with_hops=False)
        elif band_model is None:
            band_model = _Feasibility(graph, compute, hop_max, bound * (1 - 1e-12), best_value)
            model = band_model
            if phase == "B" and not (band_model.hop_rows.size or band_model.num_conflict_rows):
                continue  # no hop can bind: phase A's bound is phase B's
        else:
            model = band_model
        lo = int(np.searchsorted(candidates, bound, side="left"))
        hi = int(np.searchsorted(candidates, best_value, side="right")) - 1
        # Invariant: candidates[:lo] are infeasible; candidates[hi] is feasible.
        probes = 0
        refuted = False
        while lo < hi:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                timed_out = True
                break
            if best_value <= bound * (1 + target_gap):
                break
            low_value, high_value = float(candidates[lo]), float(candidates[hi])
            if phase != "C" and high_value <= low_value * (1 + 1e-9):
                break  # near-equal candidates: the LP cannot separate them any further
            if probes == 0 and target_gap < 1e-4:
                mid = hi - 1  # is the incumbent optimal? (one LP when it is)
            elif probes == 0 or (phase == "C" and probes == 1):
                # Just inside the gap asked: one infeasible answer settles it.
                aim = (
                    best_value / (1 + target_gap)
                    if phase != "C"
                    else low_value * (1 + target_gap / 2)
                )
                mid = int(np.searchsorted(candidates, aim, "right")) - 1
            elif phase != "C" and not refuted:
                # Gallop down from the incumbent (it is usually within a few 0.1 %) until a
                # threshold is refuted, rather than bisecting up from a weak bound.
                aim = best_value * (1 - 2e-4 * 3 ** (probes - 1))
                mid = int(np.searchsorted(candidates, aim, "right")) - 1
            elif high_value > low_value * (1 + 1e-3):
                # Bisect on value while the bracket is wide (candidates are dense at the top).
                mid = int(np.searchsorted(candidates, (low_value + high_value) / 2, "right")) - 1
            else:
                mid = (lo + hi) // 2
            mid = min(max(mid, lo), hi - 1)
            probes += 1
            tau = float(candidates[mid])
            model.set_threshold(tau)
            if phase == "C":
                milp_solves += 1
                feasible, stages = model.milp(remaining, best_stages)
            else:
                lp_solves += 1
                feasible = model.lp_feasible(remaining)
                stages = ()
                if feasible:
                    found = beam_plan(graph, compute, hop_max, tau, BEAM_WIDTHS[-1])
                    stages = tuple(found) if found else ()
            if feasible is None:
                timed_out = True
                break
            if feasible:
                value = evaluate(stages) if stages else None  # type: ignore[operator]
                if value is not None and value < best_value:
                    best_value, best_stages = float(value), stages
                hi = min(mid, int(np.searchsorted(candidates, best_value, side="right")) - 1)
            else:
                lo = mid + 1
                refuted = True
            bound = max(bound, float(candidates[lo]))
            tell(bound)
            logger.debug(
                "period search %s: tau %.6g -> %s; bound %.6g best %.6g",
                phase,
                tau,
                feasible,
                bound,
                best_value,
            )
    bound = min(bound, best_value)
    return BottleneckResult(
        stages=best_stages,
        lower_bound=bound,
        proven=best_value <= bound,
        lp_solves=lp_solves,
        milp_solves=milp_solves,
        timed_out=timed_out,
    )


def _candidates(
    graph: StageGraph, compute: np.ndarray, hop_max: np.ndarray, lower: float, upper: float
) -> np.ndarray:
    """Sorted distinct values in [lower, upper] that a plan's bottleneck can take."""
    num_units = graph.num_units
    parts = [compute[np.isfinite(compute)].ravel(), graph.in_max_s, graph.out_max_s]
    inner = hop_max[:, :, 1:num_units]
    parts.append(inner[np.isfinite(inner)].ravel())
    every = np.concatenate(parts)
    every = every[(every >= lower) & (every <= upper)]
    values: np.ndarray = np.unique(np.concatenate([every, [upper]]))
    # Values within 1e-9 of each other (sums in another order, equal links) cannot be told
    # apart by a 1e-7-tolerant LP: keep the smallest of each run; thresholds admit the run
    # (`_Feasibility.set_threshold` adds TAU_SLACK), so a bound is never above a plan's value.
    distinct = np.insert(values[1:] > values[:-1] * (1 + TAU_SLACK), 0, True)
    kept: np.ndarray = values[distinct]
    return kept
