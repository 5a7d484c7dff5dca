"""Plans: which device runs which half-open unit range, and what the cost model predicts.

Owns `StagePlacement`, `StagePrediction`, `Predicted`, `PlannerInfo` and `Plan`
(`kind: edgesplit.plan`, docs/architecture.md §3) with `Plan.validate_against()`. No torch, no ray.

[Note: stage precision] A stage may hold its weights as `dtype` float32 / bfloat16 / int8 and send
its output (to the next stage, or back to the source from the last) as `link_encoding` float32 /
float16 / int8-tensor / int8-token (core.precision). Both keys are left out of the JSON at their
float32 defaults, so float32 plans (and golden files) are byte-identical to plans written before
the keys existed, and those files load unchanged (schema_version 1). An older edgesplit given a
plan with another dtype refuses it, naming the unknown key.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from edgesplit.core.cluster import Cluster
from edgesplit.core.precision import LinkEncoding, StageDtype
from edgesplit.core.profile import ModelProfile
from edgesplit.core.quality import PredictedQuality
from edgesplit.core.schema import FrozenModel, VersionedFile
from edgesplit.errors import ConfigError

__all__ = [
    "Objective",
    "Plan",
    "PlannerInfo",
    "Predicted",
    "StagePlacement",
    "StagePrediction",
]

Objective = Literal["throughput", "latency"]


def _is_float32(value: str) -> bool:
    return value == "float32"


class StagePlacement(FrozenModel):
    """Units [start, end) run on `device`, weights in `dtype` ([Note: stage precision])."""

    device: str
    start: Annotated[int, Field(ge=0)]
    end: Annotated[int, Field(ge=1)]
    dtype: StageDtype = Field(default="float32", exclude_if=_is_float32)
    link_encoding: LinkEncoding = Field(default="float32", exclude_if=_is_float32)

    @model_validator(mode="after")
    def _ordered(self) -> StagePlacement:
        if self.end <= self.start:
            raise ValueError(f"stage on '{self.device}' has end {self.end} <= start {self.start}")
        return self

    @property
    def num_units(self) -> int:
        return self.end - self.start

    def with_precision(
        self, dtype: StageDtype | None = None, link_encoding: LinkEncoding | None = None
    ) -> StagePlacement:
        """This stage with another dtype and/or link encoding (validated)."""
        return StagePlacement(
            device=self.device,
            start=self.start,
            end=self.end,
            dtype=self.dtype if dtype is None else dtype,
            link_encoding=self.link_encoding if link_encoding is None else link_encoding,
        )


def check_chain(stages: Sequence[StagePlacement], num_units: int | None = None) -> None:
    """ValueError unless `stages` run from unit 0 (to `num_units`) without gaps, one per device."""
    if stages[0].start != 0:
        raise ValueError(f"first stage must start at unit 0, not {stages[0].start}")
    for prev, nxt in itertools.pairwise(stages):
        if nxt.start != prev.end:
            raise ValueError(
                f"stages must be contiguous: '{prev.device}' ends at {prev.end} but "
                f"'{nxt.device}' starts at {nxt.start}"
            )
    if num_units is not None and stages[-1].end != num_units:
        raise ValueError(f"stages end at unit {stages[-1].end}; the model has {num_units}")
    devices = [s.device for s in stages]
    repeated = sorted({d for d in devices if devices.count(d) > 1})
    if repeated:
        raise ValueError(f"each device may hold at most one stage; repeated: {repeated}")


class StagePrediction(FrozenModel):
    """Cost-model figures for one stage; `transfer_s` is the hop *out* of the stage."""

    device: str
    compute_s: float
    transfer_s: float
    memory_bytes: float
    memory_capacity_bytes: float


class Predicted(FrozenModel):
    """What the cost model (docs/architecture.md §4.1) predicts for a plan."""

    period_s: float
    throughput_per_s: float
    latency_s: float
    input_transfer_s: float
    output_transfer_s: float
    stages: tuple[StagePrediction, ...]
    optimal: bool = False
    lower_bound_s: float | None = None
    gap: float | None = None
    quality: PredictedQuality | None = Field(default=None, exclude_if=lambda value: value is None)


class PlannerInfo(FrozenModel):
    name: str
    version: str = "1"
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    elapsed_s: float = 0.0


class Plan(VersionedFile):
    """A pipeline placement of a model's units over a cluster's devices."""

    KIND: ClassVar[str] = "edgesplit.plan"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: Literal["edgesplit.plan"] = "edgesplit.plan"
    schema_version: Literal[1] = 1
    model: str
    profile_hash: str
    cluster_hash: str
    batch_size: Annotated[int, Field(ge=1)]
    objective: Objective
    planner: PlannerInfo
    stages: Annotated[tuple[StagePlacement, ...], Field(min_length=1)]
    predicted: Predicted

    @model_validator(mode="after")
    def _contiguous(self) -> Plan:
        check_chain(self.stages)
        return self

    @property
    def num_units(self) -> int:
        return self.stages[-1].end

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(s.device for s in self.stages)

    @property
    def dtypes(self) -> tuple[StageDtype, ...]:
        return tuple(s.dtype for s in self.stages)

    def validate_against(self, profile: ModelProfile, cluster: Cluster) -> None:
        """Raise ConfigError when this plan was not made for this profile and cluster."""
        if self.num_units != profile.num_units:
            raise ConfigError(
                f"plan covers {self.num_units} units but profile '{profile.model}' has "
                f"{profile.num_units}; re-plan with this profile (edgesplit plan)"
            )
        if self.model != profile.model:
            raise ConfigError(
                f"plan is for model '{self.model}' but the profile is for '{profile.model}'"
            )
        missing = [d for d in self.devices if d not in cluster.device_names]
        if missing:
            raise ConfigError(
                f"plan places stages on {missing}, which the cluster does not have "
                f"(devices: {list(cluster.device_names)}); re-plan for this cluster"
            )
