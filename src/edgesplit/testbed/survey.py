"""Survey a running Ray cluster: profile the model's units on every device in place and measure
every pair's link with the runtime's own transport; the result becomes `cluster.toml` +
`profile.json` (issue 18). Owns the options, the measurements, the files and the drivers.

One probe actor per device (testbed/survey_probe.py: how each device is measured, see its
[Note: as the runtime runs it] and [Note: throttled timing]), pinned to the node that carries
the device's resource (as stages are); Ray is reached only through runtime/cluster.py.
"""

from __future__ import annotations

import contextlib
import logging
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults, LinkSpec, load_cluster
from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.core.schema import FrozenModel, write_json_file
from edgesplit.errors import ConfigError, DeviceUnavailableError
from edgesplit.runtime.cluster import RaySession, StageActor, ray_status, remote_class
from edgesplit.runtime.config import RuntimeConfig
from edgesplit.testbed.survey_probe import Probe

__all__ = [
    "DeviceMeasurement",
    "LinkMeasurement",
    "SurveyOptions",
    "SurveyProgress",
    "SurveyResult",
    "cluster_toml",
    "group_kinds",
    "survey",
    "survey_generation",
    "write_survey",
]

logger = logging.getLogger(__name__)
SurveyProgress = Callable[[str, int, int, str], None]
"""progress(phase, done, total, detail): phase is "profile" or "links"."""


class SurveyOptions(FrozenModel):
    """How hard the survey measures. Defaults take ~1 s per unit per device and ~1.5 s per pair."""

    batch_size: Annotated[int, Field(ge=1)] = 1
    seq_len: Annotated[int, Field(ge=1)] | None = None
    min_window_s: Annotated[float, Field(gt=0)] = 1.0  # [Note: throttled timing]
    min_repeats: Annotated[int, Field(ge=1)] = 3
    warmup: Annotated[int, Field(ge=0)] = 1
    link_seconds: Annotated[float, Field(gt=0)] = 1.0
    num_pings: Annotated[int, Field(ge=1)] = 20
    kind_tolerance: Annotated[float, Field(ge=0)] = 0.15  # devices this close share a kind
    # [Note: as the runtime runs it]: seconds of stage traffic per device for the runtime's own
    # per-micro-batch cost (0: not measured, no stage_overhead_ms in cluster.toml).
    overhead_window_s: Annotated[float, Field(ge=0)] = 2.0
    heartbeat_period_s: Annotated[float, Field(gt=0)] = 0.25  # pings while profiling, as stages get
    parallel_profiles: bool = True
    timeout_s: Annotated[float, Field(gt=0)] = 1800.0


class DeviceMeasurement(FrozenModel):
    device: str
    ip: str
    memory_mb: float
    memory_source: str  # "declared by the node (EDGESPLIT_DEVICE_MEMORY_MB)" or "MemAvailable"
    cpu_model: str
    cpu_share: float  # CPU seconds per wall second one busy thread got (quota, contention)
    unit_times_s: tuple[float, ...]
    total_s: float
    stage_overhead_s: float = 0.0  # the runtime's own cost per micro-batch and stage, in place
    overhead_cpu_s: float = 0.0  # of which CPU seconds (stage threads + executor around a unit)


class LinkMeasurement(FrozenModel):
    a: str
    b: str
    bandwidth_mbps: float  # goodput of the transport's frames (payload bits / s)
    latency_ms: float  # half the median round trip of a small frame
    rtt_min_ms: float
    num_bytes: int
    seconds: float


class SurveyResult(FrozenModel):
    model: str
    devices: tuple[DeviceMeasurement, ...]
    links: tuple[LinkMeasurement, ...]
    kinds: dict[str, str]  # device -> kind
    cluster: Cluster
    profile: ModelProfile


