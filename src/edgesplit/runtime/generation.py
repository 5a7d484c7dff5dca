"""Generative decoding across devices: the decode driver on the one stage worker.

Owns `GenerationPipeline` (decode executors on the `StageWorker` actors of a `StageGroup`, wired
driver -> stage 0 -> ... -> last stage -> driver over the authenticated channel; many sequences
interleaved; failures detected by the group's one detector and recovered by a standby, an
injected re-plan or a restart; sequences replayed), `GenerationRequest`, `SequenceResult`,
`GenerationReport` and `GenerationConfig`. Control goes only through Ray actor calls (via
stages.py and cluster.py). Never imports planners: re-planning is an injected callable.

[Note: the driver keeps the tokens] Stages keep only KV caches; the driver keeps every sequence's
tokens (prompt + generated). When a stage fails, a replacement gets an empty cache, every live
sequence is replayed from position 0 (one prefill of its tokens so far) on the new epoch, and
decoding continues. Because the last stage picks tokens with `choose_token` (a function of
logits, seed, sequence and position) the output equals an uninterrupted run's, greedy or
sampled. Every step carries a step id unique over the pipeline's life; an answer whose step is
not the one its sequence waits for (a step given up on, an earlier call's, an older epoch's) is
dropped, so no token is delivered twice or to another caller.
"""

from __future__ import annotations

import gc
import itertools
import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgesplit.core.plan import StagePlacement
from edgesplit.core.schema import FrozenModel
from edgesplit.errors import ConfigError, DeviceUnavailableError
from edgesplit.runtime.cluster import RaySession
from edgesplit.runtime.config import RuntimeConfig, ScheduledFault
from edgesplit.runtime.emulation import LinkShaper
from edgesplit.runtime.failover import Suspicion
from edgesplit.runtime.report import Action, FailureRecord
from edgesplit.runtime.stage import StageSpec
from edgesplit.runtime.stages import StageGroup, frame_bound_bytes
from edgesplit.runtime.transport import Frame

__all__ = [
    "GenerationConfig",
    "GenerationPipeline",
    "GenerationReport",
    "GenerationRequest",
    "LinkFn",
    "Replanner",
    "SequenceResult",
    "StageAssignment",
    "TokenCallback",
]

logger = logging.getLogger(__name__)
_TICK_S = 0.02
_MAX_HIDDEN_BYTES_PER_TOKEN = 4 * 8192  # float32 hidden states up to 8192 wide

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
    text: str = ""  # new_ids decoded (filled by the façade, which owns the tokenizer)
    first_token_s: float  # submission -> first new token (prefill latency)
    time_per_token_s: float  # mean gap between consecutive new tokens (decode)
    finished: Literal["length", "stop", "error"]
    error: str = ""  # why, when finished == "error" (an executor error after one retry)


class GenerationReport(FrozenModel):
    sequences: list[SequenceResult]
    elapsed_s: float
    new_tokens: int
    tokens_per_s: float
    time_per_token_s: float  # mean over sequences
    failures: list[FailureRecord] = Field(default_factory=list)
    stages: list[dict[str, Any]] = Field(default_factory=list)


def _real_runtime() -> RuntimeConfig:
    return RuntimeConfig(compute="real")


class GenerationConfig(FrozenModel):
    """Decode scheduling knobs; everything shared with the batch runtime is in `runtime`."""

    max_concurrent: int = Field(default=4, ge=1, le=1024)  # sequences in flight
    max_context: int = Field(default=2048, ge=1)  # prompt + new tokens of one sequence
    restart_failed: bool = True  # no standby/re-planner: restart the stage on the same device
    runtime: RuntimeConfig = Field(default_factory=_real_runtime)


@dataclass
class _Sequence:
    sequence_id: int
    request: GenerationRequest
    tokens: list[int]
    submitted_s: float
    fed: int = 0  # tokens whose keys/values the stages hold
    step: int = -1  # id of the step in flight; answers to other steps are dropped
    attempts: int = 0  # executor errors so far
    token_times_s: list[float] = field(default_factory=list)
    done: Literal["length", "stop", "error"] | None = None
    error: str = ""

    @property
    def new_ids(self) -> list[int]:
        return self.tokens[len(self.request.prompt_ids) :]


