"""The run report (`kind: edgesplit.run_report`, the file contract of issue 3) and its Gantt plot.

Scripts depend on: measured.period_s, measured.throughput_per_s, measured.latency_s.{p50,p95,p99},
predicted.period_s, requests.{submitted,completed,lost,duplicated} and failures[{device, at_s,
detected_after_s, recovered_after_s}]. Everything else is additive. `run_report` builds a batch
run's report from what its driver recorded. Imports core, runtime.config and matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgesplit.core.plan import Plan, StagePlacement
from edgesplit.core.schema import FrozenModel, VersionedFile
from edgesplit.runtime.config import RuntimeConfig

__all__ = [
    "Action",
    "Cause",
    "FailureRecord",
    "HealthState",
    "LatencyStats",
    "Measured",
    "PredictedFigures",
    "RequestCounts",
    "RunHealth",
    "RunReport",
    "StageStats",
    "TimelineEntry",
    "plot_timeline",
    "run_report",
    "steady_period_s",
]


Cause = Literal["actor_died", "hang", "stall", "unreachable", "failing"]
Action = Literal["standby", "replan", "restart", "none"]


class LatencyStats(FrozenModel):
    p50: float
    p95: float
    p99: float
    mean: float
    max: float


class Measured(FrozenModel):
    """Measured figures in device seconds (wall seconds / time_scale)."""

    period_s: float
    throughput_per_s: float  # samples per second = batch_size / period_s, as the cost model's
    requests_per_s: float  # completed micro-batches / makespan
    latency_s: LatencyStats
    makespan_s: float
    warmup_requests: int
    wall_period_s: float  # period before dividing by time_scale


class PredictedFigures(FrozenModel):
    period_s: float
    throughput_per_s: float
    latency_s: float


class RequestCounts(FrozenModel):
    submitted: int
    completed: int
    lost: int
    duplicated: int  # results handed to the caller more than once (must be 0)
    replayed: int  # micro-batches re-sent after a failure
    duplicates_suppressed: int  # results that reached the driver twice and were dropped
    errored: int = 0  # answered with an executor error after the retry (not lost)


class StageStats(FrozenModel):
    """Per-stage means over every micro-batch this stage processed (device seconds)."""

    index: int
    device: str
    start: int
    end: int
    epoch: int
    items: int
    compute_s: float
    queue_s: float  # waiting in the stage's inbox before compute
    transfer_s: float  # from leaving compute to the downstream receiving it (shaped link)
    busy_fraction: float


class FailureRecord(FrozenModel):
    """One failure, the same in every workload's report (wall seconds).

    at_s: since the run started; the injection time, or the last time the device was heard from
    when the failure came from outside. detected_after_s and recovered_after_s count from at_s;
    recovery is the first result delivered after detection. fault: the injected kind (kill,
    stop, crash, cut, custom) or None for a failure nobody injected. replayed: micro-batches
    (batch) or tokens (decode) computed again.
    """

    device: str
    at_s: float
    detected_after_s: float
    recovered_after_s: float | None
    cause: Cause
    action: Action
    fault: str | None = None
    replayed: int = 0
    replayed_from_stage_output: int = 0  # of those, resumed at a stage boundary (not from input)
    new_stages: tuple[StagePlacement, ...] = ()


class RunReport(VersionedFile):
    KIND: ClassVar[str] = "edgesplit.run_report"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: Literal["edgesplit.run_report"] = "edgesplit.run_report"
    schema_version: Literal[1] = 1
    model: str
    plan_stages: tuple[StagePlacement, ...]
    batch_size: int
    compute: Literal["real", "emulated"]
    transport: str
    time_scale: float
    max_in_flight: int
    measured: Measured
    predicted: PredictedFigures
    requests: RequestCounts
    stages: tuple[StageStats, ...]
    failures: tuple[FailureRecord, ...]
    timeline_plot: str | None = None
    ray_nodes: int = 1
    notes: str = ""


HealthState = Literal["starting", "running", "recovering", "failed", "stopped"]


@dataclass(frozen=True)
class RunHealth:
    """What the batch driver is doing (for a serving front end's /health), sent on each change.

    state: starting, running, recovering (a stage is being replaced: `detail` says which and
    why), failed (no way to go on) or stopped. `failures`: failures detected so far.
    """

    state: HealthState
    stages: tuple[StagePlacement, ...] = ()
    detail: str = ""
    failures: int = 0

    @property
    def ok(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One bar of the Gantt chart (wall seconds since the run started)."""

    stage_index: int
    device: str
    epoch: int
    request_id: int
    kind: Literal["compute", "transfer", "queue"]
    start_s: float
    end_s: float


def steady_period_s(completion_times_s: Sequence[float], warmup: int) -> float:
    """Steady-state interval between completions: least-squares slope of completion time vs
    index after the first `warmup` (pipeline fill), robust to one late or early answer."""
    times = np.sort(np.asarray(completion_times_s, dtype=np.float64))
    if len(times) < 2:
        return float("nan")
    times = times[min(warmup, len(times) - 2) :]
    index = np.arange(len(times), dtype=np.float64)
    slope = np.polyfit(index, times, 1)[0]
    return float(slope)


def latency_stats(latencies_s: Sequence[float]) -> LatencyStats:
    if not latencies_s:
        nan = float("nan")
        return LatencyStats(p50=nan, p95=nan, p99=nan, mean=nan, max=nan)
    values = np.asarray(latencies_s, dtype=np.float64)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return LatencyStats(
        p50=float(p50),
        p95=float(p95),
        p99=float(p99),
        mean=float(values.mean()),
        max=float(values.max()),
    )


def plot_timeline(
    entries: Sequence[TimelineEntry],
    path: Path,
    *,
    title: str,
    failures: Sequence[FailureRecord] = (),
    max_bars: int = 4000,
) -> Path:
    """Gantt of micro-batches per stage: compute bars coloured by request, transfers hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted({(e.device, e.stage_index) for e in entries}, key=lambda r: (r[1], r[0]))
    row_of = {row: i for i, row in enumerate(rows)}
    fig, ax = plt.subplots(figsize=(12, 0.5 * max(len(rows), 2) + 1.8))
    cmap = plt.get_cmap("tab20")
    for entry in list(entries)[:max_bars]:
        y = row_of[(entry.device, entry.stage_index)]
        width = max(entry.end_s - entry.start_s, 1e-6)
        if entry.kind == "compute":
            ax.barh(
                y,
                width,
                left=entry.start_s,
                height=0.6,
                color=cmap(entry.request_id % 20),
                edgecolor="black",
                linewidth=0.3,
            )
        elif entry.kind == "transfer":
            ax.barh(y + 0.35, width, left=entry.start_s, height=0.12, color="grey", alpha=0.7)
    for failure in failures:
        ax.axvline(failure.at_s, color="red", linestyle="--", linewidth=1)
        ax.text(failure.at_s, len(rows) - 0.4, f" {failure.device} fails", color="red", fontsize=8)
        ax.axvline(failure.at_s + failure.detected_after_s, color="orange", linewidth=1)
        if failure.recovered_after_s is not None:
            ax.axvline(failure.at_s + failure.recovered_after_s, color="green", linewidth=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{device} (stage {index})" for device, index in rows])
    ax.invert_yaxis()
    ax.set_xlabel("wall time since first request (s); colour = micro-batch, grey = link transfer")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_report(
    plan: Plan,
    config: RuntimeConfig,
    *,
    t0_s: float,
    done_s: Sequence[float],
    latency_s: Sequence[float],
    counts: RequestCounts,
    failures: Sequence[FailureRecord],
    timelines: list[dict[str, Any]],
    timeline_path: Path | str | None,
    notes: str,
    ray_nodes: int,
) -> RunReport:
    """The batch run's report: steady period (before the first failure, when there was one),
    latency, per-stage figures and the Gantt plot from the stages' timelines."""
    scale = config.time_scale
    done = sorted(done_s)
    makespan_s = (max(done) - t0_s) if done else 0.0
    warmup = min(len(plan.stages) + 1, max(0, len(done) // 4))
    series = done
    if failures:
        first_fail = t0_s + min(r.at_s for r in failures)
        before = [t for t in done if t <= first_fail]
        series = before if len(before) >= warmup + 3 else done
    wall_period_s = steady_period_s(series, warmup)
    period_s = wall_period_s / scale
    stats, entries = _stage_stats(timelines, t0_s, makespan_s, scale)
    plot = None
    if timeline_path is not None and entries:
        plot = str(
            plot_timeline(
                entries,
                Path(timeline_path),
                failures=failures,
                title=f"{plan.model}: {len(plan.stages)} stages, compute="
                f"{config.compute}, time_scale={scale:g}",
            )
        )
    return RunReport(
        model=plan.model,
        plan_stages=plan.stages,
        batch_size=plan.batch_size,
        compute=config.compute,
        transport="tcp-direct",
        time_scale=scale,
        max_in_flight=config.max_in_flight,
        measured=Measured(
            period_s=period_s,
            throughput_per_s=plan.batch_size / period_s if period_s > 0 else 0.0,
            requests_per_s=len(done) / (makespan_s / scale) if makespan_s > 0 else 0.0,
            latency_s=latency_stats([v / scale for v in latency_s]),
            makespan_s=makespan_s / scale,
            warmup_requests=warmup,
            wall_period_s=wall_period_s,
        ),
        predicted=PredictedFigures(
            period_s=plan.predicted.period_s,
            throughput_per_s=plan.predicted.throughput_per_s,
            latency_s=plan.predicted.latency_s,
        ),
        requests=counts,
        stages=tuple(stats),
        failures=tuple(failures),
        timeline_plot=plot,
        ray_nodes=ray_nodes,
        notes=notes,
    )


def _stage_stats(
    timelines: list[dict[str, Any]], t0_s: float, makespan_s: float, scale: float
) -> tuple[list[StageStats], list[TimelineEntry]]:
    stats = []
    entries: list[TimelineEntry] = []
    for timeline in sorted(timelines, key=lambda t: (t["epoch"], t["index"])):
        rows = np.asarray(timeline["entries"], dtype=np.float64).reshape(-1, 5)
        device, index, epoch = timeline["device"], int(timeline["index"]), int(timeline["epoch"])
        if len(rows) == 0:
            continue
        _rid, received, c0, c1, sent = rows.T
        stats.append(
            StageStats(
                index=index,
                device=device,
                start=int(timeline["start"]),
                end=int(timeline["end"]),
                epoch=epoch,
                items=len(rows),
                compute_s=float(np.mean(c1 - c0)) / scale,
                queue_s=float(np.mean(c0 - received)) / scale,
                transfer_s=float(np.mean(sent - c1)) / scale,
                busy_fraction=float(np.sum(c1 - c0) / max(makespan_s, 1e-9)),
            )
        )
        for row in rows:
            entries.append(
                TimelineEntry(
                    index, device, epoch, int(row[0]), "compute", row[2] - t0_s, row[3] - t0_s
                )
            )
            entries.append(
                TimelineEntry(
                    index, device, epoch, int(row[0]), "transfer", row[3] - t0_s, row[4] - t0_s
                )
            )
    return stats, entries
