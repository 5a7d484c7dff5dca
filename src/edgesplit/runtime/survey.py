"""Survey a running Ray cluster: profile the model's units on every device in place and measure
every pair's link with the runtime's own transport; the result becomes `cluster.toml` +
`profile.json` (issue 18).

One probe actor per device, pinned to the node that carries the device's resource (as stages
are); Ray is reached only through runtime/cluster.py. Torch and models are used inside the probe
(runtime may import them); never profile/ or planners.

[Note: throttled timing] A device under a CFS quota runs in bursts (e.g. 10 ms per 100 ms at 0.1
core), so the wall time of one short run measures the burst or a throttle stall, not the device.
Each unit's *CPU* time is measured (thread time), and the device's share of a core is the CPU
seconds the timing thread got per wall second over the whole window (≥ `min_window_s` per unit,
many quota periods): a unit's time is its CPU time / that share. The runtime's period averages
the same way over many micro-batches.

[Note: as the runtime runs it] The survey measures what a stage does, not a best case:
- units run in *full passes* over the model in order (a stage runs its units once per
  micro-batch, so the next unit's weights are not in cache from the previous call): timing one
  unit back-to-back measured 10-45 % less CPU than the same units inside a pass or a stage;
- the per-micro-batch cost of the runtime itself, in place (`stage_overhead_s`): a real
  `StageWorker` on the device receives, "computes" (zero-time executor) and forwards frames of
  the model's activation size through its own channel, credits and sender-side delay, while
  the probe feeds and drains it over loopback; the CPU of the stage's threads per micro-batch,
  plus what the forward executor adds around a unit (frame arrays to torch, the per-stage mask
  build), divided by the device's share. The cost model adds it once per stage
  (`DeviceSpec.stage_overhead_ms`); on a 0.1-core device it is tens of milliseconds.
- the driver pings every probe at the runtime's heartbeat period meanwhile, as it pings stages.

[Note: throttled generation timing] `survey_generation` runs the generation profiler
(`measure_generation_units`: per unit the *median* of a few decode steps and prefills) on each
device. A decode step's units take well under a quota burst, so the median run is an unthrottled
one: it is CPU time, not the device's wall time. Each figure is divided by the CPU share the
profiler's thread got over its whole run (CPU seconds / wall seconds), as unit times are above.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import statistics
import threading
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
from edgesplit.runtime.transport import Frame, TcpConnection, connect, listen, new_run_key

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
_CHUNK_BYTES = 256 * 1024


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


# -- the probe actor (runs on each device's node) ------------------------------------------------
class _Probe:
    """Actor body: information about its node, unit timing, and both ends of a link probe."""

    def __init__(self, device: str, ip: str) -> None:
        self.device = device
        self.ip = ip
        self._listener: Any = None
        self._stop = threading.Event()

    def info(self, spin_s: float) -> dict[str, Any]:
        declared = os.environ.get("EDGESPLIT_DEVICE_MEMORY_MB")
        if declared:
            memory_mb, source = float(declared), "declared by the node (EDGESPLIT_DEVICE_MEMORY_MB)"
        else:
            memory_mb, source = _available_memory_mb(), "MemAvailable of the node"
        return {
            "memory_mb": memory_mb,
            "memory_source": source,
            "cpu_model": _cpu_model(),
            "cpu_share": _cpu_share(spin_s),
        }

    def ping(self) -> float:
        """What a stage answers to the driver's heartbeat (the survey pings as the runtime does)."""
        return time.time()

    def profile(
        self,
        spec_data: dict[str, Any],
        batch_size: int,
        seq_len: int | None,
        min_window_s: float,
        min_repeats: int,
        warmup: int,
        overhead_window_s: float = 0.0,
    ) -> dict[str, Any]:
        """Unit times in full passes ([Note: as the runtime runs it]) and the runtime's
        per-micro-batch cost on this device (`overhead_window_s` > 0)."""
        import torch

        from edgesplit.models import ModelSpec
        from edgesplit.models.build import build_model, example_input
        from edgesplit.models.units import crossing, make_units

        torch.set_num_threads(1)
        spec = ModelSpec.model_validate(spec_data)
        units = make_units(build_model(spec), spec.family)
        first = example_input(spec, batch_size, seq_len=seq_len)
        input_bytes = _activation_bytes(first)
        acts = [first]
        with torch.inference_mode():
            for _ in range(max(warmup, 1)):
                acts = [first]
                for unit in units:
                    acts.append(unit(acts[-1]))
            cpu = np.zeros(len(units))
            passes = 0
            budget_s = min_window_s * len(units)
            cpu_start, start = time.thread_time(), time.perf_counter()
            while passes < min_repeats or time.perf_counter() - start < budget_s:
                act = first
                for index, unit in enumerate(units):
                    before = time.thread_time()
                    act = unit(act)
                    cpu[index] += time.thread_time() - before
                passes += 1
            wall = time.perf_counter() - start
            share = max((time.thread_time() - cpu_start) / wall, 1e-6)
        cpu /= passes
        rows: list[dict[str, Any]] = []
        for index, unit in enumerate(units):
            params = sum(p.numel() * p.element_size() for p in unit.parameters())
            sent = _activation_bytes(crossing(acts[index + 1]))
            rows.append(
                {
                    "name": unit.unit_name,
                    "param_bytes": float(params),
                    "output_bytes": float(sent),
                    "time_s": float(cpu[index] / share),
                    "cpu_time_s": float(cpu[index]),
                    "peak_memory_bytes": float(params + _activation_bytes(acts[index]) + sent),
                }
            )
        overhead_cpu = 0.0
        if overhead_window_s > 0 and len(units) > 2:
            boundary = int(statistics.median(float(r["output_bytes"]) for r in rows[:-1]))
            overhead_cpu = self._channel_cpu(boundary, overhead_window_s)
            overhead_cpu += _executor_cpu(spec, units, acts, overhead_window_s)
        return {
            "model": spec.checkpoint or spec.preset,
            "input_bytes": float(input_bytes),
            "units": rows,
            "cpu_share": share,
            "passes": passes,
            "overhead_cpu_s": overhead_cpu,
            "stage_overhead_s": overhead_cpu / share,
        }

    def generation(
        self, spec_data: dict[str, Any], prompt_length: int, cache_length: int, repeats: int
    ) -> dict[str, Any]:
        """Decode and prefill unit times in place ([Note: throttled generation timing])."""
        import torch

        from edgesplit.models import ModelSpec
        from edgesplit.runtime.generation_profile import measure_generation_units

        torch.set_num_threads(1)
        spec = ModelSpec.model_validate(spec_data)
        cpu_start, start = time.thread_time(), time.perf_counter()
        decode, prefill, kv = measure_generation_units(
            spec,
            spec.checkpoint or spec.preset,
            device_kind=self.device,
            prompt_length=prompt_length,
            cache_length=cache_length,
            repeats=repeats,
        )
        share = max((time.thread_time() - cpu_start) / (time.perf_counter() - start), 1e-6)
        return {
            "decode": decode.model_dump(mode="json"),
            "prefill": prefill.model_dump(mode="json"),
            "kv_bytes_per_token": kv,
            "cpu_share": share,
        }

    def _channel_cpu(self, num_bytes: int, window_s: float) -> float:
        """CPU seconds per micro-batch of a real StageWorker's threads (channel, credits,
        sender-side delay, acks) around a zero-time executor, fed and drained over loopback."""
        from edgesplit.runtime.channel import Inbound
        from edgesplit.runtime.stage import StageSpec, StageWorker

        key = new_run_key()
        host = "127.0.0.1"
        sink = Inbound(host, key, _ack_frame, name="survey-sink")
        worker = StageWorker(self.device, host)
        spec = StageSpec(
            index=0,
            device=self.device,
            start=1,
            end=2,
            epoch=1,
            compute="emulated",
            run_key_hex=key.hex(),
            input_bytes=num_bytes,
            output_bytes=num_bytes,
            bandwidth_bytes_per_s=None,
            latency_s=1e-3,  # a sender-side delay, as on the testbed (its writer thread)
            max_in_flight=2,
        )
        payload = {"hidden": np.zeros(num_bytes, dtype=np.uint8)}
        try:
            address = worker.configure(spec.model_dump())
            worker.start((sink.address[0], int(sink.address[1])))
            conn = connect((str(address[0]), int(address[1])), 10.0, key=key)
            with contextlib.closing(conn):
                conn.send(Frame("hello", epoch=1, meta={"from": "survey"}))
                in_flight = 0
                sent = 0
                marks: dict[int, float] = {}

                def feed(upto: int) -> None:
                    nonlocal in_flight, sent
                    while in_flight < 2 and sent < upto:
                        conn.send(Frame("data", sent, 1, 1, payload))
                        in_flight += 1
                        sent += 1

                done = 0
                start = time.perf_counter()
                measuring_from = None
                while True:
                    feed(done + 2)
                    frame = conn.recv()
                    if frame is None:
                        raise DeviceUnavailableError("the survey's stage closed its stream")
                    if frame.type != "ack":
                        continue
                    in_flight -= 1
                    done += 1
                    if done == 5:  # warmed up: start counting the stage's threads
                        measuring_from = done
                        marks = _stage_thread_cpu()
                        start = time.perf_counter()
                    if measuring_from is not None and (
                        time.perf_counter() - start >= window_s and done - measuring_from >= 10
                    ):
                        break
                after = _stage_thread_cpu()
            used = sum(after.get(t, 0.0) - marks.get(t, 0.0) for t in after)
            return used / (done - (measuring_from or 0))
        finally:
            worker.shutdown()
            sink.close()

    def serve_probe(self) -> list[Any]:
        """Listen on the node's address; answer pings and acknowledge bulk transfers."""
        if self._listener is None:
            self._listener = listen(self.ip)
            threading.Thread(target=self._accept, daemon=True).start()
        host, port = self._listener.address
        return [host, int(port)]

    def _accept(self) -> None:
        while not self._stop.is_set():
            conn = self._listener.accept(0.5)
            if conn is not None:
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: TcpConnection) -> None:
        received = 0
        with contextlib.closing(conn):
            while True:
                frame = conn.recv()
                if frame is None:
                    return
                if frame.type == "hello":
                    conn.send(Frame("ack", frame.request_id))
                    continue
                received += frame.num_bytes
                if frame.meta.get("last"):
                    conn.send(Frame("ack", frame.request_id, meta={"bytes": received}))
                    received = 0

    def measure_link(
        self, address: list[Any], seconds: float, num_pings: int, timeout_s: float
    ) -> dict[str, float]:
        """Round trips of small frames, then bulk frames for `seconds` and an acknowledgement."""
        conn = connect((str(address[0]), int(address[1])), timeout_s)
        with contextlib.closing(conn):
            rtts = []
            for index in range(num_pings):
                start = time.perf_counter()
                conn.send(Frame("hello", index))
                _expect_ack(conn)
                rtts.append(time.perf_counter() - start)
            chunk = np.zeros(_CHUNK_BYTES, dtype=np.uint8)
            sent = 0
            start = time.perf_counter()
            index = 0
            while time.perf_counter() - start < seconds:
                conn.send(Frame("data", index, tensors={"x": chunk}))
                sent += _CHUNK_BYTES
                index += 1
            conn.send(Frame("data", index, tensors={"x": chunk}, meta={"last": True}))
            sent += _CHUNK_BYTES
            ack = _expect_ack(conn)
            elapsed = time.perf_counter() - start
        if int(ack.meta.get("bytes", -1)) != sent:
            raise DeviceUnavailableError(
                f"link probe {self.device}->{address}: sent {sent} bytes, peer counted "
                f"{ack.meta.get('bytes')}"
            )
        rtt = statistics.median(rtts)
        # The last byte needs half a round trip to arrive and the ack another half.
        return {
            "bandwidth_bytes_per_s": sent / max(elapsed - rtt, 1e-9),
            "latency_s": rtt / 2,
            "rtt_min_s": min(rtts),
            "num_bytes": float(sent),
            "seconds": elapsed,
        }

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()


