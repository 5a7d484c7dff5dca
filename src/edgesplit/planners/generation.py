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
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field

from edgesplit.core.cluster import Cluster
from edgesplit.core.plan import Plan, PlannerInfo, Predicted, StagePlacement, StagePrediction
from edgesplit.core.profile import ModelProfile
from edgesplit.core.schema import FrozenModel, VersionedFile
from edgesplit.errors import ConfigError, PlanInfeasibleError
from edgesplit.planners.milp import OPTIMAL_GAP, solve_stage_graph
from edgesplit.planners.progress import ProgressFn
from edgesplit.planners.stage_graph import Goal, StageGraph

__all__ = [
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

    def check(self) -> None:
        if len(self.kv_bytes_per_token) != self.decode.num_units:
            raise ConfigError(
                f"generation profile of '{self.model}': {len(self.kv_bytes_per_token)} KV entries "
                f"for {self.decode.num_units} units"
            )
        if self.prefill.num_units != self.decode.num_units:
            raise ConfigError("prefill and decode profiles must have the same units")


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
        prefix = table[self.cluster.device(device).kind]
        return prefix[b] - prefix[a]

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
) -> GenerationPrediction:
    """The decode cost model of the module docstring for given stages."""
    costs = _Costs(profile, cluster)
    return _predict(costs, stages, objective, num_sequences, max_context)


def _predict(
    costs: _Costs,
    stages: Sequence[StagePlacement],
    objective: GenerationObjective,
    num_sequences: int,
    max_context: int,
) -> GenerationPrediction:
    cluster = costs.cluster
    source = cluster.source
    token = costs.profile.token_bytes
    first = stages[0].device
    latency = cluster.transfer_s(token, source, first)
    bottleneck = _serialization_s(cluster, token, source, first)
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
    tokens_per_s = min(num_sequences / latency, 1.0 / bottleneck) if bottleneck > 0 else 0.0
    return GenerationPrediction(
        objective=objective,
        num_sequences=num_sequences,
        max_context=max_context,
        time_per_token_s=latency,
        bottleneck_s=bottleneck,
        tokens_per_s=tokens_per_s,
        single_sequence_tokens_per_s=1.0 / latency if latency > 0 else 0.0,
        prefill_s=prefill,
        stages=tuple(out),
    )


def _serialization_s(cluster: Cluster, num_bytes: float, a: str, b: str) -> float:
    if a == b:
        return 0.0
    bandwidth_bytes_per_s, _ = cluster.link(a, b)
    return num_bytes / bandwidth_bytes_per_s


def _graph(costs: _Costs, max_context: int, num_sequences: int, max_devices: int) -> StageGraph:
    """The decode cost model as a stage graph (values as `_predict` computes them)."""
    cluster = costs.cluster
    names = cluster.device_names
    source = cluster.source
    n = costs.n
    token = costs.profile.token_bytes
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
        time_prefix=np.stack([np.asarray(costs.decode[cluster.device(d).kind]) for d in names]),
        stage_memory=memory,
        capacity=np.array([cluster.device(d).memory_bytes for d in names]),
        latency_s=latency,
        bandwidth=bandwidth,
        cut_bytes=np.concatenate([[0.0], hidden]),
        in_s=np.array([cluster.transfer_s(token, source, d) for d in names]),
        out_s=np.array([cluster.transfer_s(token, d, source) for d in names]),
        in_max_s=np.array([_serialization_s(cluster, token, source, d) for d in names]),
        out_max_s=np.array([_serialization_s(cluster, token, d, source) for d in names]),
        max_hop_latency=False,
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
    graph = _graph(costs, max_context, num_sequences, max_devices or len(cluster.devices))
    goal = Goal(1.0, 1.0 / num_sequences) if objective == "tokens_per_s" else Goal(0.0, 1.0)
    solution = solve_stage_graph(
        graph,
        goal,
        incumbents=_single_device_plans(costs, max_context, num_sequences),
        time_limit_s=time_limit_s,
        target_gap=max(target_gap, OPTIMAL_GAP),
        progress=progress,
    )
    if not solution.stages:
        need = costs.memory_bytes(0, costs.n, max_context, num_sequences)
        total = sum(d.memory_bytes for d in cluster.devices)
        raise PlanInfeasibleError(
            f"no placement of '{profile.model}' fits: the model plus KV cache for "
            f"{num_sequences} sequence(s) x {max_context} tokens needs {need / 1e6:.1f} MB, the "
            f"cluster has {total / 1e6:.1f} MB in {len(cluster.devices)} devices; lower "
            "max_context or num_sequences, or add devices"
        )
    stages = [
        StagePlacement(device=graph.devices[d], start=a, end=b) for d, a, b in solution.stages
    ]
    predicted = _predict(costs, stages, objective, num_sequences, max_context)
    # The bound is on max(P, L / S) (tokens_per_s) or on L (time_per_token), in seconds.
    bound_s = solution.lower_bound
    upper = 1.0 / bound_s if bound_s > 0 else math.inf
    predicted = predicted.model_copy(
        update={"optimal": solution.optimal, "upper_bound_tokens_per_s": upper}
    )
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
                **({"time_limit_s": time_limit_s} if time_limit_s is not None else {}),
            },
            elapsed_s=elapsed,
        ),
        stages=tuple(stages),
        predicted=_pipeline_predicted(predicted, bound_s, solution.value),
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
