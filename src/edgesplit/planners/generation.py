"""Pipeline planning for generative decoding (GPT-2, Llama): tokens/s or time per token.

Owns `GenerationProfile` (decode and prefill profiles + KV bytes per token per unit),
`GenerationPrediction`, `GenerationPlan` and `plan_generation`. Imports core only (no torch).

Decode cost model (one token of one sequence, stages d_1..d_k, driver on the source s):
  in  = transfer(token_bytes, s -> d_1);  hop_i = transfer(hidden_bytes, d_i -> d_{i+1});
  out = transfer(token_bytes, d_k -> s);  c_i = Σ decode time of the units of stage i
  time per token  L = in + Σ c_i + Σ hop_i + out           (a sequence's token goes round the ring)
  bottleneck      P = max_i max(c_i, ser_i)                 ser = bytes / bandwidth, no latency:
                      frames in flight overlap their latency (runtime.emulation.LinkShaper)
  tokens/s with S concurrent sequences = min(S / L, 1 / P)  (closed loop: S tokens circulate)
A single sequence never overlaps its own steps, so every extra device adds its hops to L and
cannot shorten Σ c_i: splitting only pays with concurrency (S > 1) or when the model does not fit.
Memory per stage = params + KV cache (kv_bytes_per_token × max_context × S) + 2 × hidden.

[Note: the batch dimension] The runtime batches decode (runtime/generation.py, [Note: continuous
batching]): S sequences ride in m micro-batches (default m = k, one per stage) of
b = ceil(S / m) rows, each stage running a micro-batch's rows in one forward pass. When the
profile holds `decode_batch` (unit step time with b rows / with 1 row, measured by `generate
profile`), a stage's compute for b rows is c_i(b) = Σ_u t_u × r_u(b) (r linear between measured
batch sizes, extended by the last segment's slope), hops carry b rows, and
  L_b = in(b) + Σ c_i(b) + Σ hop_i(b);  P_b = max_i max(c_i(b), ser_i(b))
  tokens/s = min(S / L_b, b / P_b);  a sequence's time per token at S = max(L_b, m' × P_b)
(m' = ceil(S / b) micro-batches in use; the closed-loop bounds hold for any m and k). Without
`decode_batch` (profiles made before it) the planner assumes no batching gain and keeps the
one-row-per-frame model above (S frames interleaved); `GenerationPrediction.batch_scaling`
says which model was used. The planner chooses the micro-batch count too: for each distinct
b = ceil(S / m) one exact solve of max(P_b / b, L_b / S) = 1 / tokens_per_s (Goal(1/b, 1/S));
the best wins, the bound is the smallest of the solves' bounds, and the plan records m
(`micro_batches`; `GenerationConfig.micro_batches` runs it).

Search: the same stage graph and HiGHS machinery as the pipeline planner (planners.stage_graph,
planners.milp): stages are (device, unit range) with decode compute and KV memory, hops carry
one token's hidden state (latency + bytes / bandwidth in L, bytes / bandwidth in P), the last
stage returns the token id to the source. time_per_token minimises L (Goal(0, 1)); tokens_per_s
minimises max(P, L / S) = 1 / tokens_per_s (Goal(1, 1/S)). Every plan is optimal or carries a
certified bound (`upper_bound_tokens_per_s`, `plan.predicted.gap`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from edgesplit.core.cluster import Cluster
from edgesplit.core.plan import Plan, PlannerInfo, Predicted, StagePlacement, StagePrediction
from edgesplit.core.profile import ModelProfile, batch_ratio
from edgesplit.core.schema import FrozenModel, VersionedFile
from edgesplit.errors import ConfigError, PlanInfeasibleError
from edgesplit.planners.milp import OPTIMAL_GAP, solve_stage_graph
from edgesplit.planners.progress import ProgressFn
from edgesplit.planners.stage_graph import Goal, StageGraph

__all__ = [
    "DecodeBatchScaling",
    "GenerationObjective",
    "GenerationPlan",
    "GenerationPrediction",
    "GenerationProfile",
    "GenerationStagePrediction",
    "plan_generation",
    "predict_generation",
]

GenerationObjective = Literal["tokens_per_s", "time_per_token"]
NonNegative = Annotated[float, Field(ge=0)]


class DecodeBatchScaling(FrozenModel):
    """Each unit's decode step time with `batch` sequences in one forward pass, divided by its
    time with one (measured on one device kind; applied to every kind)."""

    batch: Annotated[int, Field(ge=1)]
    unit_scale: tuple[NonNegative, ...]


class GenerationProfile(VersionedFile):
    """Decode (one token at `cache_length`) and prefill (`prompt_length` tokens) unit profiles."""

    KIND: ClassVar[str] = "edgesplit.generation_profile"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: Literal["edgesplit.generation_profile"] = "edgesplit.generation_profile"
    schema_version: Literal[1] = 1
    model: str
    decode: ModelProfile  # output_bytes = hidden state of one token crossing a cut
    prefill: ModelProfile  # output_bytes = hidden state of the whole prompt
    prompt_length: Annotated[int, Field(ge=1)]
    cache_length: Annotated[int, Field(ge=0)]
    kv_bytes_per_token: tuple[NonNegative, ...]  # per unit, per sequence (attention units)
    token_bytes: NonNegative = 8.0  # one token id on the wire (int64)
    # Decode step time vs batch size ([Note: the batch dimension]); () = not measured.
    decode_batch: tuple[DecodeBatchScaling, ...] = ()

    def check(self) -> None:
        n = self.decode.num_units
        if len(self.kv_bytes_per_token) != n:
            raise ConfigError(
                f"generation profile of '{self.model}': {len(self.kv_bytes_per_token)} KV entries "
                f"for {n} units"
            )
        if self.prefill.num_units != n:
            raise ConfigError("prefill and decode profiles must have the same units")
        batches = [p.batch for p in self.decode_batch]
        if len(set(batches)) != len(batches) or any(
            len(p.unit_scale) != n for p in self.decode_batch
        ):
            raise ConfigError(
                f"generation profile of '{self.model}': decode_batch needs distinct batch sizes "
                f"with {n} unit scales each"
            )

    def stage_times(
        self, device_kind: str, start: int, end: int
    ) -> tuple[float, float, tuple[tuple[int, float], ...]]:
        """What units [start, end) cost on `device_kind`, for an emulated stage: a decode step
        of one row (s), a prompt token of a prefill (s), and (batch, step time / one row's) at
        each measured batch size (each unit's ratio weighted by its one-row time; () without
        batch data) — the batch model `predict_generation` plans with."""
        decode = self.decode.times_for(device_kind)[start:end]
        prefill = self.prefill.times_for(device_kind)[start:end]
        one_row = float(sum(decode))
        points: list[tuple[int, float]] = []
        for point in sorted(self.decode_batch, key=lambda p: p.batch):
            scaled = sum(t * r for t, r in zip(decode, point.unit_scale[start:end], strict=True))
            points.append((point.batch, scaled / one_row if one_row > 0 else float(point.batch)))
        return one_row, float(sum(prefill)) / self.prompt_length, tuple(points)

    def unit_scale(self, batch: int) -> list[float] | None:
        """r_u(batch) per unit (1 for one row); None without measured batch data."""
        if not self.decode_batch:
            return None
        return [
            batch_ratio([(p.batch, p.unit_scale[unit]) for p in self.decode_batch], batch)
            for unit in range(self.decode.num_units)
        ]


class GenerationStagePrediction(FrozenModel):
    device: str
    start: int
    end: int
    decode_compute_s: float
    prefill_compute_s: float
    hop_s: float  # decode hop out of this stage (to the next stage, or back to the source)
    kv_cache_bytes: float
    memory_bytes: float
    memory_capacity_bytes: float


class GenerationPrediction(FrozenModel):
    objective: GenerationObjective
    num_sequences: int
    max_context: int
    time_per_token_s: float  # L: one sequence, one token, round trip
    bottleneck_s: float  # P
    tokens_per_s: float  # min(S / L, 1 / P)
    single_sequence_tokens_per_s: float  # 1 / L
    prefill_s: float  # prompt of `prompt_length` tokens to the first new token
    stages: tuple[GenerationStagePrediction, ...]
    optimal: bool = False
    upper_bound_tokens_per_s: float | None = None
    # [Note: the batch dimension]: "measured" = micro-batches of `batch_rows` rows;
    # "none" = no batch data in the profile, one row per frame (S frames interleaved).
    batch_scaling: Literal["measured", "none"] = "none"
    micro_batches: int = 1
    batch_rows: int = 1
    concurrent_time_per_token_s: float = 0.0  # a sequence's time per token with S running


class GenerationPlan(VersionedFile):
    """A pipeline `Plan` for generation plus the decode predictions it was chosen by."""

    KIND: ClassVar[str] = "edgesplit.generation_plan"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: Literal["edgesplit.generation_plan"] = "edgesplit.generation_plan"
    schema_version: Literal[1] = 1
    plan: Plan
    generation: GenerationPrediction


class _Costs:
    """Prefix sums of decode/prefill times, params and KV bytes; per-device lookups."""

    def __init__(self, profile: GenerationProfile, cluster: Cluster) -> None:
        profile.check()
        self.profile = profile
        self.cluster = cluster
        self.n = profile.decode.num_units
        self.decode: dict[str, list[float]] = {}
        self.prefill: dict[str, list[float]] = {}
        for kind in {d.kind for d in cluster.devices}:
            self.decode[kind] = _prefix(profile.decode.times_for(kind))
            self.prefill[kind] = _prefix(profile.prefill.times_for(kind))
        self.params = _prefix([u.param_bytes for u in profile.decode.units])
        self.kv = _prefix(list(profile.kv_bytes_per_token))
        self.hidden = [u.output_bytes for u in profile.decode.units]

    def compute_s(self, device: str, a: int, b: int, phase: str = "decode") -> float:
        table = self.decode if phase == "decode" else self.prefill
        spec = self.cluster.device(device)
        prefix = table[spec.kind]
        return (prefix[b] - prefix[a]) + spec.stage_overhead_s  # as CostModel.compute_s

    def batched_prefix(self, kind: str, rows: int) -> list[float]:
        """Prefix sums of decode unit times for a step of `rows` rows (batch 1 without data)."""
        scale = self.profile.unit_scale(rows)
        times = self.profile.decode.times_for(kind)
        if scale is None:
            return _prefix(times)
        return _prefix([t * r for t, r in zip(times, scale, strict=True)])

    def kv_bytes(self, a: int, b: int, max_context: int, num_sequences: int) -> float:
        return (self.kv[b] - self.kv[a]) * max_context * num_sequences

    def memory_bytes(self, a: int, b: int, max_context: int, num_sequences: int) -> float:
        params = self.params[b] - self.params[a]
        return params + self.kv_bytes(a, b, max_context, num_sequences) + 2 * self.hidden[b - 1]

    def out_bytes(self, b: int) -> float:
        """Bytes leaving a stage that ends at unit b (the last stage sends a token id)."""
        return self.profile.token_bytes if b == self.n else self.hidden[b - 1]


def _prefix(values: Sequence[float]) -> list[float]:
    out = [0.0]
    for v in values:
        out.append(out[-1] + float(v))
    return out


def predict_generation(
    profile: GenerationProfile,
    cluster: Cluster,
    stages: Sequence[StagePlacement],
    *,
    objective: GenerationObjective = "tokens_per_s",
    num_sequences: int = 1,
    max_context: int = 2048,
    micro_batches: int | None = None,
) -> GenerationPrediction:
    """The decode cost model of the module docstring for given stages (`micro_batches`:
    default one per stage, as the runtime's driver)."""
    costs = _Costs(profile, cluster)
    return _predict(costs, stages, objective, num_sequences, max_context, micro_batches)


def _rows(num_sequences: int, micro_batches: int) -> int:
    return -(-num_sequences // max(1, min(micro_batches, num_sequences)))


def _predict(
    costs: _Costs,
    stages: Sequence[StagePlacement],
    objective: GenerationObjective,
    num_sequences: int,
    max_context: int,
    micro_batches: int | None = None,
) -> GenerationPrediction:
    cluster = costs.cluster
    source = cluster.source
    batched = costs.profile.decode_batch != () and num_sequences > 1
    slots = micro_batches or len(stages)
    rows = _rows(num_sequences, slots) if batched else 1
    token = costs.profile.token_bytes
    first = stages[0].device
    latency = cluster.transfer_s(token, source, first)
    bottleneck = _serialization_s(cluster, token, source, first)
    latency_b = cluster.transfer_s(token * rows, source, first)
    bottleneck_b = _serialization_s(cluster, token * rows, source, first)
    prefixes = {
        kind: costs.batched_prefix(kind, rows) for kind in {d.kind for d in cluster.devices}
    }
    prefill = cluster.transfer_s(token * costs.profile.prompt_length, source, first)
    out: list[GenerationStagePrediction] = []
    prompt_scale = costs.profile.prompt_length
    for index, stage in enumerate(stages):
        nxt = stages[index + 1].device if index + 1 < len(stages) else source
        size = costs.out_bytes(stage.end)
        hop = cluster.transfer_s(size, stage.device, nxt)
        compute = costs.compute_s(stage.device, stage.start, stage.end)
        prefill_compute = costs.compute_s(stage.device, stage.start, stage.end, "prefill")
        latency += compute + hop
        size_prefill = size if stage.end == costs.n else size * prompt_scale
        prefill += prefill_compute + cluster.transfer_s(size_prefill, stage.device, nxt)
        bottleneck = max(bottleneck, compute, _serialization_s(cluster, size, stage.device, nxt))
        prefix = prefixes[cluster.device(stage.device).kind]
        compute_b = (prefix[stage.end] - prefix[stage.start]) + cluster.device(
            stage.device
        ).stage_overhead_s  # the graph's expression (stage_graph.StageGraph.compute)
        latency_b += compute_b + cluster.transfer_s(size * rows, stage.device, nxt)
        serialization_b = _serialization_s(cluster, size * rows, stage.device, nxt)
        bottleneck_b = max(bottleneck_b, compute_b, serialization_b)
        capacity = cluster.device(stage.device).memory_bytes
        out.append(
            GenerationStagePrediction(
                device=stage.device,
                start=stage.start,
                end=stage.end,
                decode_compute_s=compute,
                prefill_compute_s=prefill_compute,
                hop_s=hop,
                kv_cache_bytes=costs.kv_bytes(stage.start, stage.end, max_context, num_sequences),
                memory_bytes=costs.memory_bytes(stage.start, stage.end, max_context, num_sequences),
                memory_capacity_bytes=capacity,
            )
        )
    in_use = -(-num_sequences // rows)  # micro-batches that hold a row
    if batched:
        tokens_per_s = min(num_sequences / latency_b, rows / bottleneck_b)
        per_token = max(latency_b, in_use * bottleneck_b)
    else:
        tokens_per_s = min(num_sequences / latency, 1.0 / bottleneck) if bottleneck > 0 else 0.0
        per_token = max(latency, num_sequences * bottleneck)
    return GenerationPrediction(
        objective=objective,
        num_sequences=num_sequences,
        max_context=max_context,
        time_per_token_s=latency,
        bottleneck_s=bottleneck_b if batched else bottleneck,
        tokens_per_s=tokens_per_s,
        single_sequence_tokens_per_s=1.0 / latency if latency > 0 else 0.0,
        prefill_s=prefill,
        stages=tuple(out),
        batch_scaling="measured" if costs.profile.decode_batch else "none",
        micro_batches=in_use if batched else 1,
        batch_rows=rows,
        concurrent_time_per_token_s=per_token,
    )


def _serialization_s(cluster: Cluster, num_bytes: float, a: str, b: str) -> float:
    if a == b:
        return 0.0
    bandwidth_bytes_per_s, _ = cluster.link(a, b)
    return num_bytes / bandwidth_bytes_per_s


def _graph(
    costs: _Costs, max_context: int, num_sequences: int, max_devices: int, rows: int = 1
) -> StageGraph:
    """The decode cost model as a stage graph (values as `_predict` computes them); `rows`
    per frame ([Note: the batch dimension]; the caller weighs the bottleneck by 1 / rows)."""
    cluster = costs.cluster
    names = cluster.device_names
    source = cluster.source
    n = costs.n
    token = costs.profile.token_bytes * rows
    params = np.asarray(costs.params)
    kv = np.asarray(costs.kv)
    hidden = np.asarray(costs.hidden)
    starts = np.arange(n + 1)
    a = np.minimum(starts[:, None], n - 1)
    b = np.maximum(starts[None, :], 1)
    # _Costs.memory_bytes: params + kv_bytes + 2 * hidden[b - 1], in that order.
    memory = (params[b] - params[a]) + (kv[b] - kv[a]) * max_context * num_sequences
    memory = memory + 2 * hidden[b - 1]
    size = len(names)
    latency = np.zeros((size, size))
    bandwidth = np.ones((size, size))
    for i, d in enumerate(names):
        for j, e in enumerate(names):
            if i != j:
                bandwidth[i, j], latency[i, j] = cluster.link(d, e)
    return StageGraph(
        devices=tuple(names),
        time_prefix=np.stack(
            [np.asarray(costs.batched_prefix(cluster.device(d).kind, rows)) for d in names]
        ),
        stage_memory=memory,
        capacity=np.array([cluster.device(d).memory_bytes for d in names]),
        latency_s=latency,
        bandwidth=bandwidth,
        cut_bytes=np.concatenate([[0.0], hidden * rows]),
        in_s=np.array([cluster.transfer_s(token, source, d) for d in names]),
        out_s=np.array([cluster.transfer_s(token, d, source) for d in names]),
        in_max_s=np.array([_serialization_s(cluster, token, source, d) for d in names]),
        out_max_s=np.array([_serialization_s(cluster, token, d, source) for d in names]),
        max_hop_latency=False,
        stage_overhead_s=np.array([cluster.device(d).stage_overhead_s for d in names]),
        max_stages=max_devices,
    )


def _single_device_plans(
    costs: _Costs, max_context: int, num_sequences: int
) -> list[list[tuple[int, int, int]]]:
    plans = []
    for index, device in enumerate(costs.cluster.devices):
        if costs.memory_bytes(0, costs.n, max_context, num_sequences) <= device.memory_bytes:
            plans.append([(index, 0, costs.n)])
    return plans


def plan_generation(
    profile: GenerationProfile,
    cluster: Cluster,
    *,
    objective: GenerationObjective = "tokens_per_s",
    num_sequences: int = 1,
    max_context: int = 2048,
    max_devices: int | None = None,
    time_limit_s: float | None = None,
    target_gap: float = 0.0,
    progress: ProgressFn | None = None,
) -> GenerationPlan:
    """The best pipeline for decoding under the module's cost model.

    Args:
        profile: decode/prefill unit times per device kind and KV bytes per token.
        cluster: devices and links; the driver (tokens in and out) runs on `cluster.source`.
        objective: "tokens_per_s" (throughput over `num_sequences` interleaved sequences) or
            "time_per_token" (one sequence's latency per token).
        num_sequences: sequences kept in flight (and KV caches held) per stage.
        max_context: tokens per sequence the KV caches must hold.
        max_devices: use at most this many devices (default: all).
        time_limit_s: stop after this many seconds with the best plan and its certified gap.
        target_gap: accept a plan within this relative gap of the bound (0: optimal).
        progress: called with `SolveProgress` about once a second on long searches.

    Raises:
        PlanInfeasibleError: no placement fits the devices' memory.
    """
    if num_sequences < 1 or max_context < 1:
        raise ConfigError("num_sequences and max_context must be >= 1")
    began = time.perf_counter()
    costs = _Costs(profile, cluster)
    limit = max_devices or len(cluster.devices)
    batched = objective == "tokens_per_s" and num_sequences > 1 and profile.decode_batch != ()
    # [Note: the batch dimension]: one exact solve per micro-batch size (rows per frame).
    sizes = sorted({_rows(num_sequences, m) for m in range(1, num_sequences + 1)})
    best: tuple[float, Any, StageGraph, int] | None = None
    bound_s = math.inf
    for rows in sizes if batched else [1]:
        graph = _graph(costs, max_context, num_sequences, limit, rows)
        if objective == "tokens_per_s":
            goal = Goal(1.0 / rows, 1.0 / num_sequences)
        else:
            goal = Goal(0.0, 1.0)
        found = solve_stage_graph(
            graph,
            goal,
            incumbents=_single_device_plans(costs, max_context, num_sequences),
            time_limit_s=time_limit_s,
            target_gap=max(target_gap, OPTIMAL_GAP),
            progress=progress,
        )
        bound_s = min(bound_s, found.lower_bound)
        if found.stages and (best is None or found.value < best[0]):
            best = (found.value, found, graph, -(-num_sequences // rows))
    if best is None:
        need = costs.memory_bytes(0, costs.n, max_context, num_sequences)
        total = sum(d.memory_bytes for d in cluster.devices)
        raise PlanInfeasibleError(
            f"no placement of '{profile.model}' fits: the model plus KV cache for "
            f"{num_sequences} sequence(s) x {max_context} tokens needs {need / 1e6:.1f} MB, the "
            f"cluster has {total / 1e6:.1f} MB in {len(cluster.devices)} devices; lower "
            "max_context or num_sequences, or add devices"
        )
    value_s, solution, graph, slots = best
    stages = [
        StagePlacement(device=graph.devices[d], start=a, end=b) for d, a, b in solution.stages
    ]
    predicted = _predict(
        costs, stages, objective, num_sequences, max_context, slots if batched else None
    )
    # The bound is on 1 / tokens_per_s (tokens_per_s) or on L (time_per_token), in seconds.
    bound_s = min(bound_s, value_s)
    optimal = value_s <= bound_s * (1 + max(target_gap, OPTIMAL_GAP))
    upper = 1.0 / bound_s if bound_s > 0 else math.inf
    predicted = predicted.model_copy(update={"optimal": optimal, "upper_bound_tokens_per_s": upper})
    elapsed = time.perf_counter() - began
    plan = Plan(
        model=profile.model,
        profile_hash=profile.decode.digest(),
        cluster_hash=cluster.digest(),
        batch_size=1,
        objective="throughput" if objective == "tokens_per_s" else "latency",
        planner=PlannerInfo(
            name="generation-milp",
            options={
                "objective": objective,
                "num_sequences": num_sequences,
                "max_context": max_context,
                "target_gap": target_gap,
                **({"micro_batches": slots} if batched else {}),
                **({"time_limit_s": time_limit_s} if time_limit_s is not None else {}),
            },
            elapsed_s=elapsed,
        ),
        stages=tuple(stages),
        predicted=_pipeline_predicted(predicted, bound_s, value_s),
    )
    return GenerationPlan(plan=plan, generation=predicted)


def _pipeline_predicted(g: GenerationPrediction, bound_s: float, value_s: float) -> Predicted:
    """The generic Plan figures, read as decode steps (a micro-batch = one token).

    `lower_bound_s` and `gap` refer to the objective's own value (seconds per token:
    max(P, L / S) for tokens_per_s, L for time_per_token).
    """
    return Predicted(
        period_s=g.bottleneck_s,
        throughput_per_s=g.tokens_per_s,
        latency_s=g.time_per_token_s,
        input_transfer_s=0.0,
        output_transfer_s=g.stages[-1].hop_s,
        stages=tuple(
            StagePrediction(
                device=s.device,
                compute_s=s.decode_compute_s,
                transfer_s=s.hop_s,
                memory_bytes=s.memory_bytes,
                memory_capacity_bytes=s.memory_capacity_bytes,
            )
            for s in g.stages
        ),
        optimal=g.optimal,
        lower_bound_s=bound_s,
        gap=max(0.0, value_s / bound_s - 1.0) if bound_s > 0 else None,
    )