class GenerationPipeline:
    """A chain of KV-cached stages, one `StageWorker` actor per device (see module docstring).

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
        source: str | None = None,
        link: LinkFn | None = None,
        emulation: EmulationFn | None = None,
        hidden_size: int = 0,
        vocab_size: int = 0,
        replanner: Replanner | None = None,
    ) -> None:
        if not stages:
            raise ConfigError("a generation pipeline needs at least one stage")
        self.model_spec = model_spec
        self.config = config or GenerationConfig()
        self.runtime = self.config.runtime
        self.stages: list[StageAssignment] = list(stages)
        self.num_units = num_units if num_units is not None else self.stages[-1][2]
        _check_stages(self.stages, self.num_units)
        self.source = source
        self.link = link
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
        self._results: queue.Queue[Frame] = queue.Queue()
        self._outbox: deque[Frame] = deque()

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
        # Standby devices get a warm actor now (imports done, no weights): a failover then
        # costs a stage build and a replay, not a process start.
        self._group.ensure(self._spare, warm=self.runtime.compute == "real")
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

    def kill(self, device: str) -> None:
        """SIGKILL the stage process of `device` (fault injection for tests and benchmarks)."""
        self.fault(device, "kill")

    def fault(self, device: str, kind: Literal["kill", "stop", "crash", "cut"]) -> None:
        """Inject a fault now (see `ScheduledFault`); recorded in the next report's failures."""
        self.group.inject(ScheduledFault(device, 0.0, kind))

    def restage(self, stages: Sequence[StageAssignment], *, link: LinkFn | None = None) -> None:
        """Re-split the model over running (or newly started) devices; caches start empty.

        Devices left without a stage keep their actor (standbys for later epochs).
        """
        _check_stages(stages, self.num_units)
        self.stages = list(stages)
        self._spare = [d for d in self._spare if d not in {d for d, _, _ in self.stages}]
        if link is not None:
            self.link = link
        self._configure_epoch()

    def _stage_spec(self, index: int, device: str, start: int, end: int) -> StageSpec:
        nxt = self.stages[index + 1][0] if index + 1 < len(self.stages) else self.source
        link = self.link(device, nxt) if self.link is not None and nxt is not None else None
        decode_s, prefill_s = self.emulation(device, start, end) if self.emulation else (0.0, 0.0)
        spec = self.model_spec.model_dump() if hasattr(self.model_spec, "model_dump") else None
        per_token = 4 * self.hidden_size if self.hidden_size else _MAX_HIDDEN_BYTES_PER_TOKEN
        return StageSpec(
            index=index,
            device=device,
            start=start,
            end=end,
            epoch=self._epoch,
            executor="decode",
            compute=self.runtime.compute,
            run_key_hex=self.group.run_key.hex(),
            max_frame_bytes=frame_bound_bytes(self.config.max_context * per_token, self.runtime),
            max_connections=self.runtime.max_connections,
            num_units=self.num_units,
            hidden_size=self.hidden_size,
            vocab_size=self.vocab_size,
            decode_s=decode_s,
            prefill_s_per_token=prefill_s,
            bandwidth_bytes_per_s=None if link is None else link[0],
            latency_s=0.0 if link is None else link[1],
            max_in_flight=self._in_flight,
            model_spec=spec,
            num_threads=1,
        )

    @property
    def _in_flight(self) -> int:
        # Each sequence has at most one step in flight, plus a replay's stale steps.
        return max(self.runtime.max_in_flight, 2 * self.config.max_concurrent)

    def _configure_epoch(self) -> None:
        """Configure every stage for a new epoch and wire driver -> s0 -> ... -> sN -> driver."""
        self._epoch += 1
        self._outbox.clear()
        specs = [self._stage_spec(i, d, s, e) for i, (d, s, e) in enumerate(self.stages)]
        first = self.stages[0][0]
        link = self.link(self.source, first) if self.link and self.source else None
        self.group.configure(
            specs,
            source_in_flight=self._in_flight,
            source_shaper=LinkShaper(link[0], link[1]) if link is not None else None,
            expected_compute_s={},
        )

    def _send_step(self, sequence: _Sequence) -> None:
        new = sequence.tokens[sequence.fed :]
        request = sequence.request
        sequence.step = next(self._steps)
        frame = Frame(
            "data",
            sequence.sequence_id,
            0,
            self._epoch,
            {"input_ids": np.array([new], dtype=np.int64)},
            {
                "pos": sequence.fed,
                "step": sequence.step,
                "sampling": [request.temperature, request.top_k, request.seed],
            },
        )
        sequence.fed = len(sequence.tokens)
        self._outbox.append(frame)
        self._flush()

    def _flush(self) -> None:
        """Send queued steps while credits last (never blocks the driver's loop)."""
        source = self.group.source
        while self._outbox and source is not None and not source.stopped.is_set():
            if source.unacked >= source.max_in_flight:
                return
            if not source.send(self._outbox[0]):
                return
            self._outbox.popleft()

    # -- generation ------------------------------------------------------------------------------
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_token: TokenCallback | None = None,
        faults: Sequence[ScheduledFault | tuple[str, float]] = (),
    ) -> GenerationReport:
        """Run every request to completion, `max_concurrent` sequences interleaved.

        Args:
            requests: sequences to continue; sequence ids are their indices.
            on_token: called (sequence id, token) as each token is produced, in order per sequence.
            faults: `ScheduledFault`s (or (device, at_s) kills) counted from the start of this
                call (fault injection for tests, benchmarks and `--fault`).

        Raises:
            ConfigError: a prompt plus its new tokens exceeds `max_context`.
            DeviceUnavailableError: a stage failed and nothing can replace it.
        """
        group = self.group
        for index, request in enumerate(requests):
            length = len(request.prompt_ids) + request.max_new_tokens
            if length > self.config.max_context:
                raise ConfigError(
                    f"request {index}: {len(request.prompt_ids)} prompt + "
                    f"{request.max_new_tokens} new tokens exceed the context of "
                    f"{self.config.max_context}; shorten the prompt or max_new_tokens"
                )
        while not self._results.empty():  # nothing from an earlier call may be delivered now
            self._results.get_nowait()
        group.watch({})  # silence between calls is not a hang: heartbeats count from now
        start_s = time.time()
        waiting = list(enumerate(requests))
        waiting.reverse()
        live: dict[int, _Sequence] = {}
        finished: dict[int, _Sequence] = {}
        token_times: list[float] = []
        scheduled = sorted(
            (f if isinstance(f, ScheduledFault) else ScheduledFault(f[0], f[1]) for f in faults),
            key=lambda f: f.at_s,
        )
        last_progress_s = time.time()
        while waiting or live:
            while waiting and len(live) < self.config.max_concurrent:
                sequence_id, request = waiting.pop()
                sequence = _Sequence(sequence_id, request, list(request.prompt_ids), time.time())
                live[sequence_id] = sequence
                self._send_step(sequence)
            now = time.time()
            while scheduled and now - start_s >= scheduled[0].at_s:
                group.inject(scheduled.pop(0))
            self._flush()
            try:
                frame: Frame | None = self._results.get(timeout=_TICK_S)
            except queue.Empty:
                frame = None
            if frame is not None:
                sequence = live.get(frame.request_id)  # type: ignore[assignment]
                if sequence is None or frame.meta.get("step") != sequence.step:
                    continue  # an answer to a step given up on (replayed since)
                last_progress_s = time.time()
                self._on_answer(sequence, frame, on_token, token_times)
                if sequence.done is not None:
                    finished[sequence.sequence_id] = live.pop(sequence.sequence_id)
                continue
            suspicions = group.detect(time.time())
            if suspicions:
                self._recover(suspicions, list(live.values()))
                last_progress_s = time.time()
            elif time.time() - last_progress_s > max(60.0, 20 * self.runtime.hang_timeout_s):
                raise DeviceUnavailableError(
                    f"no token for {time.time() - last_progress_s:.0f} s and no stage reported "
                    "failed; check the stages' logs"
                )
        elapsed_s = time.time() - start_s
        results = [_result(finished[i]) for i in sorted(finished)]
        new_tokens = sum(len(r.new_ids) for r in results)
        per_token = [r.time_per_token_s for r in results if len(r.new_ids) > 1]
        records = group.failures.records(start_s, token_times, detected_since_s=start_s)
        return GenerationReport(
            sequences=results,
            elapsed_s=elapsed_s,
            new_tokens=new_tokens,
            tokens_per_s=new_tokens / elapsed_s if elapsed_s > 0 else 0.0,
            time_per_token_s=float(np.mean(per_token)) if per_token else 0.0,
            failures=records,
            stages=[{"device": d, "start": s, "end": e} for d, s, e in self.stages],
        )

    def _on_answer(
        self,
        sequence: _Sequence,
        frame: Frame,
        on_token: TokenCallback | None,
        token_times: list[float],
    ) -> None:
        error = frame.meta.get("error")
        if error == "cache_mismatch":
            # A stage's cache does not continue this step (it missed the prefix): replay.
            sequence.fed = 0
            self._send_step(sequence)
            return
        if error is not None:
            sequence.attempts += 1
            detail = str(frame.meta.get("detail", error))
            if sequence.attempts <= self.runtime.max_retries:
                logger.warning("sequence %d: %s; retrying once", sequence.sequence_id, detail)
                sequence.fed = 0
                self._send_step(sequence)
            else:
                logger.error("sequence %d failed again: %s", sequence.sequence_id, detail)
                sequence.done, sequence.error = "error", detail
            return
        token = int(frame.tensors["token"][0])
        now = time.time()
        sequence.tokens.append(token)
        sequence.token_times_s.append(now)
        token_times.append(now)
        if on_token is not None:
            on_token(sequence.sequence_id, token)
        request = sequence.request
        if request.stop_token_id is not None and token == request.stop_token_id:
            sequence.done = "stop"
        elif len(sequence.new_ids) >= request.max_new_tokens:
            sequence.done = "length"
        else:
            self._send_step(sequence)

    def _recover(self, suspicions: list[Suspicion], live: list[_Sequence]) -> None:
        """Replace the failed stages, start a new epoch and replay every live sequence."""
        group = self.group
        detected_s = time.time()
        failed = {s.device for s in suspicions}
        for suspicion in suspicions:
            logger.warning(
                "[driver] stage on %s failed (%s: %s); recovering",
                suspicion.device,
                suspicion.cause,
                suspicion.detail,
            )
        group.stop_source()
        for device in failed:
            group.drop(device)
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
        for sequence in live:
            replayed += len(sequence.tokens)
            sequence.fed = 0
            self._send_step(sequence)
        group.failures.detected(
            suspicions,
            detected_s,
            action,
            replayed=replayed,
            stages=tuple(StagePlacement(device=d, start=s, end=e) for d, s, e in self.stages),
        )


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
        error=sequence.error,
    )
