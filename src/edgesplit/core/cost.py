"""The cost model of docs/architecture.md §4.1, used by every planner, the simulator and the CLI.

compute(d, a, b) = Σ time_s[kind(d)][a:b]; transfer(x, d→e) = latency + 8x/bandwidth (0 if d = e);
memory(d, a, b) = Σ param_bytes[a:b] + 2·(in_bytes(a) + output_bytes[b−1]);
period = max(in, computes, hops, out); latency = in + Σ computes + Σ hops + out.
No torch, no ray: pure numpy over a `ModelProfile` and a `Cluster`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgesplit.core.cluster import Cluster
from edgesplit.core.plan import Predicted, StagePlacement, StagePrediction
from edgesplit.core.profile import ModelProfile

__all__ = ["CostModel"]


@dataclass(frozen=True)
class CostModel:
    """Prefix-summed profile data bound to one cluster; cheap O(1) stage queries."""

    profile: ModelProfile
    cluster: Cluster
    _time_prefix: dict[str, np.ndarray] = field(init=False, repr=False)
    _param_prefix: np.ndarray = field(init=False, repr=False)
    _output_bytes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        kinds = {d.kind for d in self.cluster.devices}
        prefixes = {}
        for kind in sorted(kinds):
            times = np.asarray(self.profile.times_for(kind), dtype=np.float64)
            prefixes[kind] = np.concatenate([[0.0], np.cumsum(times)])
        params = np.asarray([u.param_bytes for u in self.profile.units], dtype=np.float64)
        object.__setattr__(self, "_time_prefix", prefixes)
        object.__setattr__(self, "_param_prefix", np.concatenate([[0.0], np.cumsum(params)]))
        outputs = np.asarray([u.output_bytes for u in self.profile.units], dtype=np.float64)
        object.__setattr__(self, "_output_bytes", outputs)

    @property
    def num_units(self) -> int:
        return self.profile.num_units

    def time_prefix(self, kind: str) -> np.ndarray:
        """Cumulative seconds: compute of [a, b) on kind = prefix[b] - prefix[a]."""
        return self._time_prefix[kind]

    @property
    def param_prefix(self) -> np.ndarray:
        return self._param_prefix

    @property
    def output_bytes(self) -> np.ndarray:
        return self._output_bytes

    def in_bytes(self, start: int) -> float:
        """Bytes entering a stage that starts at unit `start`."""
        return self.profile.input_bytes if start == 0 else float(self._output_bytes[start - 1])

    def compute_s(self, device: str, start: int, end: int) -> float:
        prefix = self._time_prefix[self.cluster.device(device).kind]
        return float(prefix[end] - prefix[start])

    def memory_bytes(self, start: int, end: int) -> float:
        params = float(self._param_prefix[end] - self._param_prefix[start])
        return params + 2.0 * (self.in_bytes(start) + float(self._output_bytes[end - 1]))

    def transfer_s(self, num_bytes: float, a: str, b: str) -> float:
        return self.cluster.transfer_s(num_bytes, a, b)

    def predict(
        self,
        stages: Sequence[StagePlacement],
        *,
        optimal: bool = False,
        lower_bound_s: float | None = None,
        objective: str = "throughput",
    ) -> Predicted:
        """Every §4 figure for a sequence of stages (the plan need not fit memory)."""
        source = self.cluster.source
        last = self.num_units - 1
        in_s = self.transfer_s(self.profile.input_bytes, source, stages[0].device)
        out_s = self.transfer_s(float(self._output_bytes[last]), stages[-1].device, source)
        per_stage: list[StagePrediction] = []
        for index, stage in enumerate(stages):
            hop_s = 0.0
            if index + 1 < len(stages):
                hop_s = self.transfer_s(
                    float(self._output_bytes[stage.end - 1]), stage.device, stages[index + 1].device
                )
            per_stage.append(
                StagePrediction(
                    device=stage.device,
                    compute_s=self.compute_s(stage.device, stage.start, stage.end),
                    transfer_s=hop_s,
                    memory_bytes=self.memory_bytes(stage.start, stage.end),
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
        )

    def overfull_stages(self, stages: Sequence[StagePlacement]) -> list[tuple[str, float, float]]:
        """(device, needed_bytes, capacity_bytes) for each stage that does not fit."""
        result = []
        for stage in stages:
            need = self.memory_bytes(stage.start, stage.end)
            have = self.cluster.device(stage.device).memory_bytes
            if need > have:
                result.append((stage.device, need, have))
        return result
