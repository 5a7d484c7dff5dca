"""Generative decoding across devices: the decode driver on the one stage worker.

Owns `GenerationPipeline` (decode executors on the `StageWorker` actors of a `StageGroup`, wired
driver -> stage 0 -> ... -> last stage -> driver over the authenticated channel; continuous
batching of many sequences; failures detected by the group's one detector and recovered by a
standby, an injected re-plan or a restart; sequences replayed), `GenerationRequest`,
`SequenceResult`, `GenerationReport`, `GenerationConfig` and the long-lived engine view
(`submit`/`abort`/`serve_forever`/`health`/`stats`). Control goes only through Ray actor calls
(via stages.py and cluster.py). Never imports planners: re-planning is an injected callable.

[Note: the driver keeps the tokens] Stages keep only KV caches; the driver keeps every sequence's
tokens (prompt + generated). When a stage fails, a replacement gets an empty cache, every live
sequence is replayed from position 0 (one prefill of its tokens so far) on the new epoch, and
decoding continues. Because the last stage picks tokens with `choose_token` (a function of
logits, seed, sampling key and position) the output equals an uninterrupted run's, greedy or
sampled. Every frame carries a step id unique over the pipeline's life; an answer whose step is
not in flight (given up on, an older epoch's) is dropped, so no token is delivered twice or to
another caller.

[Note: continuous batching] (issue 16; the executor side is `DecodeExecutor`.) Sequences to
(re)start — new ones, replays — are prefilled together: frames of all their tokens so far, rows
right-aligned with per-row lengths (`lens`, models/kv_batch.py [Note: padded steps]), each frame
one slot's share of them within a token budget; 8 arriving requests on 2 stages cost 2
overlapping prefill frames, not 8. A prefill's rows, once answered, join the smallest of
`micro_batches` slots (default: one per stage) together. A slot whose frame is not in flight
sends one frame with one row per member (each at its own position), so at most one frame per
slot is in flight: with as many slots as stages, every stage has a micro-batch to work on while
the others are elsewhere in the chain. A slot whose frame comes back holding 2+ more members
than the smallest (sequences finished unevenly) hands members over. Slot membership changes only
on a join, a leave (finished, aborted) or such a move, so each stage's `KvBatch` re-packs its
cache groups only then. Answers are routed back by `seqs`; a finished or aborted sequence's id
rides in the next frame's `done` (or a rows-less frame when nothing else goes), and every stage
frees its cache there. An errored frame (a cache mismatch, an executor error) replays its rows.
"""

from __future__ import annotations

import functools
import gc
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
from pydantic import Field, ValidationError

from edgesplit.core.cluster import Cluster
from edgesplit.core.plan import StagePlacement, check_chain
from edgesplit.core.precision import StageDtype
from edgesplit.core.schema import FrozenModel, VersionedFile
from edgesplit.errors import ConfigError, DeviceUnavailableError
from edgesplit.runtime.cluster import RaySession
from edgesplit.runtime.config import (
    FaultAction,
    RuntimeConfig,
    ScheduledFault,
    check_run_devices,
    unfired_note,
)
from edgesplit.runtime.emulation import LinkShaper
from edgesplit.runtime.failover import Suspicion
from edgesplit.runtime.report import Action, FailureRecord, RunHealth
from edgesplit.runtime.stage import StageSpec
from edgesplit.runtime.stages import StageGroup, frame_bound_bytes
from edgesplit.runtime.transport import Frame

__all__ = [
    "EmulationFn",
    "FinishCallback",
    "GenerationConfig",
    "GenerationPipeline",
    "GenerationReport",
    "GenerationRequest",
    "GenerationStats",
    "Replanner",
    "SequenceResult",
    "StageAssignment",
    "StageTiming",
    "TokenCallback",
]

logger = logging.getLogger(__name__)
# Failure detection (Ray calls, heartbeats) runs this often, busy or idle; in between the
# driver only waits for answers (and submits/aborts, which wake it).
_DETECT_EVERY_S = 0.1
_MAX_HIDDEN_BYTES_PER_TOKEN = 4 * 8192  # float32 hidden states up to 8192 wide

StageAssignment = tuple[str, int, int]  # (device, start unit, end unit), half-open
Replanner = Callable[[Sequence[str]], Sequence[StageAssignment]]  # survivors -> new stages


