"""Plots people would rather look at than read: pipeline Gantt charts and stage utilization.

matplotlib with the Agg backend (no display needed). Imports core and sim result types only.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from edgesplit.core.plan import Plan
from edgesplit.sim.pipeline import SimResult

__all__ = ["plot_pipeline"]


def plot_pipeline(plan: Plan, result: SimResult, path: Path, *, num_periods: float = 6.0) -> Path:
    """Two panels: a Gantt chart of a few steady-state periods, and busy fraction per resource."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [r.name for r in result.resources]
    fig, (gantt, util) = plt.subplots(
        1, 2, figsize=(13, 0.45 * len(names) + 2.5), gridspec_kw={"width_ratios": [3, 1]}
    )
    # Steady-state window: start from the middle of the run.
    mid = result.makespan_s / 2
    window = (mid, mid + num_periods * result.period_s)
    cmap = plt.get_cmap("tab10")
    for entry in result.timeline:
        if entry.end_s < window[0] or entry.start_s > window[1]:
            continue
        row = names.index(entry.resource)
        gantt.barh(
            row,
            entry.end_s - entry.start_s,
            left=entry.start_s,
            color=cmap(entry.microbatch % 10),
            edgecolor="black",
            linewidth=0.3,
        )
    gantt.set_xlim(*window)
    gantt.set_yticks(range(len(names)), names)
    gantt.invert_yaxis()
    gantt.set_xlabel("time (s); colour = micro-batch")
    gantt.set_title(
        f"{plan.model}: {len(plan.stages)} stages, period {result.period_s:.3f} s "
        f"(predicted {result.predicted_period_s:.3f} s)"
    )
    busy = [r.busy_fraction for r in result.resources]
    colors = ["tab:blue" if r.kind == "compute" else "tab:orange" for r in result.resources]
    util.barh(range(len(names)), busy, color=colors)
    util.set_yticks(range(len(names)), [])
    util.invert_yaxis()
    util.set_xlim(0, 1)
    util.set_xlabel("busy fraction (blue compute, orange link)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