# -- pure helpers --------------------------------------------------------------------------------
def _slug(cpu_model: str) -> str:
    name = re.sub(r"\(r\)|\(tm\)|@.*$", "", cpu_model.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return re.sub(r"-(processor|cpu|with)(-.*)?$", "", slug)[:24].strip("-") or "cpu"


def group_kinds(devices: Sequence[DeviceMeasurement], tolerance: float) -> dict[str, str]:
    """Device -> kind: devices whose total unit time is within `tolerance` of the fastest of
    their group share a kind, named after the CPU and the group's median CPU share.

    Example: totals 1.0, 1.05, 2.0 s at tolerance 0.15 -> two kinds ({0, 1} and {2}).
    """
    ordered = sorted(devices, key=lambda d: (d.total_s, d.device))
    groups: list[list[DeviceMeasurement]] = []
    for device in ordered:
        if groups and device.total_s <= groups[-1][0].total_s * (1 + tolerance):
            groups[-1].append(device)
        else:
            groups.append([device])
    kinds: dict[str, str] = {}
    used: set[str] = set()
    for group in groups:
        share = statistics.median(d.cpu_share for d in group)
        name = f"{_slug(group[0].cpu_model)}-{share:.2f}cpu"
        suffix = 2
        while name in used:
            name = f"{_slug(group[0].cpu_model)}-{share:.2f}cpu-{suffix}"
            suffix += 1
        used.add(name)
        for device in group:
            kinds[device.device] = name
    return kinds


def _merged_profile(
    raw: dict[str, dict[str, Any]],
    kinds: dict[str, str],
    batch_size: int,
    notes: str,
) -> ModelProfile:
    first = next(iter(raw.values()))
    by_kind: dict[str, list[str]] = {}
    for device, kind in kinds.items():
        by_kind.setdefault(kind, []).append(device)
    units = []
    for index, row in enumerate(first["units"]):
        time_s = {
            k: float(np.mean([raw[d]["units"][index]["time_s"] for d in ds]))
            for k, ds in by_kind.items()
        }
        cpu_s = {
            k: float(np.mean([raw[d]["units"][index]["cpu_time_s"] for d in ds]))
            for k, ds in by_kind.items()
        }
        units.append(
            UnitProfile(
                name=row["name"],
                param_bytes=row["param_bytes"],
                output_bytes=row["output_bytes"],
                time_s=time_s,
                cpu_time_s=cpu_s,
                peak_memory_bytes=row["peak_memory_bytes"],
            )
        )
    return ModelProfile(
        model=first["model"],
        batch_size=batch_size,
        input_bytes=first["input_bytes"],
        units=tuple(units),
        source="edgesplit cluster survey: mean over >= the window of back-to-back runs per unit, "
        "in place on each device; times per kind = mean over the kind's devices",
        notes=notes,
    )


def _survey_cluster(
    devices: Sequence[DeviceMeasurement],
    links: Sequence[LinkMeasurement],
    kinds: dict[str, str],
    source: str,
) -> Cluster:
    bandwidth = statistics.median(lk.bandwidth_mbps for lk in links) if links else 1000.0
    latency = statistics.median(lk.latency_ms for lk in links) if links else 0.0
    return Cluster(
        source=source,
        defaults=LinkDefaults(bandwidth_mbps=bandwidth, latency_ms=latency),
        devices=tuple(
            DeviceSpec(
                name=d.device,
                kind=kinds[d.device],
                memory_mb=d.memory_mb,
                stage_overhead_ms=round(d.stage_overhead_s * 1e3, 3) or None,
            )
            for d in devices
        ),
        links=tuple(
            LinkSpec(a=lk.a, b=lk.b, bandwidth_mbps=lk.bandwidth_mbps, latency_ms=lk.latency_ms)
            for lk in links
        ),
    )


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(round(float(value), 4)) if isinstance(value, float) else str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def cluster_toml(cluster: Cluster, header: str = "") -> str:
    """`cluster` as a cluster.toml that `load_cluster` reads back to an equal cluster."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append(f"source = {_toml_value(cluster.source)}")
    lines += ["", "[defaults]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in cluster.defaults.model_dump().items()]
    for device in cluster.devices:
        lines += ["", "[[devices]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in device.model_dump().items()]
    for link in cluster.links:
        lines += ["", "[[links]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in link.model_dump().items()]
    return "\n".join(lines) + "\n"


def write_survey(result: SurveyResult, out_dir: Path, header: str = "") -> tuple[Path, Path]:
    """Write `out_dir/cluster.toml` and `out_dir/profile.json`; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster_path = out_dir / "cluster.toml"
    tmp = cluster_path.with_suffix(".toml.tmp")
    tmp.write_text(cluster_toml(result.cluster, header))
    tmp.replace(cluster_path)
    profile_path = write_json_file(result.profile, out_dir / "profile.json")
    return cluster_path, profile_path


# -- the driver ----------------------------------------------------------------------------------
@dataclass
class _Device:
    name: str
    ip: str
    actor: StageActor


def _previous_source(out_dir: Path | None, names: Sequence[str]) -> str | None:
    if out_dir is None or not (out_dir / "cluster.toml").is_file():
        return None
    with contextlib.suppress(ConfigError):
        previous = load_cluster(out_dir / "cluster.toml").source
        if previous in names:
            return previous
    return None


def survey(
    address: str,
    spec: Any,
    *,
    options: SurveyOptions | None = None,
    source: str | None = None,
    devices: Sequence[str] | None = None,
    out_dir: Path | None = None,
    progress: SurveyProgress | None = None,
) -> SurveyResult:
    """Measure the cluster at `address` for model `spec` (an `edgesplit.models.ModelSpec`).

    Args:
        address: HEAD_IP:PORT of a Ray cluster whose device nodes carry a resource named after
            their device (`edgesplit cluster up --device`, or `edgesplit testbed up`).
        spec: the model to profile (a preset or a checkpoint directory's spec).
        options: measurement knobs.
        source: the device requests enter at (default: the previous survey's in `out_dir`,
            else the first device by name).
        devices: survey only these (default: every device resource of the cluster).
        out_dir: where a previous survey may be (only to keep its source).
        progress: progress(phase, done, total, detail).

    Returns:
        The measurements, the device kinds and the cluster and merged profile built from them.

    Raises:
        DeviceUnavailableError: no device nodes, or a probe failed or timed out.
    """
    options = options or SurveyOptions()
    say = progress or (lambda *_: None)
    config = RuntimeConfig(ray_address=address, placement="resource")
    session = RaySession.open(config, [])
    probes: list[_Device] = []
    try:
        nodes = [n for n in ray_status(address)["nodes"] if n["alive"]]
        found = {d: str(n["ip"]) for n in nodes for d in n["devices"]}
        names = sorted(devices) if devices else sorted(found)
        missing = [d for d in names if d not in found]
        if missing or not names:
            raise DeviceUnavailableError(
                f"no live Ray node carries device(s) {missing or '(none at all)'}; nodes carry "
                f"{sorted(found)}"
            )
        probe_class = remote_class(Probe)
        for name in names:
            handle = probe_class.options(
                num_cpus=0, max_concurrency=4, resources={name: 0.01}
            ).remote(name, found[name])
            probes.append(_Device(name, found[name], StageActor(name, handle, None)))
        infos = session.get([p.actor.call("info", 1.0) for p in probes], options.timeout_s)
        spec_data = spec.model_dump(mode="json")
        raw: dict[str, dict[str, Any]] = {}
        say("profile", 0, len(probes), "")
        args = (
            spec_data,
            options.batch_size,
            options.seq_len,
            options.min_window_s,
            options.min_repeats,
            options.warmup,
            options.overhead_window_s,
        )
        batches = [probes] if options.parallel_profiles else [[p] for p in probes]
        deadline = time.monotonic() + options.timeout_s
        for batch in batches:
            pending = {p.actor.call("profile", *args): p.name for p in batch}
            pings: list[Any] = []
            while pending:
                # Heartbeats as the runtime sends them to stages ([Note: as the runtime runs it]).
                pings = [p.actor.call("ping") for p in batch]
                ready = session.poll(list(pending), options.heartbeat_period_s)
                for ref in ready:
                    name = pending.pop(ref)
                    raw[name] = session.get(ref, 60)
                    say("profile", len(raw), len(probes), name)
                if time.monotonic() > deadline:
                    raise DeviceUnavailableError(
                        f"profiling on {sorted(pending.values())} did not finish within "
                        f"{options.timeout_s:g} s"
                    )
            session.poll(pings, 5.0)
        measured = tuple(
            DeviceMeasurement(
                device=p.name,
                ip=p.ip,
                memory_mb=float(info["memory_mb"]),
                memory_source=str(info["memory_source"]),
                cpu_model=str(info["cpu_model"]),
                cpu_share=float(info["cpu_share"]),
                unit_times_s=tuple(float(u["time_s"]) for u in raw[p.name]["units"]),
                total_s=float(sum(u["time_s"] for u in raw[p.name]["units"])),
                stage_overhead_s=float(raw[p.name]["stage_overhead_s"]),
                overhead_cpu_s=float(raw[p.name]["overhead_cpu_s"]),
            )
            for p, info in zip(probes, infos, strict=True)
        )
        addresses = {
            p.name: session.get(p.actor.call("serve_probe"), options.timeout_s) for p in probes
        }
        pairs = [(a, b) for i, a in enumerate(probes) for b in probes[i + 1 :]]
        links = []
        say("links", 0, len(pairs), "")
        for done, (a, b) in enumerate(pairs, start=1):
            figures = session.get(
                a.actor.call(
                    "measure_link",
                    addresses[b.name],
                    options.link_seconds,
                    options.num_pings,
                    60.0,
                ),
                options.link_seconds * 20 + 120,
            )
            links.append(
                LinkMeasurement(
                    a=a.name,
                    b=b.name,
                    bandwidth_mbps=figures["bandwidth_bytes_per_s"] * 8 / 1e6,
                    latency_ms=figures["latency_s"] * 1e3,
                    rtt_min_ms=figures["rtt_min_s"] * 1e3,
                    num_bytes=int(figures["num_bytes"]),
                    seconds=figures["seconds"],
                )
            )
            say("links", done, len(pairs), f"{a.name}-{b.name}")
    except TimeoutError as e:
        raise DeviceUnavailableError(f"a survey probe timed out: {e}") from e
    finally:
        for p in probes:
            with contextlib.suppress(Exception):
                session.get(p.actor.call("close"), 10)
            session.kill(p.actor)
        probes.clear()
        session.close()
    kinds = group_kinds(measured, options.kind_tolerance)
    chosen = source or _previous_source(out_dir, names) or names[0]
    if chosen not in names:
        raise ConfigError(f"source '{chosen}' is not a surveyed device; devices: {names}")
    from edgesplit.models.spec import default_seq_len

    seq_len = options.seq_len or default_seq_len(spec)
    notes = "" if spec.family in ("vit", "deit") else f"seq_len={seq_len}"
    profile = _merged_profile(raw, kinds, options.batch_size, notes)
    return SurveyResult(
        model=profile.model,
        devices=measured,
        links=tuple(links),
        kinds=kinds,
        cluster=_survey_cluster(measured, links, kinds, chosen),
        profile=profile,
    )


def survey_generation(
    address: str,
    spec: Any,
    devices: Sequence[str],
    *,
    prompt_length: int = 32,
    cache_length: int = 128,
    repeats: int = 5,
    timeout_s: float = 1800.0,
) -> dict[str, dict[str, Any]]:
    """Decode/prefill unit profiles of a decoder measured in place on each of `devices`
    ([Note: throttled generation timing]); device -> {decode, prefill: ModelProfile (times
    under the device's own name, already divided by its CPU share), kv_bytes_per_token,
    cpu_share}. Devices profile at the same time, as they decode."""
    from edgesplit.core.profile import ModelProfile as Profile

    config = RuntimeConfig(ray_address=address, placement="resource")
    session = RaySession.open(config, list(devices))
    probe_class = remote_class(Probe)
    actors = [
        StageActor(
            name,
            probe_class.options(num_cpus=0, max_concurrency=4, resources={name: 0.01}).remote(
                name, ""
            ),
            None,
        )
        for name in devices
    ]
    out: dict[str, dict[str, Any]] = {}
    try:
        refs = [
            a.call("generation", spec.model_dump(mode="json"), prompt_length, cache_length, repeats)
            for a in actors
        ]
        for actor, raw in zip(actors, session.get(refs, timeout_s), strict=True):
            share = float(raw["cpu_share"])
            phases = {}
            for phase in ("decode", "prefill"):
                data = dict(raw[phase])
                data["units"] = [
                    {
                        **u,
                        "time_s": {actor.device: u["time_s"][actor.device] / share},
                        "cpu_time_s": {actor.device: u["time_s"][actor.device]},
                    }
                    for u in data["units"]
                ]
                data["source"] = f"edgesplit survey in place on {actor.device}: median / share"
                phases[phase] = Profile.model_validate(data)
            out[actor.device] = {
                **phases,
                "kv_bytes_per_token": list(raw["kv_bytes_per_token"]),
                "cpu_share": share,
            }
    except TimeoutError as e:
        raise DeviceUnavailableError(f"a generation probe timed out: {e}") from e
    finally:
        for actor in actors:
            session.kill(actor)
        session.close()
    return out
