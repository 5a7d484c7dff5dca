"""Model profiles: the per-unit measurements planners and the simulator work from.

Owns `UnitProfile`, `UnitDtypeProfile` and `ModelProfile` (`kind: edgesplit.model_profile`,
docs/architecture.md §3). No torch, no ray.

[Note: per-dtype figures] A unit's top-level `param_bytes`/`time_s` are for the profile's `dtype`
(float32 unless stated). `edgesplit profile --dtype float32,bfloat16,int8` adds `by_dtype`: the
same unit's weight bytes and times when its stage holds another dtype. `output_bytes` does not
change with the dtype (stages exchange float32; link encodings shrink it, see core.precision).
The key is left out of the JSON when absent, so float32-only profiles (and their hashes) are what
they were before it existed, and files written before it load unchanged (schema_version 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from edgesplit.core.precision import StageDtype
from edgesplit.core.schema import FrozenModel, VersionedFile, content_hash
from edgesplit.errors import ProfileMissingError

__all__ = ["ModelProfile", "UnitDtypeProfile", "UnitProfile", "batch_ratio", "merge_profiles"]

NonNegative = Annotated[float, Field(ge=0)]


class UnitDtypeProfile(FrozenModel):
    """A unit's weight bytes and times when held in another dtype ([Note: per-dtype figures])."""

    param_bytes: NonNegative
    time_s: dict[str, NonNegative]
    cpu_time_s: dict[str, NonNegative] | None = None


class UnitProfile(FrozenModel):
    """The smallest piece a planner may cut at: weights, output, time per device kind."""

    name: str
    param_bytes: NonNegative
    output_bytes: NonNegative
    flops: NonNegative = 0.0
    time_s: dict[str, NonNegative]
    peak_memory_bytes: NonNegative | None = None
    cpu_time_s: dict[str, NonNegative] | None = None
    by_dtype: dict[StageDtype, UnitDtypeProfile] | None = Field(
        default=None, exclude_if=lambda value: value is None
    )

    def figures(self, dtype: str) -> UnitDtypeProfile | None:
        """This unit's figures in `dtype` beyond the profile's own dtype, if measured."""
        return None if self.by_dtype is None else self.by_dtype.get(dtype)  # type: ignore[call-overload]


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

    @cached_property
    def dtypes(self) -> tuple[str, ...]:
        """Dtypes with figures for every unit: the profile's own first, then `by_dtype`'s."""
        common = set(self.units[0].by_dtype or {})
        for unit in self.units[1:]:
            common &= set(unit.by_dtype or {})
        common.discard(self.dtype)
        return (self.dtype, *sorted(common))

    def times_for(self, device_kind: str, dtype: str | None = None) -> tuple[float, ...]:
        """Seconds per unit on `device_kind` (in `dtype`, default the profile's own)."""
        if device_kind not in self.device_kinds:
            raise ProfileMissingError(
                f"profile of '{self.model}' has no times for device kind '{device_kind}'; "
                f"kinds present: {list(self.device_kinds)}. Profile the model on that kind "
                "(edgesplit profile) or merge a profile that has it"
            )
        if dtype is None or dtype == self.dtype:
            return tuple(u.time_s[device_kind] for u in self.units)
        rows = self._dtype_rows(dtype)
        missing = [
            u.name for u, r in zip(self.units, rows, strict=True) if device_kind not in r.time_s
        ]
        if missing:
            raise ProfileMissingError(
                f"profile of '{self.model}' has {dtype} times for units {missing[:3]} ... but not "
                f"on device kind '{device_kind}'; profile that kind with --dtype {dtype}"
            )
        return tuple(r.time_s[device_kind] for r in rows)

    def param_bytes_for(self, dtype: str | None = None) -> tuple[float, ...]:
        """Weight bytes per unit in `dtype` (default the profile's own)."""
        if dtype is None or dtype == self.dtype:
            return tuple(u.param_bytes for u in self.units)
        return tuple(r.param_bytes for r in self._dtype_rows(dtype))

    def _dtype_rows(self, dtype: str) -> list[UnitDtypeProfile]:
        if dtype not in self.dtypes:
            raise ProfileMissingError(
                f"profile of '{self.model}' has no {dtype} figures (dtypes present: "
                f"{list(self.dtypes)}); run `edgesplit profile --dtype {self.dtype},{dtype}`"
            )
        rows = [u.figures(dtype) for u in self.units]
        assert all(r is not None for r in rows)  # guaranteed by `dtypes`
        return [r for r in rows if r is not None]

    def digest(self) -> str:
        return content_hash(self)

    def with_derived_kind(self, name: str, relative_to: str, slowdown: float) -> ModelProfile:
        """A new profile in which kind `name` takes `relative_to`'s times x `slowdown`.

        `relative_to = "host"` names the only kind of a single-kind (host-measured) profile.
        """
        if relative_to == "host" and "host" not in self.device_kinds:  # a kind named "host" wins
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
            for figures in (unit.get("by_dtype") or {}).values():
                if relative_to in figures["time_s"]:
                    figures["time_s"][name] = figures["time_s"][relative_to] * slowdown
        # Re-validate (never model_copy: it would carry the cached kinds of the old profile).
        return ModelProfile.model_validate(data)


def batch_ratio(points: Sequence[tuple[int, float]], batch: float) -> float:
    """A decode step's time with `batch` rows over its time with one: linear between the
    measured (batch, ratio) `points` and (1, 1) (implied; a measured batch-1 point is ignored),
    past the last point on the last segment's slope; 1 for one row or without points. The one
    batch model of the generation planner and of emulated decode stages."""
    table = sorted({1: 1.0, **{b: r for b, r in points if b != 1}}.items())
    if batch <= 1 or len(table) == 1:
        return 1.0
    below = [p for p in table if p[0] <= batch][-1]
    above = next((p for p in table if p[0] > batch), None)
    if above is None:  # past the last measurement: the last segment's slope
        below, above = table[-2], table[-1]
    (b0, r0), (b1, r1) = below, above
    return r0 + (batch - b0) * (r1 - r0) / (b1 - b0)


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
            for dtype, figures in (unit.by_dtype or {}).items():
                into = (merged.get("by_dtype") or {}).get(dtype)
                if into is None:
                    merged["by_dtype"] = {
                        **(merged.get("by_dtype") or {}),
                        dtype: figures.model_dump(),
                    }
                else:
                    into["time_s"].update(figures.time_s)
                    if figures.cpu_time_s:
                        into["cpu_time_s"] = {
                            **(into.get("cpu_time_s") or {}),
                            **figures.cpu_time_s,
                        }
    data["source"] = "merged: " + "; ".join(p.source for p in profiles)
    return ModelProfile.model_validate(data)
