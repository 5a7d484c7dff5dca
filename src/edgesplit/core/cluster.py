"""Devices, links and clusters, read from a human-written `cluster.toml`.

Owns `DeviceSpec`, `LinkSpec`, `Cluster` and link lookup with defaults and per-pair overrides.
Units are SI and in the field names (MB = 1e6 bytes, Mbps = 1e6 bit/s). No torch, no ray.
"""

from __future__ import annotations

import tomllib
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from edgesplit.core.schema import FrozenModel, content_hash, validate_as
from edgesplit.errors import ConfigError
from edgesplit.units import mb_to_bytes, mbps_to_bytes_per_s, ms_to_s

__all__ = ["Cluster", "DerivedKind", "DeviceSpec", "LinkDefaults", "LinkSpec", "load_cluster"]

PositiveFloat = Annotated[float, Field(gt=0)]


class LinkDefaults(FrozenModel):
    """Link parameters for every pair of devices without an override."""

    bandwidth_mbps: PositiveFloat = 1000.0
    latency_ms: Annotated[float, Field(ge=0)] = 0.0


class DeviceSpec(FrozenModel):
    """One device: a name, a kind (matched against profile times) and its memory."""

    name: Annotated[str, Field(min_length=1)]
    kind: Annotated[str, Field(min_length=1)]
    memory_mb: PositiveFloat
    failure_probability: Annotated[float, Field(ge=0, lt=1)] = 0.0
    num_threads: Annotated[int, Field(ge=1)] = 1
    # Fraction of one CPU core the device may use (0.1 for a Pi-class board); `edgesplit testbed`
    # turns it into a cgroup CFS quota. None: not emulated (a real board, or the whole host).
    cpu_quota: Annotated[float, Field(gt=0, le=64)] | None = None
    # The runtime's own cost per micro-batch of a stage on this device (receive, hand-offs,
    # send, acks), measured in place by `edgesplit cluster survey`; added once per stage.
    stage_overhead_ms: Annotated[float, Field(ge=0)] | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_quota(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        # Files and hashes of clusters without these stay exactly as before the fields existed.
        data: dict[str, object] = handler(self)
        for optional in ("cpu_quota", "stage_overhead_ms"):
            if data.get(optional) is None:
                data.pop(optional, None)
        return data

    @property
    def stage_overhead_s(self) -> float:
        return (self.stage_overhead_ms or 0.0) / 1e3

    @property
    def memory_bytes(self) -> float:
        return mb_to_bytes(self.memory_mb)


class LinkSpec(FrozenModel):
    """A per-pair override; symmetric unless `one_way`."""

    a: str
    b: str
    bandwidth_mbps: PositiveFloat
    latency_ms: Annotated[float, Field(ge=0)] = 0.0
    one_way: bool = False


class DerivedKind(FrozenModel):
    """A device kind whose unit times are another kind's times x `slowdown`.

    Lets one host profile stand in for devices that were never profiled (emulation, what-if
    studies). `relative_to = "host"` means the single kind a host profile was measured on.
    """

    name: Annotated[str, Field(min_length=1)]
    relative_to: Annotated[str, Field(min_length=1)]
    slowdown: PositiveFloat


class Cluster(FrozenModel):
    """A set of devices, the source device where requests enter, and the links between them."""

    source: str
    defaults: LinkDefaults = LinkDefaults()
    devices: Annotated[tuple[DeviceSpec, ...], Field(min_length=1)]
    links: tuple[LinkSpec, ...] = ()
    kinds: tuple[DerivedKind, ...] = ()

    @model_validator(mode="after")
    def _check_names(self) -> Cluster:
        names = [d.name for d in self.devices]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"device names must be unique; repeated: {duplicates}")
        if self.source not in names:
            raise ValueError(
                f"source '{self.source}' is not a device; devices are {names}. "
                "Add it under [[devices]] or set source to one of them"
            )
        for link in self.links:
            for end in (link.a, link.b):
                if end not in names:
                    raise ValueError(f"link {link.a}-{link.b} names unknown device '{end}'")
            if link.a == link.b:
                raise ValueError(f"link {link.a}-{link.b} joins a device to itself")
        return self

    @cached_property
    def device_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)

    @cached_property
    def _by_name(self) -> dict[str, DeviceSpec]:
        return {d.name: d for d in self.devices}

    @cached_property
    def _link_table(self) -> dict[tuple[str, str], tuple[float, float]]:
        table: dict[tuple[str, str], tuple[float, float]] = {}
        for link in self.links:
            value = (mbps_to_bytes_per_s(link.bandwidth_mbps), ms_to_s(link.latency_ms))
            table[(link.a, link.b)] = value
            if not link.one_way:
                table.setdefault((link.b, link.a), value)
        return table

    def device(self, name: str) -> DeviceSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigError(
                f"unknown device '{name}'; the cluster has {list(self.device_names)}"
            ) from None

    def link(self, a: str, b: str) -> tuple[float, float]:
        """(bandwidth_bytes_per_s, latency_s) from device a to device b."""
        override = self._link_table.get((a, b))
        if override is not None:
            return override
        return (
            mbps_to_bytes_per_s(self.defaults.bandwidth_mbps),
            ms_to_s(self.defaults.latency_ms),
        )

    def transfer_s(self, num_bytes: float, a: str, b: str) -> float:
        """latency + 8·x / bandwidth; zero on the same device (docs/architecture.md §4.1)."""
        if a == b:
            return 0.0
        bandwidth_bytes_per_s, latency_s = self.link(a, b)
        return latency_s + num_bytes / bandwidth_bytes_per_s

    def without(self, names: set[str]) -> Cluster:
        """A new cluster without the named devices (the source cannot be removed)."""
        if self.source in names:
            raise ConfigError(f"cannot remove the source device '{self.source}'")
        keep = tuple(d for d in self.devices if d.name not in names)
        links = tuple(lk for lk in self.links if lk.a not in names and lk.b not in names)
        # Re-validate (never model_copy: it would carry cached lookups of the old device set).
        data = self.model_dump()
        data.update(devices=[d.model_dump() for d in keep], links=[lk.model_dump() for lk in links])
        return Cluster.model_validate(data)

    def digest(self) -> str:
        return content_hash(self)


def load_cluster(path: Path | str) -> Cluster:
    """Read a `cluster.toml` (see docs/architecture.md §3.2) into a validated `Cluster`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cluster file not found: {path}; see examples/cluster.toml")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    return validate_as(Cluster, data, str(path))
