"""The survey's probe: the actor body that measures one device in place (issue 18). Owns unit
timing in full passes, the runtime's per-micro-batch cost on a real `StageWorker`, decode and
prefill timing, and both ends of a link probe. Torch and models are imported inside its methods
(testbed may import them); never ray (testbed/survey.py makes it an actor) or planners.

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
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgesplit.errors import DeviceUnavailableError
from edgesplit.runtime.transport import Frame, TcpConnection, TcpListener, connect, new_run_key

__all__ = ["Probe"]

_CHUNK_BYTES = 256 * 1024


# -- the probe actor (runs on each device's node) ------------------------------------------------
class Probe:
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
        from edgesplit.profile.generation import measure_generation_units

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
            link=(None, 1e-3),  # a sender-side delay, as on the testbed (its writer thread)
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
            self._listener = TcpListener(self.ip)
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
