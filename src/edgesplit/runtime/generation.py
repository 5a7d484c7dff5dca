"""Generative decoding across devices: the driver of a KV-cached stage pipeline.

Owns `GenerationPipeline` (launch one stage process per device, wire the chain driver -> stage 0
-> ... -> last stage -> driver over direct TCP streams, interleave many sequences, detect a dead
stage, replace it and replay), `GenerationRequest` / `SequenceResult` / `GenerationReport` and
the `WorkerLauncher` seam (`SubprocessLauncher`: one OS process per device on this machine; a Ray
launcher plugs in the same way through runtime/cluster.py). Never imports planners: re-planning
is an injected callable. docs/architecture.md §5.2 (decode).

[Note: the driver keeps the tokens] Stages keep only KV caches; the driver keeps every sequence's
tokens (prompt + generated). When a stage dies, a replacement (standby device, injected re-plan,
or a restart on the same device) gets an empty cache, every live sequence is replayed from
position 0 (one prefill of its tokens so far), and decoding continues. Because the last stage
picks tokens with `choose_token` (a function of logits, seed, sequence and position) the output
equals an uninterrupted run's, greedy or sampled. Steps carry a counter; an answer to a step the
driver has given up on is dropped, so no token is delivered twice.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field

from edgesplit.core.schema import FrozenModel
from edgesplit.errors import ConfigError, DeviceUnavailableError, EdgesplitError, TransportError
from edgesplit.runtime.emulation import LinkShaper
from edgesplit.runtime.generation_worker import GenerationStageConfig
from edgesplit.runtime.transport import Connection, Frame, TcpListener, connect, listen

__all__ = [
    "FailureEvent",
    "GenerationConfig",
    "GenerationPipeline",
    "GenerationReport",
    "GenerationRequest",
    "LinkFn",
    "Replanner",
    "SequenceResult",
    "StageAssignment",
    "SubprocessLauncher",
    "TokenCallback",
    "WorkerHandle",
    "WorkerLauncher",
]

logger = logging.getLogger(__name__)
_TICK_S = 0.02

StageAssignment = tuple[str, int, int]  # (device, start unit, end unit), half-open
Replanner = Callable[[Sequence[str]], Sequence[StageAssignment]]  # survivors -> new stages
LinkFn = Callable[[str, str], tuple[float, float] | None]  # (a, b) -> (bytes/s, latency s)
EmulationFn = Callable[[str, int, int], tuple[float, float]]  # -> (decode s, prefill s/token)
TokenCallback = Callable[[int, int], None]  # (sequence id, token)


class GenerationRequest(FrozenModel):
    """One sequence to continue: prompt token ids and how to pick the next ones."""

    prompt_ids: list[int] = Field(min_length=1)
    max_new_tokens: int = Field(ge=1, le=1_000_000)
    temperature: float = Field(default=0.0, ge=0)
    top_k: int = Field(default=0, ge=0)
    seed: int = 0
    stop_token_id: int | None = None


class SequenceResult(FrozenModel):
    sequence_id: int
    prompt_ids: list[int]
    new_ids: list[int]
    first_token_s: float  # submission -> first new token (prefill latency)
    time_per_token_s: float  # mean gap between consecutive new tokens (decode)
    finished: Literal["length", "stop"]


class FailureEvent(FrozenModel):
    device: str
    cause: str
    at_s: float  # since generation started
    detected_after_s: float  # death (if known) -> detection
    recovered_after_s: float  # detection -> first token after the replay
    replayed_tokens: int
    replacement: str


class GenerationReport(FrozenModel):
    sequences: list[SequenceResult]
    elapsed_s: float
    new_tokens: int
    tokens_per_s: float
    time_per_token_s: float  # mean over sequences
    failures: list[FailureEvent] = Field(default_factory=list)
    stages: list[dict[str, Any]] = Field(default_factory=list)


class GenerationConfig(FrozenModel):
    """How a generation pipeline runs. Durations carry their unit."""

    compute: Literal["real", "emulated"] = "real"
    max_concurrent: int = Field(default=4, ge=1, le=1024)  # sequences in flight
    host: str = "127.0.0.1"
    startup_timeout_s: float = Field(default=120.0, gt=0)
    control_timeout_s: float = Field(default=300.0, gt=0)  # stage builds on loaded hosts
    step_timeout_s: float = Field(default=60.0, gt=0)  # a step silent this long: stall
    standby_devices: tuple[str, ...] = ()
    restart_failed: bool = True  # no standby/re-planner: restart the stage on the same device
    num_threads: int = Field(default=1, ge=1)


# -- launching stage processes ---------------------------------------------------------------
class WorkerHandle(Protocol):
    device: str

    def alive(self) -> bool: ...

    def kill(self) -> None: ...

    @property
    def pid(self) -> int | None: ...


class WorkerLauncher(Protocol):
    def launch(
        self, device: str, driver_address: tuple[str, int], standby: bool = False
    ) -> WorkerHandle: ...


@dataclass
class _Process:
    device: str
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    @property
    def pid(self) -> int | None:
        return self.process.pid


@dataclass
class SubprocessLauncher:
    """Each device's stage in its own OS process on this machine (kill -9 is a real death)."""

    host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    preload: bool = True  # standbys import torch/transformers and warm up while they wait

    def launch(
        self, device: str, driver_address: tuple[str, int], standby: bool = False
    ) -> WorkerHandle:
        command = [
            sys.executable,
            "-m",
            "edgesplit.runtime.generation_worker",
            "--driver",
            f"{driver_address[0]}:{driver_address[1]}",
            "--device",
            device,
            "--host",
            self.host,
            *(["--preload"] if self.preload and standby else []),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", **self.env}
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
        return _Process(device, process)


# -- driver-side state -------------------------------------------------------------------------
@dataclass
class _Worker:
    device: str
    handle: WorkerHandle
    control: Connection
    pid: int


@dataclass
class _Sequence:
    sequence_id: int
    request: GenerationRequest
    tokens: list[int]
    submitted_s: float
    fed: int = 0  # tokens whose keys/values the stages hold
    step: int = -1  # counter of the step in flight; answers to older steps are dropped
    token_times_s: list[float] = field(default_factory=list)
    done: Literal["length", "stop"] | None = None

    @property
    def new_ids(self) -> list[int]:
        return self.tokens[len(self.request.prompt_ids) :]


class GenerationPipeline:
    """A chain of KV-cached stages, one process per device (see module docstring).

    Example:
        >>> with GenerationPipeline(spec, [("a", 0, 5), ("b", 5, 10)]) as pipe:  # doctest: +SKIP
        ...     report = pipe.generate([GenerationRequest(prompt_ids=[1, 2], max_new_tokens=8)])
    """

    def __init__(
        self,
        model_spec: Any,
        stages: Sequence[StageAssignment],
        config: GenerationConfig = GenerationConfig(),
        *,
        num_units: int | None = None,
        source: str | None = None,
        link: LinkFn | None = None,
        emulation: EmulationFn | None = None,
        hidden_size: int = 0,
        vocab_size: int = 0,
        launcher: WorkerLauncher | None = None,
        replanner: Replanner | None = None,
    ) -> None:
        if not stages:
            raise ConfigError("a generation pipeline needs at least one stage")
        self.model_spec = model_spec
        self.config = config
        self.stages: list[StageAssignment] = list(stages)
        self.num_units = num_units if num_units is not None else self.stages[-1][2]
        _check_stages(self.stages, self.num_units)
        self.source = source
        self.link = link
        self.emulation = emulation
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.launcher: WorkerLauncher = launcher or SubprocessLauncher(
            config.host, preload=config.compute == "real"
        )
        self.replanner = replanner
        if config.compute == "emulated" and emulation is None:
            raise ConfigError("compute='emulated' needs an emulation function (profiled times)")
        self._control_listener: TcpListener | None = None
        self._return_listener: TcpListener | None = None
        self._workers: dict[str, _Worker] = {}
        self._epoch = 0
        self._results: queue.Queue[Frame] = queue.Queue()
        self._source_conn: Connection | None = None
        self._source_wire: queue.Queue[tuple[float, Frame] | None] = queue.Queue()
        self._source_shaper: LinkShaper | None = None
        self._epoch_stop = threading.Event()
        self._spare = list(config.standby_devices)
        self._dead_since_s: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> GenerationPipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self._control_listener = listen(self.config.host)
        self._return_listener = listen(self.config.host)
        # Standby devices get a warm process now (imports done, no weights): a failover then
        # costs a stage build and a replay, not a process start.
        self._launch([*(d for d, _, _ in self.stages), *self._spare])
        self._configure_epoch()

    def close(self) -> None:
        self._stop_epoch()
        for worker in list(self._workers.values()):
            try:
                worker.control.send(Frame("hello", meta={"op": "shutdown"}))
                worker.control.recv()
            except (TransportError, OSError):
                pass
            worker.control.close()
            worker.handle.kill()
        self._workers.clear()
        for listener in (self._control_listener, self._return_listener):
            if listener is not None:
                listener.close()

    def worker_pid(self, device: str) -> int:
        return self._workers[device].pid

    def kill(self, device: str) -> None:
        """SIGKILL the stage process of `device` (fault injection for tests and benchmarks)."""
        self._dead_since_s[device] = time.time()
        os.kill(self._workers[device].pid, signal.SIGKILL)

    def restage(self, stages: Sequence[StageAssignment], *, link: LinkFn | None = None) -> None:
        """Re-split the model over running (or newly launched) devices; caches start empty.

        Devices left without a stage keep their warm process (standbys for later epochs).
        """
        _check_stages(stages, self.num_units)
        self._stop_epoch()
        self.stages = list(stages)
        if link is not None:
            self.link = link
        self._launch([d for d, _, _ in self.stages if d not in self._workers])
        self._configure_epoch()

    def _launch(self, devices: Sequence[str]) -> None:
        assert self._control_listener is not None
        address = self._control_listener.address
        handles = {d: self.launcher.launch(d, address, d in self._spare) for d in devices}
        deadline = time.time() + self.config.startup_timeout_s
        pending = set(devices)
        while pending:
            if time.time() > deadline:
                for handle in handles.values():
                    handle.kill()
                raise DeviceUnavailableError(
                    f"stage processes for {sorted(pending)} did not connect within "
                    f"{self.config.startup_timeout_s} s; check the worker's stderr"
                )
            dead = [d for d in pending if not handles[d].alive()]
            if dead:
                raise DeviceUnavailableError(f"stage process for {dead} exited during startup")
            conn = self._control_listener.accept(timeout_s=0.2)
            if conn is None:
                continue
            hello = conn.recv()
            if hello is None or hello.type != "hello":
                conn.close()
                continue
            device = str(hello.meta["device"])
            if device not in pending:
                conn.close()
                continue
            pending.discard(device)
            self._workers[device] = _Worker(device, handles[device], conn, int(hello.meta["pid"]))

    def _control(self, device: str, op: str, **meta: Any) -> dict[str, Any]:
        worker = self._workers[device]
        worker.control.send(Frame("hello", meta={"op": op, **meta}))
        reply = _recv_with_timeout(worker.control, self.config.control_timeout_s)
        if reply is None:
            raise _StageLostError(device, f"control stream closed during {op}")
        if reply.meta.get("error"):
            raise EdgesplitError(f"stage on '{device}' failed to {op}: {reply.meta['error']}")
        return dict(reply.meta)

    def _stage_config(self, index: int, device: str, start: int, end: int) -> dict[str, Any]:
        nxt = self.stages[index + 1][0] if index + 1 < len(self.stages) else self.source
        link = self.link(device, nxt) if self.link is not None and nxt is not None else None
        decode_s, prefill_s = self.emulation(device, start, end) if self.emulation else (0.0, 0.0)
        spec = self.model_spec.model_dump() if hasattr(self.model_spec, "model_dump") else None
        return asdict(
            GenerationStageConfig(
                index=index,
                device=device,
                start=start,
                end=end,
                num_units=self.num_units,
                epoch=self._epoch,
                compute=self.config.compute,
                model_spec=spec,
                hidden_size=self.hidden_size,
                vocab_size=self.vocab_size,
                decode_s=decode_s,
                prefill_s_per_token=prefill_s,
                bandwidth_bytes_per_s=None if link is None else link[0],
                latency_s=0.0 if link is None else link[1],
                num_threads=self.config.num_threads,
            )
        )

    def _configure_epoch(self) -> None:
        """Configure every stage for a new epoch and wire driver -> s0 -> ... -> sN -> driver."""
        self._epoch += 1
        addresses = [
            self._control(d, "configure", config=self._stage_config(i, d, s, e))["address"]
            for i, (d, s, e) in enumerate(self.stages)
        ]
        assert self._return_listener is not None
        chain = [*addresses[1:], list(self._return_listener.address)]
        for (device, _, _), target in zip(self.stages, chain, strict=True):
            self._control(device, "connect", address=target)
        returned = self._return_listener.accept(timeout_s=self.config.control_timeout_s)
        if returned is None:
            raise TransportError("the last stage did not connect back to the driver")
        self._epoch_stop = threading.Event()
        first = self.stages[0][0]
        link = self.link(self.source, first) if self.link and self.source else None
        self._source_shaper = LinkShaper(link[0], link[1]) if link is not None else None
        self._source_conn = connect((str(addresses[0][0]), int(addresses[0][1])), 10.0)
        self._source_wire = queue.Queue()
        stop, wire, conn = self._epoch_stop, self._source_wire, self._source_conn
        threading.Thread(target=self._read_results, args=(returned, stop), daemon=True).start()
        threading.Thread(target=self._write_source, args=(conn, wire, stop), daemon=True).start()

    def _stop_epoch(self) -> None:
        self._epoch_stop.set()
        self._source_wire.put(None)
        if self._source_conn is not None:
            self._source_conn.close()

    def _read_results(self, conn: Connection, stop: threading.Event) -> None:
        while not stop.is_set():
            frame = conn.recv()
            if frame is None:
                return
            if frame.type == "data":
                self._results.put(frame)
        conn.close()

    def _write_source(
        self, conn: Connection, wire: queue.Queue[tuple[float, Frame] | None], stop: threading.Event
    ) -> None:
        while not stop.is_set():
            item = wire.get()
            if item is None:
                return
            due_s, frame = item
            delay_s = due_s - time.time()
            if delay_s > 0 and stop.wait(delay_s):
                return
            try:
                conn.send(frame)
            except TransportError:
                return

    def _send_step(self, sequence: _Sequence, step: int) -> None:
        new = sequence.tokens[sequence.fed :]
        request = sequence.request
        frame = Frame(
            "data",
            sequence.sequence_id,
            0,
            self._epoch,
            {"input_ids": np.array([new], dtype=np.int64)},
            {
                "pos": sequence.fed,
                "step": step,
                "sampling": [request.temperature, request.top_k, request.seed],
            },
        )
        sequence.step = step
        sequence.fed = len(sequence.tokens)
        now = time.time()
        due_s = now
        if self._source_shaper is not None:
            due_s = self._source_shaper.due_s(frame.num_bytes + 64, now)
        self._source_wire.put((due_s, frame))

    # -- generation ------------------------------------------------------------------------------
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_token: TokenCallback | None = None,
        faults: Sequence[tuple[str, float]] = (),
    ) -> GenerationReport:
        """Run every request to completion, `max_concurrent` sequences interleaved.

        Args:
            requests: sequences to continue; sequence ids are their indices.
            on_token: called (sequence id, token) as each token is produced, in order per sequence.
            faults: (device, at_s) pairs: SIGKILL that device's stage `at_s` after the start
                (fault injection for tests and benchmarks; not part of the production config).

        Raises:
            DeviceUnavailableError: a stage died and nothing can replace it.
        """
        start_s = time.time()
        waiting = list(enumerate(requests))
        waiting.reverse()
        live: dict[int, _Sequence] = {}
        finished: dict[int, _Sequence] = {}
        failures: list[FailureEvent] = []
        recovering: list[tuple[float, dict[str, Any]]] = []
        pending_faults = sorted(faults, key=lambda f: f[1])
        step_counter = 0
        last_progress_s = time.time()
        while waiting or live:
            while waiting and len(live) < self.config.max_concurrent:
                sequence_id, request = waiting.pop()
                sequence = _Sequence(sequence_id, request, list(request.prompt_ids), time.time())
                live[sequence_id] = sequence
                step_counter += 1
                self._send_step(sequence, step_counter)
            now = time.time()
            while pending_faults and now - start_s >= pending_faults[0][1]:
                device, _ = pending_faults.pop(0)
                if device in self._workers:
                    self.kill(device)
            try:
                frame = self._results.get(timeout=_TICK_S)
            except queue.Empty:
                frame = None
            if frame is not None:
                answered = live.get(frame.request_id)
                if answered is None or frame.meta.get("step") != answered.step:
                    continue  # an answer to a step given up on (replayed since)
                sequence = answered
                last_progress_s = time.time()
                step_counter += 1
                if frame.meta.get("error"):
                    # A stage's cache does not continue this step (it missed the prefix).
                    sequence.fed = 0
                    self._send_step(sequence, step_counter)
                    continue
                token = int(frame.tensors["token"][0])
                sequence.tokens.append(token)
                sequence.token_times_s.append(last_progress_s)
                if on_token is not None:
                    on_token(sequence.sequence_id, token)
                for done_at, event in list(recovering):
                    event["recovered_after_s"] = last_progress_s - done_at
                    failures.append(FailureEvent(**event))
                    recovering.remove((done_at, event))
                request = sequence.request
                if request.stop_token_id is not None and token == request.stop_token_id:
                    sequence.done = "stop"
                elif len(sequence.new_ids) >= request.max_new_tokens:
                    sequence.done = "length"
                if sequence.done is not None:
                    finished[sequence.sequence_id] = live.pop(sequence.sequence_id)
                else:
                    self._send_step(sequence, step_counter)
                continue
            failed = self._find_failure(last_progress_s)
            if failed is not None:
                device, cause = failed
                detected_s = time.time()
                died_s = self._dead_since_s.pop(device, detected_s)
                replacement = self._recover(device)
                replayed = 0
                for sequence in live.values():
                    replayed += len(sequence.tokens)
                    sequence.fed = 0
                    step_counter += 1
                    self._send_step(sequence, step_counter)
                recovering.append(
                    (
                        detected_s,
                        {
                            "device": device,
                            "cause": cause,
                            "at_s": died_s - start_s,
                            "detected_after_s": detected_s - died_s,
                            "replayed_tokens": replayed,
                            "replacement": replacement,
                        },
                    )
                )
                last_progress_s = time.time()
        elapsed_s = time.time() - start_s
        results = [_result(finished[i]) for i in sorted(finished)]
        new_tokens = sum(len(r.new_ids) for r in results)
        per_token = [r.time_per_token_s for r in results if len(r.new_ids) > 1]
        return GenerationReport(
            sequences=results,
            elapsed_s=elapsed_s,
            new_tokens=new_tokens,
            tokens_per_s=new_tokens / elapsed_s if elapsed_s > 0 else 0.0,
            time_per_token_s=float(np.mean(per_token)) if per_token else 0.0,
            failures=failures,
            stages=[{"device": d, "start": s, "end": e} for d, s, e in self.stages],
        )

    def _find_failure(self, last_progress_s: float) -> tuple[str, str] | None:
        for device, _, _ in self.stages:
            if not self._workers[device].handle.alive():
                return device, "process_died"
        if time.time() - last_progress_s > self.config.step_timeout_s:
            # Nothing came back for a whole step deadline: find the stage that stopped answering.
            for device, _, _ in self.stages:
                try:
                    self._control(device, "stats")
                except (_StageLostError, TransportError, TimeoutError):
                    self._workers[device].handle.kill()
                    return device, "stall"
        return None

    def _recover(self, device: str) -> str:
        """Replace the dead stage and start a new epoch; returns the replacement device."""
        logger.warning("[driver] stage on %s failed; recovering", device)
        self._stop_epoch()
        dead = self._workers.pop(device)
        dead.control.close()
        dead.handle.kill()
        survivors = [d for d, _, _ in self.stages if d != device]
        replacement = device
        if self._spare:
            replacement = self._spare.pop(0)
            self.stages = [(replacement if d == device else d, s, e) for d, s, e in self.stages]
        elif self.replanner is not None:
            self.stages = list(self.replanner(survivors))
            _check_stages(self.stages, self.num_units)
            replacement = ",".join(d for d, _, _ in self.stages if d not in self._workers)
        elif not self.config.restart_failed:
            raise DeviceUnavailableError(
                f"stage on '{device}' died and there is no standby device, re-planner or "
                "restart allowed; add standby_devices or enable restart_failed"
            )
        needed = [d for d, _, _ in self.stages if d not in self._workers]
        in_use = {d for d, _, _ in self.stages}
        for extra in [d for d in self._workers if d not in in_use and d not in self._spare]:
            self._workers.pop(extra).handle.kill()
        self._launch(needed)
        self._configure_epoch()
        return replacement