class StageTiming(NamedTuple):
    """What an emulated decode stage sleeps (`EmulatedDecodeExecutor`): a one-row decode step,
    a prompt token of a prefill, and (batch, step time / one row's) points; () = r(B) = B.
    `GenerationProfile.stage_times` gives all three for a unit range."""

    decode_s: float
    prefill_s_per_token: float
    batch_scale: tuple[tuple[int, float], ...] = ()


# (device, start unit, end unit) -> what that stage sleeps when emulated
EmulationFn = Callable[[str, int, int], StageTiming]
TokenCallback = Callable[[int, int], None]  # (sequence id, token)
Finished = Literal["length", "stop", "error", "abort"]


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
    text: str = ""  # new_ids decoded (filled by the façade, which owns the tokenizer)
    first_token_s: float  # submission -> first new token (prefill latency)
    time_per_token_s: float  # mean gap between consecutive new tokens (decode)
    finished: Finished
    error: str = ""  # why, when finished == "error" (an executor error after one retry)


FinishCallback = Callable[[SequenceResult], None]


class GenerationReport(VersionedFile):
    """A generation run's report (`kind: edgesplit.generation_report`); `failures` as in every
    workload's report (`FailureRecord`)."""

    KIND: ClassVar[str] = "edgesplit.generation_report"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: Literal["edgesplit.generation_report"] = "edgesplit.generation_report"
    schema_version: Literal[1] = 1
    sequences: list[SequenceResult]
    elapsed_s: float
    new_tokens: int
    tokens_per_s: float
    time_per_token_s: float  # mean over sequences
    failures: list[FailureRecord] = Field(default_factory=list)
    stages: list[dict[str, Any]] = Field(default_factory=list)
    notes: str = ""  # e.g. faults that never fired (the run ended first)


@dataclass(frozen=True)
class GenerationStats:
    """Sequences decoding, waiting for a slot, and rows per decode frame since the last call."""

    running: int = 0
    waiting: int = 0
    step_batch_sizes: tuple[int, ...] = ()


class GenerationConfig(FrozenModel):
    """Decode scheduling knobs; everything shared with the batch runtime is in `runtime`."""

    max_concurrent: int = Field(default=4, ge=1, le=1024)  # sequences decoding at once
    max_context: int = Field(default=2048, ge=1)  # prompt + new tokens of one sequence
    restart_failed: bool = True  # no standby/re-planner: restart the stage on the same device
    # Decode frames in flight at once ([Note: continuous batching]); 0 = one per stage.
    micro_batches: int = Field(default=0, ge=0, le=64)
    runtime: RuntimeConfig = Field(default_factory=lambda: RuntimeConfig(compute="real"))
    dtype: StageDtype = "float32"  # every stage's weights (issue 17; models.precision)


@dataclass
class _Sequence:
    sequence_id: int  # the stages' id for it: unique over the pipeline's life
    key: int  # sampling key (`choose_token`'s sequence id) and the caller's id
    request: GenerationRequest
    tokens: list[int]
    submitted_s: float
    on_token: TokenCallback | None = None
    on_finish: FinishCallback | None = None
    fed: int = 0  # tokens whose keys/values the stages hold
    in_flight: bool = False  # a frame holding this sequence is on its way
    slot: int = -1  # its micro-batch; -1 until its prefill answered
    attempts: int = 0  # executor errors so far
    aborted: bool = False
    token_times_s: list[float] = field(default_factory=list)
    done: Finished | None = None
    error: str = ""

    @property
    def new_ids(self) -> list[int]:
        return self.tokens[len(self.request.prompt_ids) :]


@dataclass
class _Flight:
    slot: int  # -1: a prefill/replay or a rows-less "done" frame
    ids: list[int]
    done: list[int]


