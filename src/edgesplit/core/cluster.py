"""Devices, links and clusters, read from a human-written `cluster.toml`.

Owns `DeviceSpec`, `LinkSpec`, `Cluster` and link lookup with defaults and per-pair overrides.
Units are SI and in the field names (MB = 1e6 bytes, Mbps = 1e6 bit/s). No torch, no ray.
Errors speak the file's words: one line per problem, each entry named as written
(`device 'pi0' (2nd [[devices]])`), with the nearest valid key, device or kind.
"""

from __future__ import annotations

import difflib
import functools
import tomllib
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails

from edgesplit.core.schema import FrozenModel, content_hash, format_problems, validate_as
from edgesplit.errors import ConfigError, ProfileMissingError
from edgesplit.units import mb_to_bytes, mbps_to_bytes_per_s, ms_to_s

__all__ = [
    "Cluster",
    "DerivedKind",
    "DeviceSpec",
    "LinkDefaults",
    "LinkSpec",
    "load_cluster",
]

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
        # Every problem at once, one per line (load_cluster shows each as its own problem).
        names = [d.name for d in self.devices]
        problems = []
        for name in sorted({n for n in names if names.count(n) > 1}):
            where = _ordinals([i for i, n in enumerate(names) if n == name])
            problems.append(
                f"device name '{name}' is used by the {where} [[devices]]; names must be unique"
            )
        if self.source not in names:
            problems.append(
                f"source '{self.source}' is not a device{_did_you_mean(self.source, names)} "
                f"The devices are {_quoted(names)}; add it under [[devices]] or set source to "
                "one of them"
            )
        for i, link in enumerate(self.links):
            where = f"link {link.a}-{link.b} ({_ordinal(i)} [[links]])"
            for end in dict.fromkeys((link.a, link.b)):
                if end not in names:
                    problems.append(
                        f"{where} names unknown device '{end}'{_did_you_mean(end, names)} "
                        f"The devices are {_quoted(names)}"
                    )
            if link.a == link.b:
                problems.append(f"{where} joins a device to itself; a and b must differ")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def check_kinds(self, profile_kinds: Sequence[str], model: str) -> tuple[str, ...]:
        """Check that every device kind has times once the [[kinds]] table is derived from a
        profile of `model` measured on `profile_kinds`, the way `api.prepare_profile` derives
        it (`relative_to = "host"`: the profile's only kind, unless one is named "host").

        Raises ProfileMissingError naming each [[kinds]] or [[devices]] entry at fault, with
        the nearest known kind; call it before deriving, so no derived kind is taken for measured.
        A [[kinds]] entry named like a measured kind is refused: deriving it would replace the
        measurement (a board's profile with examples/cluster.toml: rpi4 = "host" x 6 = 6 x rpi4).

        Returns notes for the user (the caller shows them): `relative_to = "host"` bound to a
        measured kind that is not this host's (neither "host" nor "host-<cpu>-<n>c", the names
        `edgesplit profile` gives a host without --device-kind), e.g. a profile made on a board.
        """
        measured = list(profile_kinds)
        known = list(measured)
        ambiguous: list[int] = []
        problems: list[str] = []
        host_kind = measured[0] if len(measured) == 1 and "host" not in measured else None
        for i, kind in enumerate(self.kinds):
            rel = kind.relative_to
            if kind.name in measured:
                source = f"{rel} x {kind.slowdown:g}"
                if rel == "host" and host_kind is not None:
                    source += f", where host = the profile's kind '{host_kind}'"
                problems.append(
                    f"kind '{kind.name}' ({_ordinal(i)} [[kinds]]) is measured in profile "
                    f"'{model}' and derived in [[kinds]] ({source}); remove the [[kinds]] entry "
                    "to use the measurement, or give the derived kind another name"
                )
            if rel == "host" and len(measured) != 1 and "host" not in known:
                ambiguous.append(i)
            elif rel != "host" and rel not in known:
                later = [k.name for k in self.kinds[i + 1 :]]
                host = ["host"] if len(measured) == 1 and "host" not in known else []
                fix = (
                    f"; '{rel}' is defined further down: move it above"
                    if rel in later
                    else f"{_did_you_mean(rel, known + host)} Known kinds: {_quoted(known + host)}"
                )
                problems.append(
                    f"kind '{kind.name}' ({_ordinal(i)} [[kinds]]): relative_to = '{rel}' "
                    f"is not a kind of profile '{model}'{fix}"
                )
            known.append(kind.name)  # even when broken: its devices are not at fault
        if ambiguous:
            entries = ", ".join(f"'{self.kinds[i].name}'" for i in ambiguous)
            plural = "kinds" if len(ambiguous) > 1 else "kind"
            problems.insert(
                0,
                f"{plural} {entries} ({_ordinals(ambiguous)} [[kinds]]): relative_to = 'host' "
                f"is ambiguous: profile '{model}' was measured on {len(measured)} kinds "
                f"{_quoted(measured)}; set relative_to to one of them",
            )
        derived = [k.name for k in self.kinds]
        for kind_name in dict.fromkeys(d.kind for d in self.devices):
            if kind_name in known:
                continue
            at = [i for i, d in enumerate(self.devices) if d.kind == kind_name]
            who = ", ".join(f"'{self.devices[i].name}'" for i in at)
            from_table = f"; from [[kinds]]: {_quoted(derived)}" if derived else ""
            problems.append(
                f"device{'s' if len(at) > 1 else ''} {who} ({_ordinals(at)} [[devices]]): "
                f"kind '{kind_name}' has no times in profile '{model}'"
                f"{_did_you_mean(kind_name, known)} Known kinds: measured "
                f"{_quoted(measured)}{from_table}. Profile the model on that kind "
                "(edgesplit profile) or add it under [[kinds]] with relative_to and slowdown"
            )
        if problems:
            raise ProfileMissingError(
                format_problems(f"cluster kinds vs profile '{model}'", problems)
            )
        bound = [k.name for k in self.kinds if k.relative_to == "host"]
        if host_kind is None or not bound or host_kind.startswith("host-"):
            return ()
        return (
            f"relative_to 'host' = the profile's kind '{host_kind}' (profile '{model}'): "
            f"[[kinds]] {_quoted(bound)} are the {host_kind} times x their slowdown",
        )

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
    if path.is_dir():
        raise ConfigError(
            f"{path} is a directory; give the cluster file, e.g. {path / 'cluster.toml'}"
        )
    if not path.is_file():
        raise ConfigError(
            f"cluster file not found: {path}; check the path (cwd is {Path.cwd()}) or start "
            "from examples/cluster.toml"
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    return validate_as(
        Cluster,
        data,
        str(path),
        where=functools.partial(_where, data=data),
        special=_toml_shape,
    )


# ---- error messages in the file's own words (core.schema.format_validation_error's hooks) ------

_ARRAY_TABLES = ("devices", "kinds", "links")


def _toml_shape(item: ErrorDetails) -> str | None:
    """A top-level table missing or written in the wrong TOML form."""
    loc, value = tuple(item["loc"]), item.get("input")
    if len(loc) != 1:
        return None
    if loc[0] in _ARRAY_TABLES and item["type"] in ("missing", "too_short"):
        return f"no [[{loc[0]}]] table; add at least one"
    if loc[0] in _ARRAY_TABLES and isinstance(value, dict):
        return f"[{loc[0]}] is a single table; write each entry as its own [[{loc[0]}]] table"
    if loc[0] == "defaults" and isinstance(value, list):
        return "[[defaults]] is a list of tables; write one [defaults] table"
    return None


def _where(table: tuple[int | str, ...], data: Any) -> str:
    """`device 'pi0' (2nd [[devices]])`, `[defaults]`, or "" for the top level."""
    if not table:
        return ""
    if table == ("defaults",):
        return "[defaults]"
    if len(table) < 2 or not isinstance(table[1], int):
        return ".".join(str(p) for p in table)
    section, index = str(table[0]), table[1]
    entries = data.get(section) if isinstance(data, dict) else None
    entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
    place = f"{_ordinal(index)} [[{section}]]"
    if isinstance(entry, dict):
        if (
            section == "links"
            and isinstance(entry.get("a"), str)
            and isinstance(entry.get("b"), str)
        ):
            return f"link {entry['a']}-{entry['b']} ({place})"
        name = entry.get("name")
        if section != "links" and isinstance(name, str) and name:
            return f"{section[:-1]} '{name}' ({place})"
    return place


def _ordinal(index: int) -> str:
    """0 -> "1st", 1 -> "2nd", 10 -> "11th": the count a reader of the file uses."""
    n = index + 1
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _ordinals(indexes: Sequence[int]) -> str:
    """[1] -> "2nd", [1, 4] -> "2nd and 5th", [0, 1, 2] -> "1st to 3rd"."""
    words = [_ordinal(i) for i in indexes]
    if len(words) > 2 and list(indexes) == list(range(indexes[0], indexes[-1] + 1)):
        return f"{words[0]} to {words[-1]}"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" and {words[-1]}"


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names) or "(none)"


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    """ "; did you mean 'x'?" for the nearest choice, else "." (ends the sentence either way)."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else "."