class _StageLostError(EdgesplitError):
    def __init__(self, device: str, detail: str) -> None:
        super().__init__(f"stage on '{device}': {detail}")
        self.device = device


def _recv_with_timeout(conn: Connection, timeout_s: float) -> Frame | None:
    box: queue.Queue[Frame | None] = queue.Queue()
    thread = threading.Thread(target=lambda: box.put(conn.recv()), daemon=True)
    thread.start()
    try:
        return box.get(timeout=timeout_s)
    except queue.Empty as e:
        raise TimeoutError(f"no control answer within {timeout_s} s") from e


def _check_stages(stages: Sequence[StageAssignment], num_units: int) -> None:
    position = 0
    for device, start, end in stages:
        if start != position or end <= start:
            raise ConfigError(
                f"generation stages must be contiguous and non-empty from unit 0: stage on "
                f"'{device}' is [{start}, {end}) after unit {position}"
            )
        position = end
    if position != num_units:
        raise ConfigError(f"stages end at unit {position} but the model has {num_units} units")
    devices = [d for d, _, _ in stages]
    if len(set(devices)) != len(devices):
        raise ConfigError(f"each device may hold one stage; got {devices}")


def _result(sequence: _Sequence) -> SequenceResult:
    times = sequence.token_times_s
    gaps = np.diff(times) if len(times) > 1 else np.array([])
    return SequenceResult(
        sequence_id=sequence.sequence_id,
        prompt_ids=list(sequence.request.prompt_ids),
        new_ids=sequence.new_ids,
        first_token_s=(times[0] - sequence.submitted_s) if times else 0.0,
        time_per_token_s=float(gaps.mean()) if gaps.size else 0.0,
        finished=sequence.done or "length",
    )