class GenerationPipeline:
    """A chain of KV-cached stages, one `StageWorker` actor per device (see module docstring).

    Two ways to drive it (never both at once): `generate(requests)` runs a fixed list to
    completion; `submit`/`abort` from any thread plus `serve_forever(stop)` in one thread is a
    long-lived engine (sequences join and leave between steps; idling is fine).

    Example:
        >>> with GenerationPipeline(spec, [("a", 0, 5), ("b", 5, 10)]) as pipe:  # doctest: +SKIP
        ...     report = pipe.generate([GenerationRequest(prompt_ids=[1, 2], max_new_tokens=8)])
    """

    def __init__(
        self,
        model_spec: Any,
        stages: Sequence[StageAssignment],
        config: GenerationConfig | None = None,
        *,
        num_units: int | None = None,
        cluster: Cluster | None = None,
        emulation: EmulationFn | None = None,
        hidden_size: int = 0,
        vocab_size: int = 0,
        replanner: Replanner | None = None,
    ) -> None:
        if not stages:
            raise ConfigError("a generation pipeline needs at least one stage")
        self.model_spec = model_spec
        # as plain data for the stage actors (None: emulated stages need no model)
        dump = getattr(model_spec, "model_dump", None)
        self._spec_data: dict[str, Any] | None = dump() if dump is not None else None
        self.config = config or GenerationConfig()
        self.runtime = self.config.runtime
        self.stages: list[StageAssignment] = list(stages)
        self.num_units = num_units if num_units is not None else self.stages[-1][2]
        _check_stages(self.stages, self.num_units)
        self.cluster = cluster  # links shaped as `runtime.link_shaping` says; None: unshaped
        self.emulation = emulation
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.replanner = replanner
        if self.runtime.compute == "emulated" and emulation is None:
            raise ConfigError("compute='emulated' needs an emulation function (profiled times)")
        self._spare = list(self.runtime.standby_devices)
        self._session: RaySession | None = None
        self._group: StageGroup | None = None
        self._epoch = -1
        self._steps = itertools.count()
        self._ids = itertools.count()
        self._results: queue.Queue[Frame | None] = queue.Queue()  # None: wake the driver
        self._outbox: deque[Frame] = deque()
        # Driver state (the driving thread only, except what `_lock` guards).
        self._lock = threading.Lock()
        self._submitted: deque[_Sequence] = deque()  # guarded: from submit()
        self._aborts: list[int] = []  # guarded: from abort()
        self._known: set[int] = set()  # guarded: submitted and not finished
        self._batch_sizes: list[int] = []  # guarded
        self._waiting: deque[_Sequence] = deque()
        self._restarts: list[_Sequence] = []  # to prefill (from position 0) in the next dispatch
        self._live: dict[int, _Sequence] = {}
        self._flights: dict[int, _Flight] = {}
        self._slots: list[list[int]] = []
        self._slot_flights: list[int] = []
        self._done_ids: list[int] = []
        self._token_times: deque[float] = deque(maxlen=1 << 16)  # recent token wall times
        self._served_since_s = 0.0
        self._faults: list[ScheduledFault] = []
        self._faults_t0: float | None = None
        self._driving = False
        self._recovering = False
        self._broken = ""
        # Caller callbacks run after the next frames left (`_run_callbacks`), in order.
        self._callbacks: list[Callable[[], None]] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> GenerationPipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def group(self) -> StageGroup:
        if self._group is None:
            raise ConfigError("the generation pipeline is not started; use it as a context manager")
        return self._group

    def start(self) -> None:
        devices = [*(d for d, _, _ in self.stages), *self._spare]
        self._session = RaySession.open(self.runtime, devices)
        self._group = StageGroup(self._session, self.runtime, self._results.put, 1 << 20)
        self._group.ensure(d for d, _, _ in self.stages)
        # Standby devices get a warm actor now (imports done, kernels measured, no weights): a
        # failover then costs a stage build and a replay, not a process start.
        real = self.runtime.compute == "real"
        warm = (self._spec_data, self.config.dtype) if real else None
        self._group.ensure(self._spare, warm=warm)
        self._configure_epoch()

    def close(self) -> None:
        if self._group is not None:
            self._group.close()
            self._group = None
        gc.collect()  # drop actor handles before Ray shuts down (see pipeline.run_plan)
        if self._session is not None:
            self._session.close()
            self._session = None

    def worker_pid(self, device: str) -> int:
        return int(self.group.actors[device].info["pid"])

    def fault(self, device: str, kind: FaultAction) -> None:
        """Inject a fault now (see `ScheduledFault`); recorded in the next report's failures."""
        self.group.inject(ScheduledFault(device, 0.0, kind))

    def restage(self, stages: Sequence[StageAssignment], *, cluster: Cluster | None = None) -> None:
        """Re-split the model over running (or newly started) devices; caches start empty.

        Devices left without a stage keep their actor (standbys for later epochs).
        """
        _check_stages(stages, self.num_units)
        self.stages = list(stages)
        self._spare = [d for d in self._spare if d not in {d for d, _, _ in self.stages}]
        if cluster is not None:
            self.cluster = cluster
        self._configure_epoch()

    def _stage_spec(self, index: int, device: str, start: int, end: int) -> StageSpec:
        nxt = self.stages[index + 1][0] if index + 1 < len(self.stages) else None
        c = self.cluster
        link = None if c is None else self.runtime.shaped(c, device, nxt or c.source)
        timing = self.emulation(device, start, end) if self.emulation else StageTiming(0, 0)
        per_token = 4 * self.hidden_size if self.hidden_size else _MAX_HIDDEN_BYTES_PER_TOKEN
        # A frame holds a prefill of up to max_context tokens or one decode row per sequence.
        tokens = max(self.config.max_context, self.config.max_concurrent)
        return StageSpec(
            index=index,
            device=device,
            start=start,
            end=end,
            epoch=self._epoch,
            executor="decode",
            compute=self.runtime.compute,
            run_key_hex=self.group.run_key.hex(),
            max_frame_bytes=frame_bound_bytes(tokens * per_token, self.runtime),
            max_connections=self.runtime.max_connections,
            num_units=self.num_units,
            hidden_size=self.hidden_size,
            vocab_size=self.vocab_size,
            decode_s=timing.decode_s,
            prefill_s_per_token=timing.prefill_s_per_token,
            decode_batch_scale=timing.batch_scale,
            link=link,
            max_in_flight=self._in_flight,
            model_spec=self._spec_data,
            num_threads=1,
            dtype=self.config.dtype,
        )

    @property
    def _in_flight(self) -> int:
        # Every sequence may have one frame in flight (a prefill or its slot's), plus a "done"
        # frame and a replay's stale frames.
        return max(self.runtime.max_in_flight, 2 * self.config.max_concurrent + 2)

    @property
    def micro_batches(self) -> int:
        return self.config.micro_batches or len(self.stages)

    def _configure_epoch(self) -> None:
        """Configure every stage for a new epoch and wire driver -> s0 -> ... -> sN -> driver."""
        self._epoch += 1
        self._outbox.clear()
        specs = [self._stage_spec(i, d, s, e) for i, (d, s, e) in enumerate(self.stages)]
        c = self.cluster
        link = None if c is None else self.runtime.shaped(c, c.source, self.stages[0][0])
        self.group.configure(
            specs,
            source_in_flight=self._in_flight,
            source_shapers={self.stages[0][0]: LinkShaper.of(link)},
        )
        # Nothing of an older epoch is in flight any more; every live sequence restarts.
        self._flights.clear()
        self._done_ids.clear()
        self._restarts.clear()
        self._slots = [[] for _ in range(self.micro_batches)]
        self._slot_flights = [0] * self.micro_batches
        for sequence in self._live.values():
            sequence.fed, sequence.in_flight, sequence.slot = 0, False, -1

    # -- the engine view (thread-safe) -------------------------------------------------------------
    def submit(
        self,
        request: GenerationRequest,
        on_token: TokenCallback | None = None,
        on_finish: FinishCallback | None = None,
        *,
        key: int = 0,
    ) -> int:
        """Queue a sequence; returns its id. Callbacks run on the driving thread.

        `on_token(id, token)` per new token, then `on_finish(result)` exactly once. `key` is the
        sampling key: the same request with the same key samples the same tokens.

        Raises:
            ConfigError: prompt + new tokens exceed `max_context`.
            DeviceUnavailableError: the pipeline has failed for good (`health()`).
        """
        self._check_length(request)
        if self._broken:
            raise DeviceUnavailableError(self._broken)
        sequence_id = next(self._ids)
        sequence = _Sequence(
            sequence_id,
            key,
            request,
            list(request.prompt_ids),
            time.time(),
            on_token=on_token,
            on_finish=on_finish,
        )
        with self._lock:
            self._submitted.append(sequence)
            self._known.add(sequence_id)
        self._results.put(None)
        return sequence_id

    def _check_length(self, request: GenerationRequest, where: str = "") -> None:
        if len(request.prompt_ids) + request.max_new_tokens > self.config.max_context:
            raise ConfigError(
                f"{where}{len(request.prompt_ids)} prompt + {request.max_new_tokens} new tokens "
                f"exceed the context of {self.config.max_context}; shorten the prompt or "
                "max_new_tokens"
            )

    def abort(self, sequence_id: int) -> None:
        """Stop a sequence between steps and free its caches on every stage (unknown: no-op).
        Its `on_finish` gets `finished="abort"`."""
        with self._lock:
            if sequence_id not in self._known:
                return
            self._aborts.append(sequence_id)
        self._results.put(None)

    def health(self) -> RunHealth:
        stages = tuple(StagePlacement(device=d, start=s, end=e) for d, s, e in self.stages)
        if self._broken:
            return RunHealth("failed", stages, self._broken)
        return RunHealth("recovering" if self._recovering else "running", stages)

    def stats(self) -> GenerationStats:
        with self._lock:
            sizes, self._batch_sizes = tuple(self._batch_sizes), []
            waiting = len(self._submitted)
        return GenerationStats(
            running=len(self._live), waiting=waiting + len(self._waiting), step_batch_sizes=sizes
        )

    def failures(self) -> list[FailureRecord]:
        """Stage failures detected since `serve_forever` (or the last `generate`) began."""
        since = self._served_since_s
        return self.group.failures.records(since, list(self._token_times), detected_since_s=since)

    def serve_forever(self, stop: threading.Event, faults: Sequence[ScheduledFault] = ()) -> None:
        """Drive submitted sequences until `stop` is set; idle time is fine.

        `faults` are counted from the first submitted sequence. When a stage fails and nothing
        can replace it, every sequence finishes with an error, `health()` turns false, later
        submits raise, and this returns.
        """
        self._begin(faults)
        try:
            while not stop.is_set():
                self._pump()
            self._finish_all("abort")  # stopped: nothing more will be decoded
        except DeviceUnavailableError as e:
            self._fail_all(f"{type(e).__name__}: {e}")
        finally:
            self._driving = False

    # -- generation ------------------------------------------------------------------------------
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_token: TokenCallback | None = None,
        faults: Sequence[ScheduledFault] = (),
    ) -> GenerationReport:
        """Run every request to completion, up to `max_concurrent` sequences batched.

        Args:
            requests: sequences to continue; sequence ids (and sampling keys) are their indices.
            on_token: called (sequence id, token) as each token is produced, in order per sequence.
            faults: `ScheduledFault`s (or (device, at_s) kills) counted from the start of this
                call (fault injection for tests, benchmarks and `--fault`).

        Raises:
            ConfigError: a prompt plus its new tokens exceeds `max_context`.
            DeviceUnavailableError: a stage failed and nothing can replace it.
        """
        for index, request in enumerate(requests):
            self._check_length(request, f"request {index}: ")
        start_s = time.time()
        self._begin(faults, now_s=start_s)
        finished: dict[int, SequenceResult] = {}
        self._token_times.clear()

        def token_to(index: int) -> TokenCallback | None:
            if on_token is None:
                return None
            callback = on_token
            return lambda _, token: callback(index, token)

        def finish_to(index: int) -> FinishCallback:
            return lambda result: finished.__setitem__(index, result)

        try:
            for index, request in enumerate(requests):
                self.submit(request, token_to(index), finish_to(index), key=index)
            while len(finished) < len(requests):
                self._pump()
            if self._done_ids:  # free the last sequences' caches now
                self._send([], -1)
        except BaseException:
            self._forget_sequences()
            raise
        finally:
            self._driving = False
        elapsed_s = time.time() - start_s
        results = [finished[i].model_copy(update={"sequence_id": i}) for i in sorted(finished)]
        new_tokens = sum(len(r.new_ids) for r in results)
        per_token = [r.time_per_token_s for r in results if len(r.new_ids) > 1]
        group = self.group
        records = group.failures.records(start_s, self._token_times, detected_since_s=start_s)
        notes = unfired_note(self._faults, elapsed_s)
        self._faults = []
        return GenerationReport(
            sequences=results,
            elapsed_s=elapsed_s,
            new_tokens=new_tokens,
            tokens_per_s=new_tokens / elapsed_s if elapsed_s > 0 else 0.0,
            time_per_token_s=float(np.mean(per_token)) if per_token else 0.0,
            failures=records,
            stages=[{"device": d, "start": s, "end": e} for d, s, e in self.stages],
            notes=notes,
        )

    # -- the driving loop --------------------------------------------------------------------------
    def _begin(self, faults: Sequence[ScheduledFault], now_s: float | None = None) -> None:
        if self._driving:
            raise ConfigError("the generation pipeline is already being driven by another call")
        check_run_devices([d for d, _, _ in self.stages], self._spare, faults)
        self._driving = True
        if self._broken:
            raise DeviceUnavailableError(self._broken)
        while True:  # nothing from an earlier call may be delivered now
            try:
                frame = self._results.get_nowait()
            except queue.Empty:
                break
            if frame is not None:
                self._answer(frame)  # an earlier call's rows-less "done" frame, at most
        self.group.watch({})  # silence between calls is not a hang: heartbeats count from now
        self._faults = sorted(faults, key=lambda f: f.at_s)
        self._faults_t0 = now_s
        self._served_since_s = time.time()
        self._last_progress_s = self._last_detect_s = time.time()

    def _pump(self) -> None:
        """One turn of the driver (see `_turn`); callbacks run at its end."""
        try:
            self._turn()
        finally:
            self._run_callbacks()

    def _run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def _turn(self) -> None:
        """Take submits/aborts, send what can go, handle one answer (the next step leaves before
        its tokens are handed to callers), watch for failures."""
        group = self.group
        self._take_control()
        while self._waiting and len(self._live) < self.config.max_concurrent:
            sequence = self._waiting.popleft()
            self._live[sequence.sequence_id] = sequence
            self._prefill(sequence)
        self._dispatch()
        now = time.time()
        if self._faults_t0 is None and self._live:
            self._faults_t0 = now
        while self._faults and self._faults_t0 is not None:
            if now - self._faults_t0 < self._faults[0].at_s:
                break
            group.inject(self._faults.pop(0))
        self._flush()
        try:
            wait_s = self._last_detect_s + _DETECT_EVERY_S - time.time()
            frame = self._results.get(timeout=max(0.001, wait_s))
        except queue.Empty:
            frame = None
        if frame is not None:
            if self._answer(frame):
                self._last_progress_s = time.time()
                self._dispatch()  # the next step leaves before anything slower is done
            self._run_callbacks()
            if time.time() - self._last_detect_s < _DETECT_EVERY_S:
                return
        now = time.time()
        self._last_detect_s = now
        suspicions = group.detect(now)
        if suspicions:
            self._recovering = True
            try:
                self._recover(suspicions)
            finally:
                self._recovering = False
            self._last_progress_s = time.time()
        elif not self._flights:
            self._last_progress_s = now  # idle: nothing is owed
        elif now - self._last_progress_s > max(60.0, 20 * self.runtime.hang_timeout_s):
            raise DeviceUnavailableError(
                f"no token for {now - self._last_progress_s:.0f} s and no stage reported "
                "failed; check the stages' logs"
            )

    def _take_control(self) -> None:
        with self._lock:
            submitted = list(self._submitted)
            self._submitted.clear()
            aborts, self._aborts = self._aborts, []
        self._waiting.extend(submitted)
        for sequence_id in aborts:
            waiting = next((s for s in self._waiting if s.sequence_id == sequence_id), None)
            if waiting is not None:
                self._waiting.remove(waiting)
                waiting.aborted = True
                self._finish(waiting, "abort")
                continue
            sequence = self._live.get(sequence_id)
            if sequence is None or sequence.done is not None:
                continue
            sequence.aborted = True
            if not sequence.in_flight:
                self._finish(sequence, "abort")
            # else: finished when its frame comes back (its rows must not be freed mid-step)

    def _prefill(self, sequence: _Sequence) -> None:
        """(Re)start a sequence from position 0 with the next dispatch's prefill frames."""
        self._leave_slot(sequence)
        sequence.fed = 0
        self._restarts.append(sequence)

    def _dispatch(self) -> None:
        """Send the prefills, then every slot that has nothing in flight and members to step;
        "done" ids that no frame carried go in a rows-less frame."""
        restarts = [s for s in self._restarts if s.done is None and not s.in_flight]
        self._restarts, frame = [], list[_Sequence]()
        # A frame holds at most max_context tokens (the stages' frame bound), padding included,
        # pads at most about as many tokens as it holds, and one slot's share of the rows (so
        # the stages overlap on the prefills, and each prefill's rows decode as one slot).
        cap = -(-len(restarts) // self.micro_batches)
        for sequence in sorted(restarts, key=lambda s: len(s.tokens)):
            padded = (len(frame) + 1) * len(sequence.tokens)
            real = sum(len(s.tokens) for s in frame) + len(sequence.tokens)
            if frame and (
                len(frame) == cap or padded > min(self.config.max_context, 2 * real + 64)
            ):
                self._send(frame, -1)
                frame = []
            frame.append(sequence)
        if frame:
            self._send(frame, -1)
        for slot, members in enumerate(self._slots):
            if members and not self._slot_flights[slot]:  # (members come back together)
                self._send([self._live[i] for i in members], slot)
        if self._done_ids:
            self._send([], -1)

    def _send(self, rows: list[_Sequence], slot: int) -> None:
        step = next(self._steps)
        ids = [s.sequence_id for s in rows]
        tensors: dict[str, np.ndarray] = {}
        lengths = [len(s.tokens) - s.fed for s in rows]
        width = max(lengths, default=0)
        if rows:  # rows right-aligned, padded on the left ([Note: continuous batching])
            tokens = np.zeros((len(rows), width), dtype=np.int64)
            for row, (s, n) in enumerate(zip(rows, lengths, strict=True)):
                tokens[row, width - n :] = s.tokens[s.fed :]
            tensors["input_ids"] = tokens
        meta: dict[str, Any] = {
            "seqs": ids,
            "pos": [s.fed for s in rows],
            "step": step,
            "sampling": [
                [s.request.temperature, s.request.top_k, s.request.seed, s.key] for s in rows
            ],
        }
        if any(n != width for n in lengths):
            meta["lens"] = lengths
        done, self._done_ids = self._done_ids, []
        if done:
            meta["done"] = done
        for sequence in rows:
            sequence.fed = len(sequence.tokens)
            sequence.in_flight = True
        self._flights[step] = _Flight(slot, ids, done)
        if slot >= 0:
            self._slot_flights[slot] += 1
            with self._lock:
                self._batch_sizes.append(len(rows))
        self._outbox.append(Frame("data", step, 0, self._epoch, tensors, meta))
        self._flush()

    def _flush(self) -> None:
        """Send queued frames while credits last (never blocks the driver's loop)."""
        source = self.group.source
        while self._outbox and source is not None and not source.stopped.is_set():
            if source.unacked >= source.max_in_flight:
                return
            if not source.send(self._outbox[0]):
                return
            self._outbox.popleft()

    def _answer(self, frame: Frame) -> bool:
        """Route one answer; True when it was one the driver waited for."""
        flight = self._flights.pop(int(frame.meta.get("step", -1)), None)
        if flight is None:
            return False  # a frame given up on (replayed since, or an older epoch's)
        if flight.slot >= 0:
            self._slot_flights[flight.slot] -= 1
        rows = [self._live[i] for i in flight.ids if i in self._live]
        for sequence in rows:
            sequence.in_flight = False
        error = frame.meta.get("error")
        if error is not None:
            # Stages after the failing one never saw this frame's "done": send it again.
            self._done_ids.extend(flight.done)
            detail = str(frame.meta.get("detail", error))
            for sequence in rows:
                if sequence.aborted:
                    self._finish(sequence, "abort")
                elif error == "cache_mismatch":
                    # A stage's cache does not continue the step (it missed the prefix).
                    self._prefill(sequence)
                else:
                    sequence.attempts += 1
                    if sequence.attempts <= self.runtime.max_retries:
                        logger.warning("sequence %d: %s; retrying", sequence.sequence_id, detail)
                        self._prefill(sequence)
                    else:
                        logger.error("sequence %d failed again: %s", sequence.sequence_id, detail)
                        sequence.error = detail
                        self._finish(sequence, "error")
            return True
        if not flight.ids:
            return True  # a rows-less "done" frame
        tokens = frame.tensors["token"].reshape(-1)
        now = time.time()
        joining: list[_Sequence] = []
        for sequence_id, token in zip(flight.ids, tokens.tolist(), strict=True):
            found = self._live.get(sequence_id)
            if found is None:
                continue
            sequence = found
            if sequence.aborted:
                self._finish(sequence, "abort")
                continue
            sequence.tokens.append(int(token))
            sequence.token_times_s.append(now)
            self._token_times.append(now)
            if sequence.on_token is not None:
                self._callbacks.append(
                    functools.partial(sequence.on_token, sequence.sequence_id, int(token))
                )
            request = sequence.request
            if request.stop_token_id is not None and token == request.stop_token_id:
                self._finish(sequence, "stop")
            elif len(sequence.new_ids) >= request.max_new_tokens:
                self._finish(sequence, "length")
            elif sequence.slot < 0:
                joining.append(sequence)
        self._join(joining, flight.slot)
        return True

    def _join(self, joining: list[_Sequence], slot: int) -> None:
        """A prefill's sequences join the smallest slot together (one cache group on every
        stage); members of a `slot` just back move to the smallest while it holds 2+ fewer."""
        smallest = min(range(len(self._slots)), key=lambda i: (len(self._slots[i]), i))
        for sequence in joining:
            sequence.slot = smallest
            self._slots[smallest].append(sequence.sequence_id)
        while slot >= 0:
            smallest = min(range(len(self._slots)), key=lambda i: (len(self._slots[i]), i))
            if len(self._slots[slot]) - len(self._slots[smallest]) < 2:
                return
            moved = self._slots[slot].pop()
            self._slots[smallest].append(moved)
            self._live[moved].slot = smallest

    def _leave_slot(self, sequence: _Sequence) -> None:
        if sequence.slot >= 0:
            members = self._slots[sequence.slot]
            if sequence.sequence_id in members:
                members.remove(sequence.sequence_id)
            sequence.slot = -1

    def _finish(self, sequence: _Sequence, how: Finished) -> None:
        if sequence.done is not None:
            return
        sequence.done = how
        self._leave_slot(sequence)
        if self._live.pop(sequence.sequence_id, None) is not None and sequence.fed:
            self._done_ids.append(sequence.sequence_id)  # free its caches on every stage
        with self._lock:
            self._known.discard(sequence.sequence_id)
        if sequence.on_finish is not None:
            self._callbacks.append(functools.partial(sequence.on_finish, _result(sequence)))

    def _forget_sequences(self) -> None:
        """A call ended by an error: its sequences are dropped without callbacks (ids are
        never reused, so caches the stages still hold are only freed at the next epoch)."""
        with self._lock:
            self._submitted.clear()
            self._aborts.clear()
            self._known.clear()
        self._waiting.clear()
        self._live.clear()
        self._flights.clear()
        self._callbacks.clear()
        self._done_ids.clear()
        self._restarts.clear()
        self._slots = [[] for _ in range(self.micro_batches)]
        self._slot_flights = [0] * self.micro_batches

    def _fail_all(self, detail: str) -> None:
        """Nothing can replace a failed stage: every sequence ends with an error."""
        self._broken = detail
        logger.error("generation pipeline failed: %s", detail)
        self._finish_all("error", detail)

    def _finish_all(self, how: Finished, detail: str = "") -> None:
        self._take_control()
        for sequence in [*self._live.values(), *self._waiting]:
            sequence.error = detail
            self._finish(sequence, how)
        self._waiting.clear()
        self._run_callbacks()

    def _recover(self, suspicions: list[Suspicion]) -> None:
        """Replace the failed stages, start a new epoch and replay every live sequence."""
        group = self.group
        detected_s = time.time()
        failed = group.lose(suspicions)
        survivors = [d for d, _, _ in self.stages if d not in failed]
        action: Action = "restart"
        spare = [d for d in self._spare if d not in failed]
        if len(spare) >= len(failed):
            action = "standby"
            replacement = {d: spare.pop(0) for d in sorted(failed)}
            self._spare = spare
            self.stages = [(replacement.get(d, d), s, e) for d, s, e in self.stages]
        elif self.replanner is not None:
            action = "replan"
            self.stages = list(self.replanner(survivors))
            _check_stages(self.stages, self.num_units)
        elif not self.config.restart_failed:
            group.failures.detected(suspicions, detected_s, "none")
            raise DeviceUnavailableError(
                f"stage(s) on {sorted(failed)} failed and there is no standby device, re-planner "
                "or restart allowed; add standby devices or enable restart_failed"
            )
        in_use = {d for d, _, _ in self.stages}
        for extra in [d for d in group.actors if d not in in_use and d not in self._spare]:
            group.drop(extra)
        self._configure_epoch()
        replayed = 0
        for sequence in list(self._live.values()):
            if sequence.aborted:
                self._finish(sequence, "abort")
                continue
            replayed += len(sequence.tokens)
            self._prefill(sequence)
        group.failures.detected(
            suspicions,
            detected_s,
            action,
            replayed=replayed,
            stages=tuple(StagePlacement(device=d, start=s, end=e) for d, s, e in self.stages),
        )


def _check_stages(stages: Sequence[StageAssignment], num_units: int) -> None:
    hint = f"; give contiguous, non-empty unit ranges covering [0, {num_units}), one per device"
    try:
        check_chain([StagePlacement(device=d, start=s, end=e) for d, s, e in stages], num_units)
    except ValidationError as e:  # one stage is malformed (e.g. empty): pydantic's own words
        detail = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())
        raise ConfigError(f"generation stages: {detail}{hint}") from e
    except ValueError as e:
        raise ConfigError(f"generation stages: {e}{hint}") from e


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
        error=sequence.error,
    )
