"""Baseline partitioners users know, for comparison with `optimal`.

- `even`: equal numbers of units per device, every device used in cluster order.
- `memory`: units in proportion to device memory, as exo's ring partitioning does.
- `pipedream`: PipeDream's partitioner (Narayanan et al., SOSP 2019, §3.1), which assumes
  homogeneous workers: it balances stage times measured on one reference kind (the source's) and
  then places stages on devices in cluster order, blind to their speed.
Imports core only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from edgesplit.core.cost import CostModel
from edgesplit.core.plan import Objective, StagePlacement
from edgesplit.planners.base import PlannerResult, PlanOptions, register_planner

__all__ = ["cuts_to_stages", "min_max_cuts", "speed_proportional_stages"]


def cuts_to_stages(devices: list[str], cuts: list[int]) -> tuple[StagePlacement, ...]:
    """Stages from boundaries 0 = cuts[0] < ... < cuts[-1] = L; empty stages are dropped."""
    stages = []
    used = 0
    for start, end in itertools.pairwise(cuts):
        if end > start:
            stages.append(StagePlacement(device=devices[used], start=start, end=end))
            used += 1
    return tuple(stages)


def min_max_cuts(costs: Sequence[float], parts: int) -> list[int]:
    """Boundaries 0 = c0 < c1 < ... < c_parts = len(costs) of `parts` contiguous non-empty groups
    minimizing the largest group's summed cost (the linear-partition DP, exact; ties: the first
    cut found). Raises ValueError when `parts` is not in [1, len(costs)]."""
    n = len(costs)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot cut {n} units into {parts} non-empty groups")
    prefix = list(itertools.accumulate(costs, initial=0.0))
    # best[j][e]: the smallest largest group splitting [0, e) into j groups; cut[j][e]: the
    # start of the last of them.
    best = [[float("inf")] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for j in range(1, parts + 1):
        for e in range(j, n + 1):
            for b in range(j - 1, e):
                worst = max(best[j - 1][b], prefix[e] - prefix[b])
                if worst < best[j][e]:
                    best[j][e], cut[j][e] = worst, b
    ends = [n]
    for j in range(parts, 1, -1):
        ends.append(cut[j][ends[-1]])
    return [0, *reversed(ends)]


def _proportional_cuts(weights: list[float], work_prefix: np.ndarray) -> list[int]:
    """Cut points so that stage i gets a share of the work proportional to weights[i]."""
    num_units = work_prefix.size - 1
    total = float(work_prefix[-1])
    shares = np.cumsum(weights) / np.sum(weights)
    cuts = [0]
    for i, share in enumerate(shares[:-1]):
        target = share * total
        cut = int(np.clip(np.searchsorted(work_prefix, target), cuts[-1] + 1, num_units))
        remaining_devices = len(weights) - i - 1
        cut = min(cut, num_units - remaining_devices) if remaining_devices < num_units else cut
        cuts.append(max(cut, cuts[-1]))
    cuts.append(num_units)
    return cuts


def speed_proportional_stages(cost: CostModel) -> tuple[StagePlacement, ...]:
    """Every device, fastest first, with work proportional to its speed (used as a DP bound)."""
    devices = sorted(cost.cluster.devices, key=lambda d: float(cost.time_prefix(d.kind)[-1]))
    devices = devices[: cost.num_units]
    speeds = [1.0 / float(cost.time_prefix(d.kind)[-1]) for d in devices]
    reference = cost.time_prefix(devices[0].kind)
    return cuts_to_stages([d.name for d in devices], _proportional_cuts(speeds, reference))


def _ordered_devices(cost: CostModel) -> list[str]:
    return list(cost.cluster.device_names)[: cost.num_units]


@register_planner("even")
def plan_even(cost: CostModel, objective: Objective, options: PlanOptions) -> PlannerResult:
    devices = _ordered_devices(cost)
    units = np.arange(cost.num_units + 1, dtype=np.float64)
    cuts = _proportional_cuts([1.0] * len(devices), units)
    return PlannerResult(stages=cuts_to_stages(devices, cuts), optimal=False)


@register_planner("memory")
def plan_memory(cost: CostModel, objective: Objective, options: PlanOptions) -> PlannerResult:
    devices = _ordered_devices(cost)
    memory = [cost.cluster.device(d).memory_bytes for d in devices]
    cuts = _proportional_cuts(memory, cost.param_prefix)
    return PlannerResult(stages=cuts_to_stages(devices, cuts), optimal=False)


@register_planner("pipedream")
def plan_pipedream(cost: CostModel, objective: Objective, options: PlanOptions) -> PlannerResult:
    """Min-max contiguous partition into k stages on the reference kind, for the best k."""
    devices = _ordered_devices(cost)
    prefix = cost.time_prefix(cost.cluster.device(cost.cluster.source).kind)
    num_units = cost.num_units
    k_max = len(devices)
    # best[k][b]: min over partitions of [0, b) into k stages of the max stage time.
    best = np.full((k_max + 1, num_units + 1), np.inf)
    choice = np.zeros((k_max + 1, num_units + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for k in range(1, k_max + 1):
        for b in range(1, num_units + 1):
            a = np.arange(b)
            values = np.maximum(best[k - 1, :b], prefix[b] - prefix[a])
            choice[k, b] = int(np.argmin(values))
            best[k, b] = values[choice[k, b]]
    k = int(np.argmin(best[1:, num_units])) + 1  # homogeneous view: more stages never hurt
    cuts = [num_units]
    for level in range(k, 0, -1):
        cuts.append(int(choice[level, cuts[-1]]))
    return PlannerResult(stages=cuts_to_stages(devices, cuts[::-1]), optimal=False)
