"""Discrete-event simulation of a pipeline Plan under a stream of micro-batches.

Every stage's compute and every link (source input, hops, output) is a FIFO single-server
resource; compute and communication overlap (separate resources), as in EdgePipe. Admission keeps
at most `max_in_flight` micro-batches inside the pipeline. Service times come from the §4 cost
model, optionally with seeded lognormal jitter. Imports core only (no torch, no ray).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field

from edgesplit.core.cluster import Cluster
from edgesplit.core.cost import CostModel
from edgesplit.core.plan import Plan
from edgesplit.core.profile import ModelProfile
from edgesplit.core.schema import FrozenModel

__all__ = ["ResourceStats", "SimConfig", "SimResult", "TimelineEntry", "simulate"]


class SimConfig(FrozenModel):
    num_microbatches: Annotated[int, Field(ge=2)] = 200
    max_in_flight: Annotated[int, Field(ge=1)] | None = None  # default: 2 x resources
    jitter_cv: Annotated[float, Field(ge=0)] = 0.0  # coefficient of variation of service times
    seed: int = 0
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.25
    record_timeline: bool = True


class ResourceStats(FrozenModel):
    name: str
    kind: str  # "compute" | "link"
    service_s: float
    busy_fraction: float


class TimelineEntry(FrozenModel):
    resource: str
    microbatch: int
    start_s: float
    end_s: float


class LatencyStats(FrozenModel):
    mean: float
    p50: float
    p95: float
    p99: float


class SimResult(FrozenModel):
    throughput_per_s: float
    period_s: float
    predicted_period_s: float
    period_ratio: float  # measured / predicted
    latency_s: LatencyStats
    makespan_s: float
    resources: tuple[ResourceStats, ...]
    timeline: tuple[TimelineEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class _Resource:
    name: str
    kind: str
    service_s: float


def _resources(plan: Plan, cost: CostModel) -> list[_Resource]:
    predicted = cost.predict(plan.stages)
    resources = []
    if predicted.input_transfer_s > 0:
        resources.append(_Resource("in", "link", predicted.input_transfer_s))
    for index, stage in enumerate(predicted.stages):
        resources.append(_Resource(f"stage{index}@{stage.device}", "compute", stage.compute_s))
        if index + 1 < len(predicted.stages) and stage.transfer_s > 0:
            resources.append(_Resource(f"hop{index}->{index + 1}", "link", stage.transfer_s))
    if predicted.output_transfer_s > 0:
        resources.append(_Resource("out", "link", predicted.output_transfer_s))
    return resources


def simulate(
    plan: Plan, profile: ModelProfile, cluster: Cluster, config: SimConfig | None = None
) -> SimResult:
    """Play `config.num_microbatches` micro-batches through the plan; report steady state."""
    config = config or SimConfig()
    plan.validate_against(profile, cluster)
    cost = CostModel(profile, cluster)
    resources = _resources(plan, cost)
    rng = np.random.default_rng(config.seed)
    num = config.num_microbatches
    max_in_flight = config.max_in_flight or 2 * len(resources)

    def service(resource: _Resource) -> float:
        if config.jitter_cv == 0 or resource.service_s == 0:
            return resource.service_s
        sigma = np.sqrt(np.log1p(config.jitter_cv**2))
        return float(resource.service_s * rng.lognormal(-(sigma**2) / 2, sigma))

    # Event = (time, sequence, microbatch, resource index); "arrives at resource" semantics.
    events: list[tuple[float, int, int, int]] = []
    sequence = 0
    queues: list[deque[int]] = [deque() for _ in resources]
    busy_until = [0.0] * len(resources)
    busy_total = [0.0] * len(resources)
    free = [True] * len(resources)
    admitted_at = np.zeros(num)
    done_at = np.zeros(num)
    timeline: list[TimelineEntry] = []
    next_to_admit = 0

    def push(time_s: float, microbatch: int, resource_index: int) -> None:
        nonlocal sequence
        heapq.heappush(events, (time_s, sequence, microbatch, resource_index))
        sequence += 1

    def start(time_s: float, microbatch: int, resource_index: int) -> None:
        duration = service(resources[resource_index])
        free[resource_index] = False
        busy_until[resource_index] = time_s + duration
        busy_total[resource_index] += duration
        if config.record_timeline:
            timeline.append(
                TimelineEntry(
                    resource=resources[resource_index].name,
                    microbatch=microbatch,
                    start_s=time_s,
                    end_s=time_s + duration,
                )
            )
        push(time_s + duration, microbatch, -(resource_index + 1))  # negative = finish event

    def admit(time_s: float) -> None:
        nonlocal next_to_admit
        admitted_at[next_to_admit] = time_s
        push(time_s, next_to_admit, 0)
        next_to_admit += 1

    for _ in range(min(max_in_flight, num)):
        admit(0.0)
    while events:
        time_s, _, microbatch, code = heapq.heappop(events)
        if code >= 0:  # arrival at resource `code`
            if free[code]:
                start(time_s, microbatch, code)
            else:
                queues[code].append(microbatch)
            continue
        index = -code - 1  # finish at resource `index`
        free[index] = True
        if queues[index]:
            start(time_s, queues[index].popleft(), index)
        if index + 1 < len(resources):
            push(time_s, microbatch, index + 1)
        else:
            done_at[microbatch] = time_s
            if next_to_admit < num:
                admit(time_s)

    first = int(num * config.warmup_fraction)
    window = np.sort(done_at)[first:]
    period_s = float((window[-1] - window[0]) / (len(window) - 1)) if len(window) > 1 else 0.0
    predicted_period_s = plan.predicted.period_s
    latencies = done_at - admitted_at
    makespan = float(done_at.max())
    return SimResult(
        throughput_per_s=profile.batch_size / period_s if period_s > 0 else float("inf"),
        period_s=period_s,
        predicted_period_s=predicted_period_s,
        period_ratio=period_s / predicted_period_s if predicted_period_s > 0 else 1.0,
        latency_s=LatencyStats(
            mean=float(latencies.mean()),
            p50=float(np.percentile(latencies, 50)),
            p95=float(np.percentile(latencies, 95)),
            p99=float(np.percentile(latencies, 99)),
        ),
        makespan_s=makespan,
        resources=tuple(
            ResourceStats(
                name=r.name,
                kind=r.kind,
                service_s=r.service_s,
                busy_fraction=busy_total[i] / makespan if makespan > 0 else 0.0,
            )
            for i, r in enumerate(resources)
        ),
        timeline=tuple(timeline),
    )
