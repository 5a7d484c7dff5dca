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

Search: every ordered choice of devices (up to `max_orderings`, else the fastest devices by
prefix), and for each a DP over cuts (Alpa-style table over (unit, stage)):
  T[j][i] = min over a < i of combine(T[j-1][a], cost(d_j, a, i))  with combine = + for L and
  max for P, infeasible when the stage does not fit in d_j's memory.
time_per_token: the L-DP is exact for each ordering. tokens_per_s: the better of the L-DP and the
P-DP; `optimal` is claimed only when one of them provably attains the bound min(S/L_min, 1/P_min).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from edgesplit.core.cluster import Cluster
from edgesplit.core.plan import Plan, PlannerInfo, Predicted, StagePlacement, StagePrediction
from edgesplit.core.profile import ModelProfile
from edgesplit.core.schema import FrozenModel, VersionedFile
from edgesplit.errors import ConfigError, PlanInfeasibleError

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


def _dp(
    costs: _Costs,
    devices: Sequence[str],
    mode: Literal["sum", "max"],
    max_context: int,
    num_sequences: int,
) -> list[StagePlacement] | None:
    """Best cuts of all units over `devices` in this order (each gets >= 1 unit).

    T[j][i]: best cost of units [0, i) on devices[0..j]; the stage of devices[j] is [a, i).
    Stage cost = decode compute + hop out (sum mode, for L) or max(compute, serialization) (max
    mode, for P). Hops between consecutive devices do not depend on the cut for decoders (the
    hidden state has the same size after every unit but the head), so L's DP is exact.
    """
    n, k = costs.n, len(devices)
    if k > n:
        return None
    inf = math.inf
    cluster = costs.cluster
    table = [[inf] * (n + 1) for _ in range(k)]
    choice = [[-1] * (n + 1) for _ in range(k)]
    for j, device in enumerate(devices):
        capacity = cluster.device(device).memory_bytes
        nxt = devices[j + 1] if j + 1 < k else cluster.source
        last = j == k - 1
        ends = [n] if last else range(j + 1, n - (k - 1 - j) + 1)
        for i in ends:
            size = costs.out_bytes(i)
            if mode == "sum":
                link_s = cluster.transfer_s(size, device, nxt)
            else:
                link_s = _serialization_s(cluster, size, device, nxt)
            starts = [0] if j == 0 else range(j, i)
            for a in starts:
                before = 0.0 if j == 0 else table[j - 1][a]
                if before == inf:
                    continue
                if costs.memory_bytes(a, i, max_context, num_sequences) > capacity:
                    continue
                compute = costs.compute_s(device, a, i)
                summed = before + compute + link_s
                value = summed if mode == "sum" else max(before, compute, link_s)
                if value < table[j][i]:
                    table[j][i] = value
                    choice[j][i] = a
    if table[k - 1][n] == inf:
        return None
    stages: list[StagePlacement] = []
    end = n
    for j in range(k - 1, -1, -1):
        start = choice[j][end]
        stages.append(StagePlacement(device=devices[j], start=start, end=end))
        end = start
    stages.reverse()
    return stages


def _orderings(
    cluster: Cluster, costs: _Costs, max_devices: int, max_orderings: int
) -> tuple[list[tuple[str, ...]], bool]:
    """Ordered device choices to try, and whether that is every ordering."""
    names = list(cluster.device_names)
    sizes = range(1, min(max_devices, len(names), costs.n) + 1)
    total = sum(math.perm(len(names), r) for r in sizes)
    if total <= max_orderings:
        return [p for r in sizes for p in itertools.permutations(names, r)], True
    by_speed = sorted(names, key=lambda d: (costs.compute_s(d, 0, costs.n), d != cluster.source))
    return [tuple(by_speed[:r]) for r in sizes], False


def plan_generation(
    profile: GenerationProfile,
    cluster: Cluster,
    *,
    objective: GenerationObjective = "tokens_per_s",
    num_sequences: int = 1,
    max_context: int = 2048,
    max_devices: int | None = None,
    max_orderings: int = 5000,
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

    Raises:
        PlanInfeasibleError: no placement fits the devices' memory.
    """
    if num_sequences < 1 or max_context < 1:
        raise ConfigError("num_sequences and max_context must be >= 1")
    began = time.perf_counter()
    costs = _Costs(profile, cluster)
    orders, exhaustive = _orderings(
        cluster, costs, max_devices or len(cluster.devices), max_orderings
    )
    best: tuple[float, GenerationPrediction, list[StagePlacement]] | None = None
    min_latency, min_bottleneck = math.inf, math.inf
    for order in orders:
        for mode in ("sum", "max") if objective == "tokens_per_s" else ("sum",):
            stages = _dp(costs, order, mode, max_context, num_sequences)  # type: ignore[arg-type]
            if stages is None:
                continue
            predicted = _predict(costs, stages, objective, num_sequences, max_context)
            min_latency = min(min_latency, predicted.time_per_token_s)
            min_bottleneck = min(min_bottleneck, predicted.bottleneck_s)
            score = (
                predicted.tokens_per_s
                if objective == "tokens_per_s"
                else -predicted.time_per_token_s
            )
            # Ties keep the first found: fewer devices (orderings grow in size).
            if best is None or score > best[0] + 1e-12 * max(1.0, abs(best[0])):
                best = (score, predicted, stages)
    if best is None:
        need = costs.memory_bytes(0, costs.n, max_context, num_sequences)
        total = sum(d.memory_bytes for d in cluster.devices)
        raise PlanInfeasibleError(
            f"no placement of '{profile.model}' fits: the model plus KV cache for "
            f"{num_sequences} sequence(s) x {max_context} tokens needs {need / 1e6:.1f} MB, the "
            f"cluster has {total / 1e6:.1f} MB in {len(cluster.devices)} devices; lower "
            "max_context or num_sequences, or add devices"
        )
    _, predicted, stages = best
    upper = min(num_sequences / min_latency, 1.0 / min_bottleneck)
    if objective == "tokens_per_s":
        optimal = exhaustive and predicted.tokens_per_s >= upper * (1 - 1e-9)
    else:
        optimal = exhaustive
    predicted = predicted.model_copy(update={"optimal": optimal, "upper_bound_tokens_per_s": upper})
    elapsed = time.perf_counter() - began
    plan = Plan(
        model=profile.model,
        profile_hash=profile.decode.digest(),
        cluster_hash=cluster.digest(),
        batch_size=1,
        objective="throughput" if objective == "tokens_per_s" else "latency",
        planner=PlannerInfo(
            name="generation-dp",
            options={
                "objective": objective,
                "num_sequences": num_sequences,
                "max_context": max_context,
                "exhaustive": exhaustive,
            },
            elapsed_s=elapsed,
        ),
        stages=tuple(stages),
        predicted=_pipeline_predicted(predicted),
    )
    return GenerationPlan(plan=plan, generation=predicted)


def _pipeline_predicted(g: GenerationPrediction) -> Predicted:
    """The generic Plan figures, read as decode steps (a micro-batch = one token)."""
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
    )
