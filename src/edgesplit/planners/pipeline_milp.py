"""The §4 pipeline cost model as a `StageGraph`, solved by the HiGHS MILP (planners.milp).

Owns `pipeline_graph` (CostModel -> StageGraph, bitwise the same numbers) and `solve_pipeline`
(warm-started from heuristic plans; optimal or a certified gap). Used by the `optimal` planner
when devices are too distinct for the class-count DP, and registered as `milp` on its own.
Imports core and planners only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgesplit.core.cost import CostModel
from edgesplit.core.plan import Objective, StagePlacement
from edgesplit.planners.milp import OPTIMAL_GAP, GraphSolution, ProgressFn, solve_stage_graph
from edgesplit.planners.stage_graph import Goal, StageGraph

__all__ = ["goal_of", "pipeline_graph", "solve_pipeline", "to_indices", "to_placements"]


def goal_of(objective: Objective) -> Goal:
    """Period = bottleneck only; latency = total only (docs/architecture.md §4)."""
    return Goal(1.0, 0.0) if objective == "throughput" else Goal(0.0, 1.0)


def pipeline_graph(cost: CostModel) -> StageGraph:
    """Every device of the cluster as its own node; values as CostModel computes them."""
    cluster = cost.cluster
    names = cluster.device_names
    num_units = cost.num_units
    source = cluster.source
    outputs = cost.output_bytes
    params = cost.param_prefix
    in_bytes = np.concatenate([[cost.profile.input_bytes], outputs[:-1]])  # (L,) into unit a
    starts = np.arange(num_units + 1)
    a = np.minimum(starts[:, None], num_units - 1)
    b = np.maximum(starts[None, :], 1)
    # CostModel.memory_bytes: params + 2.0 * (in_bytes(a) + output_bytes[b - 1]).
    memory = (params[b] - params[a]) + 2.0 * (in_bytes[a] + outputs[b - 1])
    size = len(names)
    latency = np.zeros((size, size))
    bandwidth = np.ones((size, size))
    for i, d in enumerate(names):
        for j, e in enumerate(names):
            if i != j:
                bandwidth[i, j], latency[i, j] = cluster.link(d, e)
    in_s = np.array([cost.transfer_s(cost.profile.input_bytes, source, d) for d in names])
    out_s = np.array([cost.transfer_s(float(outputs[-1]), d, source) for d in names])
    return StageGraph(
        devices=tuple(names),
        time_prefix=np.stack([cost.time_prefix(cluster.device(d).kind) for d in names]),
        stage_memory=memory,
        capacity=np.array([cluster.device(d).memory_bytes for d in names]),
        latency_s=latency,
        bandwidth=bandwidth,
        cut_bytes=np.concatenate([[0.0], outputs]),
        in_s=in_s,
        out_s=out_s,
        in_max_s=in_s,
        out_max_s=out_s,
        stage_overhead_s=np.array([cluster.device(d).stage_overhead_s for d in names]),
    )


def to_indices(graph: StageGraph, stages: Sequence[StagePlacement]) -> list[tuple[int, int, int]]:
    index = {name: i for i, name in enumerate(graph.devices)}
    return [(index[s.device], s.start, s.end) for s in stages]


def to_placements(
    graph: StageGraph, stages: Sequence[tuple[int, int, int]]
) -> tuple[StagePlacement, ...]:
    return tuple(StagePlacement(device=graph.devices[d], start=a, end=b) for d, a, b in stages)


def solve_pipeline(
    cost: CostModel,
    objective: Objective,
    *,
    incumbents: Sequence[Sequence[StagePlacement]] = (),
    time_limit_s: float | None = None,
    target_gap: float = OPTIMAL_GAP,
    progress: ProgressFn | None = None,
) -> tuple[GraphSolution, StageGraph]:
    """The MILP's best plan for the §4 objective, with its certified lower bound."""
    graph = pipeline_graph(cost)
    solution = solve_stage_graph(
        graph,
        goal_of(objective),
        incumbents=[to_indices(graph, s) for s in incumbents],
        time_limit_s=time_limit_s,
        target_gap=target_gap,
        progress=progress,
    )
    return solution, graph
