"""Micro-batch streaming through a Plan's stages, with failure detection, failover and replay.

Owns `run_plan` (the runtime's entry point for api.py) and the batch driver: its scheduling (the
request source under back-pressure, exactly-once in-order delivery, one retry of a request whose
executor raised) and its recovery (exclude -> standby or injected re-planner -> reconfigure ->
replay from the furthest retained boundary). Stage actors, streams, failure detection and fault
injection are `StageGroup`'s (stages.py), shared with the decode driver. Never imports planners.
See [Note: retained activations] in stage.py.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesplit.core.cluster import Cluster
from edgesplit.core.cost import CostModel
from edgesplit.core.link_codec import decode_tensors
from edgesplit.core.plan import Plan, StagePlacement
from edgesplit.core.profile import ModelProfile
from edgesplit.errors import ConfigError, DeviceUnavailableError, EdgesplitError
from edgesplit.runtime.cluster import RaySession
from edgesplit.runtime.config import (
    RuntimeConfig,
    ScheduledFault,
    check_run_devices,
    unfired_note,
)
from edgesplit.runtime.emulation import LinkShaper
from edgesplit.runtime.failover import FailureLog, Suspicion, choose_replays, standby_stages
from edgesplit.runtime.metrics import RunMetrics
from edgesplit.runtime.report import (
    Action,
    FailureRecord,
    HealthState,
    RequestCounts,
    RunHealth,
    RunReport,
    run_report,
)
from edgesplit.runtime.stage import StageSpec
from edgesplit.runtime.stages import StageGroup, frame_bound_bytes
from edgesplit.runtime.transport import Frame

__all__ = [
    "Activation",
    "ErrorCallback",
    "HealthCallback",
    "ProgressCallback",
    "Replanner",
    "ResultCallback",
    "run_plan",
]

logger = logging.getLogger(__name__)

Activation = dict[str, np.ndarray]
Replanner = Callable[[Cluster], Plan]
ResultCallback = Callable[[int, Activation], None]
ErrorCallback = Callable[[int, str], None]
ProgressCallback = Callable[[int, int | None, float], None]
HealthCallback = Callable[[RunHealth], None]
_TICK_S = 0.05


# -- the driver ------------------------------------------------------------------------------
@dataclass
class _Ledger:
    """Every accepted micro-batch from submission to its one delivery (thread-safe)."""

    on_result: ResultCallback | None
    on_error: ErrorCallback | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    inputs: dict[int, Activation] = field(default_factory=dict)  # accepted, not yet answered
    sent_s: dict[int, float] = field(default_factory=dict)
    done_s: dict[int, float] = field(default_factory=dict)
    latency_s: dict[int, float] = field(default_factory=dict)
    waiting: dict[int, Activation | None] = field(default_factory=dict)  # answered, undelivered
    delivered: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)  # answered with an executor error
    attempts: dict[int, int] = field(default_factory=dict)
    next_to_deliver: int = 0
    submitted: int = 0
    duplicates_suppressed: int = 0
    replayed: int = 0

    def accept(self, request_id: int, tensors: Activation) -> None:
        with self.lock:
            self.inputs[request_id] = tensors
            self.submitted += 1

    def answer(
        self, request_id: int, tensors: Activation | None, now_s: float, error: str = ""
    ) -> bool:
        """Record the one answer of a request (None + error: it failed); deliver in order."""
        with self.lock:
            if request_id in self.done_s or request_id not in self.inputs:
                self.duplicates_suppressed += 1
                return False
            del self.inputs[request_id]
            self.done_s[request_id] = now_s
            self.latency_s[request_id] = now_s - self.sent_s.get(request_id, now_s)
            self.waiting[request_id] = tensors
            if error:
                self.errors[request_id] = error
            while self.next_to_deliver in self.waiting:
                rid = self.next_to_deliver
                output = self.waiting.pop(rid)
                if output is not None and self.on_result is not None:
                    self.on_result(rid, output)
                elif output is None and self.on_error is not None:
                    self.on_error(rid, self.errors.get(rid, "no result"))
                self.delivered.append(rid)
                self.next_to_deliver += 1
            return True

    def retry(self, request_id: int, max_retries: int) -> bool:
        """Whether an errored request gets another attempt (at most `max_retries`)."""
        with self.lock:
            if request_id not in self.inputs:
                return False
            self.attempts[request_id] = self.attempts.get(request_id, 0) + 1
            return self.attempts[request_id] <= max_retries

    def unfinished(self) -> list[int]:
        with self.lock:
            return sorted(self.inputs)


@dataclass
class _Driver:
    """Batch scheduling (fixed micro-batches, in order) and recovery by replay."""

    plan: Plan
    cluster: Cluster
    profile: ModelProfile
    spec: Any
    config: RuntimeConfig
    requests: Iterator[Activation | None]
    num_requests: int | None
    replanner: Replanner | None
    faults: Sequence[ScheduledFault]
    on_result: ResultCallback | None
    progress: ProgressCallback | None
    metrics: RunMetrics
    on_error: ErrorCallback | None = None
    on_health: HealthCallback | None = None
    failed: set[str] = field(default_factory=set)
    resend: deque[int] = field(default_factory=deque)
    source_done: threading.Event = field(default_factory=threading.Event)
    source_paused: threading.Event = field(default_factory=threading.Event)
    source_lock: threading.Lock = field(default_factory=threading.Lock)
    aborted: threading.Event = field(default_factory=threading.Event)
    num_nodes: int = 1
    t0_s: float = 0.0
    group: StageGroup | None = None
    failure_log: FailureLog = field(default_factory=FailureLog)
    stages: tuple[StagePlacement, ...] = ()
    unfired: str = ""  # faults the run ended before (a report note)

    def __post_init__(self) -> None:
        self.faults = sorted(self.faults, key=lambda f: f.at_s)
        self.ledger = _Ledger(self.on_result, self.on_error)
        self.cost = CostModel(self.profile, self.cluster)

    def health(self, state: HealthState, detail: str = "") -> None:
        if self.on_health is not None:
            self.on_health(RunHealth(state, self.stages, detail, len(self.failed)))

    # -- set-up -------------------------------------------------------------------------------
    def stage_specs(self, stages: Sequence[StagePlacement], epoch: int) -> list[StageSpec]:
        assert self.group is not None
        config = self.config
        specs = []
        for index, stage in enumerate(stages):
            nxt = stages[index + 1].device if index + 1 < len(stages) else self.cluster.source
            link = config.shaped(self.cluster, stage.device, nxt)
            device = self.cluster.device(stage.device)
            input_bytes = int(self.cost.in_bytes(stage.start))
            # [Note: precision in the cost model]: the wire bytes of the link into this stage.
            wire_in = self.cost.in_bytes(
                stage.start, stages[index - 1].link_encoding if index else None
            )
            specs.append(
                StageSpec(
                    index=index,
                    device=stage.device,
                    start=stage.start,
                    end=stage.end,
                    epoch=epoch,
                    executor="forward",
                    compute=config.compute,
                    run_key_hex=self.group.run_key.hex(),
                    max_frame_bytes=frame_bound_bytes(input_bytes, config),
                    max_connections=config.max_connections,
                    compute_s=self._compute_s(stage) * config.time_scale,
                    input_bytes=int(wire_in),
                    output_bytes=int(self.cost.wire_bytes(stage.end, stage.link_encoding)),
                    link=link,
                    max_in_flight=config.max_in_flight,
                    model_spec=None if self.spec is None else self.spec.model_dump(mode="json"),
                    num_threads=1 if config.compute == "emulated" else device.num_threads,
                    dtype=stage.dtype,
                    link_encoding=stage.link_encoding,
                )
            )
        return specs

    def _compute_s(self, stage: StagePlacement) -> float:
        """Profiled compute of a stage in its dtype (real compute without figures for that
        dtype: the float32 figure, only used as an allowance)."""
        dtype: str = stage.dtype
        if self.config.compute == "real" and dtype not in self.profile.dtypes:
            dtype = self.profile.dtype
        return self.cost.compute_s(stage.device, stage.start, stage.end, dtype)

    def configure(self, stages: tuple[StagePlacement, ...], epoch: int) -> None:
        """Build every stage of `stages` (weights of its units only) and wire the streams."""
        assert self.group is not None
        config = self.config
        link = config.shaped(self.cluster, self.cluster.source, stages[0].device)
        self.group.configure(
            self.stage_specs(stages, epoch),
            source_in_flight=config.max_in_flight,
            source_shapers={stages[0].device: LinkShaper.of(link)},
            expected_compute_s=self._expected(stages),
        )
        self.stages = stages
        self.metrics.stages.set(len(stages))

    def _expected(self, stages: Sequence[StagePlacement]) -> dict[str, float]:
        # Real compute may run slower than a profile taken elsewhere: triple its allowance.
        slack = 3.0 if self.config.compute == "real" else 1.0
        return {s.device: self._compute_s(s) * self.config.time_scale * slack for s in stages}

    # -- the source and the sink ---------------------------------------------------------------
    def _source(self) -> None:
        counter = itertools.count()
        exhausted = False
        while not self.aborted.is_set():
            with self.source_lock:
                sent = self._source_step(counter, exhausted)
            if sent is None:
                exhausted = True
            elif not sent:
                self.aborted.wait(_TICK_S)

    def _source_step(self, counter: Iterator[int], exhausted: bool) -> bool | None:
        """Send one micro-batch; False when there was nothing to do, None when input ran out."""
        group = self.group
        if self.source_paused.is_set() or group is None:
            return False
        if self.resend:
            request_id = self.resend.popleft()
            with self.ledger.lock:
                tensors = self.ledger.inputs.get(request_id)
            if tensors is None:
                return True
        elif not exhausted:
            try:
                tensors = next(self.requests)
            except StopIteration:
                self.source_done.set()
                return None
            if tensors is None:  # the source has nothing now: idle
                return False
            request_id = next(counter)
            self.ledger.accept(request_id, tensors)
            self.metrics.submitted.inc()
        else:
            return False
        if not group.send(Frame("data", request_id, 0, group.epoch, tensors)):
            self.resend.appendleft(request_id)  # the link stopped mid-send: recovery re-queues
            return False
        with self.ledger.lock:
            self.ledger.sent_s.setdefault(request_id, time.time())
        return True

    def _on_result(self, frame: Frame) -> None:
        now = time.time()
        error = frame.meta.get("error")
        if error is None:
            self._answer(frame.request_id, decode_tensors(frame.tensors), now)
            return
        detail = str(frame.meta.get("detail", error))
        if self.ledger.retry(frame.request_id, self.config.max_retries):
            logger.warning("request %d failed (%s); retrying it once", frame.request_id, detail)
            self.resend.append(frame.request_id)
        else:
            logger.error(
                "request %d failed again (%s); answering it with the error",
                frame.request_id,
                detail,
            )
            self._answer(frame.request_id, None, now, detail)

    def _answer(
        self, request_id: int, tensors: Activation | None, now_s: float, error: str = ""
    ) -> None:
        if self.ledger.answer(request_id, tensors, now_s, error):
            self.metrics.completed.inc()
            self.metrics.latency.set(self.ledger.latency_s[request_id] / self.config.time_scale)

    # -- monitoring -------------------------------------------------------------------------
    def run(self) -> None:
        assert self.group is not None
        self.failure_log = self.group.failures
        self.group.ensure(self.plan.devices)
        # Standbys import torch and measure their kernels now, not when they take a stage over.
        warm = None
        if self.config.compute == "real" and self.spec is not None:
            dtypes = [s.dtype for s in self.plan.stages]  # kernels matter to float32 stages
            dtype = "float32" if "float32" in dtypes else dtypes[0]
            warm = (self.spec.model_dump(mode="json"), dtype)
        self.group.ensure(self.config.standby_devices, warm=warm)
        self.group.check_faults(self.faults)
        self.configure(self.plan.stages, 0)
        self.num_nodes = self.group.session.num_nodes()
        self.health("running")
        self.t0_s = time.time()
        threading.Thread(target=self._source, daemon=True, name="source").start()
        self.group.watch(self._expected(self.plan.stages))
        pending_faults = list(self.faults)
        last_progress_s = 0.0
        last_change_s = time.time()
        last_done = 0
        now = time.time()
        while True:
            now = time.time()
            with self.ledger.lock:
                done = len(self.ledger.done_s)
                unfinished = len(self.ledger.inputs)
            if self.source_done.is_set() and unfinished == 0:
                break
            if done != last_done or unfinished == 0:  # idle is not a lack of progress
                last_done, last_change_s = done, now
            while pending_faults and now - self.t0_s >= pending_faults[0].at_s:
                self.group.inject(pending_faults.pop(0))
            suspicions = self.group.detect(now)
            if suspicions:
                self._recover(suspicions)
                last_change_s = time.time()
                continue
            if now - last_change_s > max(60.0, 20 * self.config.hang_timeout_s):
                logger.error("no progress for %.0f s; giving up", now - last_change_s)
                break
            if self.progress is not None and now - last_progress_s >= self.config.progress_period_s:
                last_progress_s = now
                self.progress(done, self.num_requests, self._recent_throughput(now))
            self.aborted.wait(_TICK_S)
        self.aborted.set()
        self.unfired = unfired_note(pending_faults, now - self.t0_s)
        if self.progress is not None:
            self.progress(len(self.ledger.done_s), self.num_requests, self._recent_throughput(now))

    def _recent_throughput(self, now_s: float, window_s: float = 5.0) -> float:
        with self.ledger.lock:
            recent = [t for t in self.ledger.done_s.values() if t > now_s - window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now_s - min(recent), 1e-9)
        value = len(recent) * self.plan.batch_size / span * self.config.time_scale
        self.metrics.throughput.set(value)
        self.metrics.in_flight.set(len(self.ledger.inputs))
        return value

    # -- recovery -------------------------------------------------------------------------------
    def _recover(self, suspicions: list[Suspicion]) -> None:
        group = self.group
        assert group is not None
        detected_wall_s = time.time()
        self.health("recovering", ", ".join(f"{s.device} lost ({s.cause})" for s in suspicions))
        # 1. Pause the source and ban the failed devices.
        self.source_paused.set()
        failed_now = group.lose(suspicions)
        for suspicion in suspicions:
            self.metrics.failures.labels(cause=suspicion.cause).inc()
        self.failed |= failed_now
        # 2. Halt the survivors and collect what they hold (one that does not answer failed too).
        survivors = [s.device for s in self.stages if s.device not in self.failed]
        retained, silent = group.halt(survivors)
        self.failed |= set(silent)
        with self.source_lock:  # the source finished its step; it stays paused from here
            pass
        # 3. New placement: a standby takes the stage, else re-plan over the survivors.
        stages = standby_stages(self.stages, self.failed, self.config.standby_devices)
        action: Action = "standby"
        if stages is None:
            if self.replanner is None or not self.config.replan:
                group.failures.detected(suspicions, detected_wall_s, "none")
                self.health("failed", f"{sorted(self.failed)} failed; no standby or re-planner")
                raise DeviceUnavailableError(
                    f"device(s) {sorted(self.failed)} failed and there is no standby device or "
                    "re-planner; pass standby devices or a replanner (api.run does)"
                )
            new_plan = self.replanner(self.cluster.without(self.failed))
            stages = new_plan.stages
            action = "replan"
            group.session.check_devices([s.device for s in stages])
        logger.warning(
            "[failover] new stages: %s", ", ".join(f"{s.device}[{s.start},{s.end})" for s in stages)
        )
        self.configure(tuple(stages), group.epoch + 1)
        # 4. Replay every unfinished micro-batch from the furthest boundary that survived.
        replays = choose_replays(self.ledger.unfinished(), retained, stages)
        from_input = [r.request_id for r in replays if r.boundary == 0]
        by_stage: dict[str, list[dict[str, Any]]] = {}
        starts = {s.start: s.device for s in stages}
        now = time.time()
        for replay in replays:
            if replay.boundary == stages[-1].end:
                self._answer(replay.request_id, replay.tensors, now)
            elif replay.boundary > 0:
                by_stage.setdefault(starts[replay.boundary], []).append(
                    {
                        "request_id": replay.request_id,
                        "boundary": replay.boundary,
                        "tensors": replay.tensors,
                    }
                )
        for device, items in by_stage.items():
            group.inject_items(device, items)
        self.resend = deque([*from_input, *(r for r in self.resend if r not in from_input)])
        self.ledger.replayed += len(replays)
        self.metrics.replayed.inc(len(replays))
        group.failures.detected(
            suspicions,
            detected_wall_s,
            action,
            replayed=len(replays),
            from_stage=len(replays) - len(from_input),
            stages=tuple(stages),
        )
        # Replays may have taken a while on a loaded host: count silence from now on.
        group.watch(self._expected(stages))
        self.source_paused.clear()
        self.health("running", f"recovered from {sorted(failed_now)} by {action}")

    def failure_records(self) -> list[FailureRecord]:
        with self.ledger.lock:
            times = list(self.ledger.done_s.values())
        return self.failure_log.records(self.t0_s, times)


def _emulated_requests(count: int, num_bytes: int) -> Iterator[Activation]:
    payload = np.zeros(num_bytes, dtype=np.uint8)
    for _ in range(count):
        yield {"input": payload}


def _real_requests(spec: Any, batch_size: int, count: int, seed: int) -> Iterator[Activation]:
    from edgesplit.models import example_input

    for index in range(count):
        activation = example_input(spec, batch_size, seed=seed + index)
        yield {k: v.detach().contiguous().numpy() for k, v in activation.items()}


def _as_numpy(activation: Mapping[str, Any] | None) -> Activation | None:
    if activation is None:  # "nothing now" (see run_plan)
        return None
    result = {}
    for name, value in activation.items():
        if hasattr(value, "detach"):
            value = value.detach().contiguous().numpy()
        result[name] = np.ascontiguousarray(value)
    return result


def _check_inputs(
    plan: Plan,
    cluster: Cluster,
    profile: ModelProfile,
    config: RuntimeConfig,
    faults: Sequence[ScheduledFault],
) -> None:
    plan.validate_against(profile, cluster)
    if plan.batch_size != profile.batch_size:
        raise ConfigError(
            f"plan is for micro-batch {plan.batch_size} but the profile for {profile.batch_size};"
            " re-plan with this profile"
        )
    CostModel(profile, cluster)  # a kind without times (e.g. not prepared): ProfileMissingError
    for name in config.standby_devices:
        cluster.device(name)
    check_run_devices(plan.devices, config.standby_devices, faults)


def run_plan(
    plan: Plan,
    cluster: Cluster,
    profile: ModelProfile,
    spec: Any = None,
    config: RuntimeConfig | None = None,
    requests: int | Iterable[Mapping[str, Any] | None] = 64,
    replanner: Replanner | None = None,
    *,
    faults: Sequence[ScheduledFault] = (),
    on_result: ResultCallback | None = None,
    on_error: ErrorCallback | None = None,
    on_health: HealthCallback | None = None,
    progress: ProgressCallback | None = None,
    timeline_path: Path | str | None = None,
    metrics_port: int | None = None,
) -> RunReport:
    """Run `plan` on Ray: one actor per device, micro-batches streaming, failover on failure.

    Args:
        plan: the placement to run (validated against `profile` and `cluster` first).
        cluster: devices, links (shaped in emulation) and the source device.
        profile: the model profile the plan was made from (emulated times and sizes), with
            the cluster's derived kinds added (`api.prepare_profile`; `api.run` does it).
        spec: an `edgesplit.models.ModelSpec` for `compute="real"` (default: from `plan.model`).
        config: runtime knobs (`RuntimeConfig`).
        requests: a number of synthetic micro-batches, or an iterable of input activations
            (name -> array/tensor), consumed lazily under back-pressure. A long-lived source
            (a server's queue) yields None for "nothing now": the run idles (no give-up while
            nothing is unfinished) and recovery can go on between two yields, so it should
            not block for long in between.
        replanner: `cluster_without_failed -> Plan`, called after a failure when no standby
            device is left (api.py injects the planner; the runtime never imports planners).
        faults: scheduled fault injections (`--kill DEVICE@SECONDS`).
        on_result: called once per micro-batch, in request order, with its output.
        on_error: called instead of `on_result`, in the same order, for a micro-batch answered
            with an error (its executor raised twice).
        on_health: called with a `RunHealth` on each change (running, recovering, failed, ...).
        progress: called as (completed, total or None, samples/s) about every 0.5 s.
        timeline_path: where to write the Gantt plot (PNG), if given.
        metrics_port: serve Prometheus text on 127.0.0.1:PORT while running.

    Returns:
        The `RunReport` (file contract of issue 3).

    Raises:
        ConfigError: plan/cluster/profile mismatch, unknown devices, a stage that cannot be built.
        DeviceUnavailableError: a device has no Ray node, or failures left no way to continue.
    """
    config = config or RuntimeConfig()
    _check_inputs(plan, cluster, profile, config, faults)
    if config.compute == "real" and spec is None:
        from edgesplit.models import model_spec_from_name

        spec = model_spec_from_name(plan.model)
    stream: Iterator[Activation | None]
    if isinstance(requests, int):
        num_requests: int | None = requests
        stream = (
            _real_requests(spec, plan.batch_size, requests, config.seed)
            if config.compute == "real"
            else _emulated_requests(requests, int(profile.input_bytes))
        )
    else:
        num_requests = len(requests) if isinstance(requests, Sequence) else None
        stream = (_as_numpy(r) for r in requests)
    metrics = RunMetrics()
    if metrics_port is not None:
        metrics.serve(metrics_port, config.host)
    devices = [*plan.devices, *config.standby_devices]
    driver = _Driver(
        plan,
        cluster,
        profile,
        spec,
        config,
        iter(stream),
        num_requests,
        replanner,
        faults,
        on_result,
        progress,
        metrics,
        on_error,
        on_health,
    )
    error: BaseException | None = None
    session: RaySession | None = None
    try:
        session = RaySession.open(config, devices)
        output_bytes = float(profile.units[-1].output_bytes)
        driver.group = StageGroup(
            session, config, driver._on_result, frame_bound_bytes(output_bytes, config)
        )
        driver.run()
    except BaseException as e:
        error = e
    timelines: list[dict[str, Any]] = []
    try:
        if driver.group is not None and driver.t0_s:
            timelines = driver.group.timelines()
    finally:
        driver.aborted.set()
        if driver.group is not None:
            driver.group.close()
        metrics.close()
        # Drop every actor handle and object ref before Ray shuts down (a ref collected after
        # ray.shutdown() can end the process on this Ray build).
        driver.group = None
        gc.collect()
        if session is not None:
            session.close()
    driver.health("stopped" if error is None else "failed", "" if error is None else str(error))
    if error is not None and not driver.t0_s:
        raise error
    report = _build_report(driver, timelines, timeline_path, error)
    if error is not None and not isinstance(error, EdgesplitError):
        raise error
    return report


def _build_report(
    driver: _Driver,
    timelines: list[dict[str, Any]],
    timeline_path: Path | str | None,
    error: BaseException | None,
) -> RunReport:
    ledger = driver.ledger
    notes = f"run ended early: {type(error).__name__}: {error}" if error is not None else ""
    if driver.unfired:
        notes += f"{'; ' if notes else ''}{driver.unfired}"
    if ledger.errors:
        first = min(ledger.errors)
        notes += (
            f"{'; ' if notes else ''}{len(ledger.errors)} request(s) answered with an error, "
            f"e.g. {first}: {ledger.errors[first]}"
        )
    delivered = ledger.delivered
    counts = RequestCounts(
        submitted=ledger.submitted,
        completed=len(ledger.done_s),
        lost=ledger.submitted - len(ledger.done_s),
        duplicated=len(delivered) - len(set(delivered)),
        replayed=ledger.replayed,
        duplicates_suppressed=ledger.duplicates_suppressed,
        errored=len(ledger.errors),
    )
    return run_report(
        driver.plan,
        driver.config,
        t0_s=driver.t0_s,
        done_s=list(ledger.done_s.values()),
        latency_s=list(ledger.latency_s.values()),
        counts=counts,
        failures=driver.failure_records() if driver.t0_s else [],
        timelines=timelines,
        timeline_path=timeline_path,
        notes=notes,
        ray_nodes=driver.num_nodes,
    )
