"""The cost model of docs/architecture.md §4.1, used by every planner, the simulator and the CLI.

compute(d, a, b) = Σ time_s[kind(d)][a:b]; transfer(x, d→e) = latency + 8x/bandwidth (0 if d = e);
memory(d, a, b) = Σ param_bytes[a:b] + 2·(in_bytes(a) + output_bytes[b−1]);
period = max(in, computes, hops, out); latency = in + Σ computes + Σ hops + out.
No torch, no ray: pure numpy over a `ModelProfile` and a `Cluster`.

[Note: precision in the cost model] A stage's `dtype` picks its times and weight bytes from the
profile's per-dtype figures (`ModelProfile.times_for(kind, dtype)`, `param_bytes_for(dtype)`);
its `link_encoding` turns the float32 bytes of its output into wire bytes
(`core.precision.encoded_bytes`, one scale per tensor, or per row with `num_rows` = the
micro-batch size: the profile does not know the token count, so per-token scales are
under-counted by at most 4 bytes per token, < 1 % of any hidden size >= 100). Wire bytes are what
hops cost and what the double-buffered activations in `memory` hold (the runtime keeps frames as
they travelled). The model's final output always goes back as float32. A `CostModel` built with
`dtype` / `link_encoding` uses them for every stage in `time_prefix`, `param_prefix` and
`output_bytes` (the arrays planners read), so every single-precision planner plans in that
precision unchanged; `predict` reads each stage's own fields, a stage left at the float32
defaults meaning "this model's precision" (planners build such stages; make_plan stamps them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgesplit.core.cluster import Cluster
from edgesplit.core.plan import Predicted, StagePlacement, StagePrediction
from edgesplit.core.precision import LinkEncoding, StageDtype, encoded_bytes
from edgesplit.core.profile import ModelProfile
from edgesplit.core.quality import PredictedQuality

__all__ = ["CostModel"]


@dataclass(frozen=True)
class CostModel:
    """Prefix-summed profile data bound to one cluster; cheap O(1) stage queries."""

    profile: ModelProfile
    cluster: Cluster
    dtype: StageDtype = "float32"  # [Note: precision in the cost model]
    link_encoding: LinkEncoding = "float32"
    _time_prefix: dict[tuple[str, str], np.ndarray] = field(init=False, repr=False)
    _param_prefix: dict[str, np.ndarray] = field(init=False, repr=False)
    _raw_output_bytes: np.ndarray = field(init=False, repr=False)
    _output_bytes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_time_prefix", {})
        object.__setattr__(self, "_param_prefix", {})
        for kind in sorted({d.kind for d in self.cluster.devices}):
            self._times(kind, self.dtype)
        raw = np.asarray([u.output_bytes for u in self.profile.units], dtype=np.float64)
        object.__setattr__(self, "_raw_output_bytes", raw)
        wire = np.asarray(
            [self.wire_bytes(end, self.link_encoding) for end in range(1, len(raw) + 1)],
            dtype=np.float64,
        )
        object.__setattr__(self, "_output_bytes", wire)

    def _times(self, kind: str, dtype: str) -> np.ndarray:
        key = (kind, dtype)
        prefix = self._time_prefix.get(key)
        if prefix is None:
            times = np.asarray(self.profile.times_for(kind, dtype), dtype=np.float64)
            prefix = self._time_prefix[key] = np.concatenate([[0.0], np.cumsum(times)])
        return prefix

    def params_prefix(self, dtype: str) -> np.ndarray:
        """Cumulative weight bytes in `dtype`: weights of [a, b) = prefix[b] - prefix[a]."""
        prefix = self._param_prefix.get(dtype)
        if prefix is None:
            params = np.asarray(self.profile.param_bytes_for(dtype), dtype=np.float64)
            prefix = self._param_prefix[dtype] = np.concatenate([[0.0], np.cumsum(params)])
        return prefix

    def wire_bytes(self, end: int, encoding: LinkEncoding) -> float:
        """Bytes leaving a stage that ends at unit `end` under `encoding` (the model's final
        output: always float32); [Note: precision in the cost model]."""
        raw = float(self.profile.units[end - 1].output_bytes)
        if end == self.profile.num_units or encoding == "float32":
            return raw
        return encoded_bytes(raw, encoding, num_rows=self.profile.batch_size)

    @property
    def num_units(self) -> int:
        return self.profile.num_units

    def time_prefix(self, kind: str, dtype: str | None = None) -> np.ndarray:
        """Cumulative seconds: compute of [a, b) on kind = prefix[b] - prefix[a] (in `dtype`,
        default this model's)."""
        return self._times(kind, dtype or self.dtype)

    @property
    def param_prefix(self) -> np.ndarray:
        return self.params_prefix(self.dtype)

    @property
    def output_bytes(self) -> np.ndarray:
        """Wire bytes out of each unit under this model's `link_encoding`."""
        return self._output_bytes

    def in_bytes(self, start: int, encoding: LinkEncoding | None = None) -> float:
        """Bytes entering a stage that starts at unit `start` (sent under `encoding`, default
        this model's)."""
        if start == 0:
            return self.profile.input_bytes
        if encoding is None:
            return float(self._output_bytes[start - 1])
        return self.wire_bytes(start, encoding)

    def compute_s(self, device: str, start: int, end: int, dtype: str | None = None) -> float:
        """Units [start, end) on the device, plus the runtime's per-micro-batch cost there
        (`DeviceSpec.stage_overhead_ms`, measured by the survey; 0 when unset)."""
        spec = self.cluster.device(device)
        prefix = self._times(spec.kind, dtype or self.dtype)
        return float(prefix[end] - prefix[start]) + spec.stage_overhead_s

    def memory_bytes(
        self,
        start: int,
        end: int,
        dtype: str | None = None,
        in_encoding: LinkEncoding | None = None,
        out_encoding: LinkEncoding | None = None,
    ) -> float:
        prefix = self.params_prefix(dtype or self.dtype)
        params = float(prefix[end] - prefix[start])
        out = (
            float(self._output_bytes[end - 1])
            if out_encoding is None
            else self.wire_bytes(end, out_encoding)
        )
        return params + 2.0 * (self.in_bytes(start, in_encoding) + out)

    def stage_dtype(self, stage: StagePlacement) -> StageDtype:
        """The stage's dtype; its float32 default means this model's `dtype`."""
        return self.dtype if stage.dtype == "float32" else stage.dtype

    def stage_encoding(self, stage: StagePlacement) -> LinkEncoding:
        """The stage's link encoding; its float32 default means this model's `link_encoding`."""
        return self.link_encoding if stage.link_encoding == "float32" else stage.link_encoding

    def stage_memory_bytes(self, stages: Sequence[StagePlacement], index: int) -> float:
        """Memory of `stages[index]` with its own dtype and the encodings of its two links."""
        stage = stages[index]
        in_encoding = self.stage_encoding(stages[index - 1]) if index > 0 else "float32"
        return self.memory_bytes(
            stage.start, stage.end, self.stage_dtype(stage), in_encoding, self.stage_encoding(stage)
        )

    def transfer_s(self, num_bytes: float, a: str, b: str) -> float:
        return self.cluster.transfer_s(num_bytes, a, b)

    def predict(
        self,
        stages: Sequence[StagePlacement],
        *,
        optimal: bool = False,
        lower_bound_s: float | None = None,
        objective: str = "throughput",
        quality: PredictedQuality | None = None,
    ) -> Predicted:
        """Every §4 figure for a sequence of stages (the plan need not fit memory)."""
        source = self.cluster.source
        last = self.num_units - 1
        in_s = self.transfer_s(self.profile.input_bytes, source, stages[0].device)
        out_s = self.transfer_s(self.wire_bytes(last + 1, "float32"), stages[-1].device, source)
        per_stage: list[StagePrediction] = []
        for index, stage in enumerate(stages):
            hop_s = 0.0
            if index + 1 < len(stages):
                hop_s = self.transfer_s(
                    self.wire_bytes(stage.end, self.stage_encoding(stage)),
                    stage.device,
                    stages[index + 1].device,
                )
            per_stage.append(
                StagePrediction(
                    device=stage.device,
                    compute_s=self.compute_s(
                        stage.device, stage.start, stage.end, self.stage_dtype(stage)
                    ),
                    transfer_s=hop_s,
                    memory_bytes=self.stage_memory_bytes(stages, index),
                    memory_capacity_bytes=self.cluster.device(stage.device).memory_bytes,
                )
            )
        period_s = max(
            in_s, out_s, *(s.compute_s for s in per_stage), *(s.transfer_s for s in per_stage)
        )
        # Left fold in pipeline order (in, c1, h1, c2, ..., out) so that planners summing the same
        # way reproduce this value bitwise.
        latency_s = in_s
        for stage_prediction in per_stage:
            latency_s = latency_s + stage_prediction.compute_s + stage_prediction.transfer_s
        latency_s = latency_s + out_s
        achieved = period_s if objective == "throughput" else latency_s
        gap = None
        if lower_bound_s is not None and lower_bound_s > 0:
            gap = max(0.0, achieved / lower_bound_s - 1.0)
        return Predicted(
            period_s=period_s,
            throughput_per_s=self.profile.batch_size / period_s if period_s > 0 else float("inf"),
            latency_s=latency_s,
            input_transfer_s=in_s,
            output_transfer_s=out_s,
            stages=tuple(per_stage),
            optimal=optimal,
            lower_bound_s=lower_bound_s,
            gap=gap,
            quality=quality,
        )

    def overfull_stages(self, stages: Sequence[StagePlacement]) -> list[tuple[str, float, float]]:
        """(device, needed_bytes, capacity_bytes) for each stage that does not fit."""
        result = []
        for index, stage in enumerate(stages):
            need = self.stage_memory_bytes(stages, index)
            have = self.cluster.device(stage.device).memory_bytes
            if need > have:
                result.append((stage.device, need, have))
        return result
