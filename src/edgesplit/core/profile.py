"""Model profiles: the per-unit measurements planners and the simulator work from.

Owns `UnitProfile` and `ModelProfile` (`kind: edgesplit.model_profile`, docs/architecture.md §3).
No torch, no ray.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from edgesplit.core.schema import FrozenModel, VersionedFile, content_hash
from edgesplit.errors import ProfileMissingError

__all__ = ["ModelProfile", "UnitProfile", "merge_profiles"]

NonNegative = Annotated[float, Field(ge=0)]


class UnitProfile(FrozenModel):
    """The smallest piece a planner may cut at: weights, output, time per device kind."""

    name: str
    param_bytes: NonNegative
    output_bytes: NonNegative
    flops: NonNegative = 0.0
    time_s: dict[str, NonNegative]
    peak_memory_bytes: NonNegative | None = None
    cpu_time_s: dict[str, NonNegative] | None = None


class ModelProfile(VersionedFile):
    """Per-unit profile of one model at one micro-batch size."""

    KIND: ClassVar[str] = "edgesplit.model_profile"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: Literal["edgesplit.model_profile"] = "edgesplit.model_profile"
    schema_version: Literal[1] = 1
    model: str
    batch_size: Annotated[int, Field(ge=1)]
    dtype: str = "float32"
    input_bytes: NonNegative
    units: Annotated[tuple[UnitProfile, ...], Field(min_length=1)]
    source: str = ""
    notes: str = ""

    @model_validator(mode="after")
    def _check_units(self) -> ModelProfile:
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            raise ValueError("unit names must be unique")
        return self

    @property
    def num_units(self) -> int:
        return len(self.units)

    @cached_property
    def device_kinds(self) -> tuple[str, ...]:
        """Kinds that have a time for every unit."""
        common = set(self.units[0].time_s)
        for unit in self.units[1:]:
            common &= set(unit.time_s)
        return tuple(sorted(common))

    def times_for(self, device_kind: str) -> tuple[float, ...]:
        """Seconds per unit on `device_kind`; a clear error when the kind is missing."""
        if device_kind not in self.device_kinds:
            raise ProfileMissingError(
                f"profile of '{self.model}' has no times for device kind '{device_kind}'; "
                f"kinds present: {list(self.device_kinds)}. Profile the model on that kind "
                "(edgesplit profile) or merge a profile that has it"
            )
        return tuple(u.time_s[device_kind] for u in self.units)

    def digest(self) -> str:
        return content_hash(self)

    def with_derived_kind(self, name: str, relative_to: str, slowdown: float) -> ModelProfile:
        """A new profile in which kind `name` takes `relative_to`'s times x `slowdown`.

        `relative_to = "host"` names the only kind of a single-kind (host-measured) profile.
        """
        if relative_to == "host":
            if len(self.device_kinds) != 1:
                raise ProfileMissingError(
                    f"kind '{name}' is relative to 'host' but profile '{self.model}' has "
                    f"{len(self.device_kinds)} kinds {list(self.device_kinds)}; name one of them"
                )
            relative_to = self.device_kinds[0]
        self.times_for(relative_to)
        data = self.model_dump()
        for unit in data["units"]:
            unit["time_s"][name] = unit["time_s"][relative_to] * slowdown
        # Re-validate (never model_copy: it would carry the cached kinds of the old profile).
        return ModelProfile.model_validate(data)


def merge_profiles(profiles: list[ModelProfile]) -> ModelProfile:
    """One profile with every kind's times, from profiles of one model measured on different
    device kinds (same units, batch size and input)."""
    if not profiles:
        raise ProfileMissingError("merge needs at least one profile")
    first = profiles[0]
    data = first.model_dump()
    for other in profiles[1:]:
        same = (
            other.model == first.model
            and other.batch_size == first.batch_size
            and [u.name for u in other.units] == [u.name for u in first.units]
        )
        if not same:
            raise ProfileMissingError(
                f"cannot merge profile of '{other.model}' (batch {other.batch_size}, "
                f"{other.num_units} units) into '{first.model}' (batch {first.batch_size}, "
                f"{first.num_units} units): profile the same model, batch size and units"
            )
        for merged, unit in zip(data["units"], other.units, strict=True):
            merged["time_s"].update(unit.time_s)
            if unit.cpu_time_s:
                merged["cpu_time_s"] = {**(merged.get("cpu_time_s") or {}), **unit.cpu_time_s}
    data["source"] = "merged: " + "; ".join(p.source for p in profiles)
    return ModelProfile.model_validate(data)