def _expect_ack(conn: TcpConnection) -> Frame:
    frame = conn.recv()
    if frame is None or frame.type != "ack":
        raise DeviceUnavailableError("the link probe's peer closed the stream or sent no ack")
    return frame


def _ack_frame(frame: Frame, conn: TcpConnection) -> None:
    """The survey's sink: acknowledge every data frame, as a downstream stage does."""
    if frame.type == "data":
        conn.send(Frame("ack", frame.request_id, epoch=frame.epoch))


def _stage_thread_cpu() -> dict[int, float]:
    """CPU seconds of this process's stage threads (named `stage…` by runtime/stage.py)."""
    out = {}
    for thread in threading.enumerate():
        if thread.name.startswith("stage") and thread.ident is not None:
            with contextlib.suppress(OSError, ProcessLookupError, OverflowError):
                clock = time.pthread_getcpuclockid(thread.ident)
                out[thread.ident] = time.clock_gettime(clock)
    return out


def _executor_cpu(spec: Any, units: Sequence[Any], acts: Sequence[Any], window_s: float) -> float:
    """CPU seconds the forward executor adds around one unit (frame arrays to torch and back,
    the mask a stage builds once): a one-unit stage vs the same unit, both back to back."""
    import torch

    from edgesplit.models.build import build_stage
    from edgesplit.models.units import crossing
    from edgesplit.runtime.executors import ForwardExecutor

    middle = range(1, len(units) - 1)
    index = min(middle, key=lambda i: _cpu_once(units[i], acts[i]))
    executor = ForwardExecutor(build_stage(spec, index, index + 1))
    arrays = {}
    for name, tensor in crossing(acts[index]).items():
        array = tensor.detach().contiguous().numpy().copy()
        array.flags.writeable = False  # as frames arrive (frombuffer)
        arrays[name] = array

    def mean_cpu(call: Callable[[], object]) -> float:
        call()
        runs = 0
        cpu_start, start = time.thread_time(), time.perf_counter()
        while runs < 3 or time.perf_counter() - start < window_s:
            call()
            runs += 1
        return (time.thread_time() - cpu_start) / runs

    with torch.inference_mode():
        alone = mean_cpu(lambda: units[index](acts[index]))
    in_executor = mean_cpu(lambda: executor.run(0, arrays, {}))
    return max(0.0, in_executor - alone)


def _cpu_once(unit: Any, act: Any) -> float:
    import torch

    with torch.inference_mode():
        before = time.thread_time()
        unit(act)
        return time.thread_time() - before


def _activation_bytes(act: Any) -> int:
    return int(sum(t.numel() * t.element_size() for t in act.values()))


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _available_memory_mb() -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e6
    return 1024.0


def _cpu_share(spin_s: float) -> float:
    cpu_start, start = time.thread_time(), time.perf_counter()
    while time.perf_counter() - start < spin_s:
        sum(range(2000))
    return (time.thread_time() - cpu_start) / (time.perf_counter() - start)


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
        probe_class = remote_class(_Probe)
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
    probe_class = remote_class(_Probe)
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
