"""Micro-batch streaming through a Plan's stages, with failure detection, failover and replay.

Owns `run_plan` (the runtime's entry point for api.py) and the driver: the request source (credit
window + shaped link into stage 0), the result sink (acks, exactly-once, in-order delivery), the
monitor loop (actor death via Ray, heartbeats, per-micro-batch deadlines, scheduled faults) and
recovery (exclude -> standby or injected re-planner -> reconfigure -> replay from the furthest
retained boundary). Never imports planners. See [Note: retained activations] in stage.py.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesplit.core.cluster import Cluster
from edgesplit.core.cost import CostModel
from edgesplit.core.plan import Plan, StagePlacement
from edgesplit.core.profile import ModelProfile
from edgesplit.errors import ConfigError, DeviceUnavailableError, EdgesplitError
from edgesplit.runtime.cluster import ActorDiedError, RaySession, StageActor
from edgesplit.runtime.config import RuntimeConfig, ScheduledFault
from edgesplit.runtime.emulation import LinkShaper
from edgesplit.runtime.failover import FailureDetector, Suspicion, choose_replays, standby_stages
from edgesplit.runtime.metrics import RunMetrics
from edgesplit.runtime.report import (
    FailureRecord,
    Measured,
    PredictedFigures,
    RequestCounts,
    RunReport,
    StageStats,
    TimelineEntry,
    latency_stats,
    plot_timeline,
    steady_period_s,
)
from edgesplit.runtime.stage import StageSpec
from edgesplit.runtime.transport import Connection, Frame, connect, listen

__all__ = ["Activation", "ProgressCallback", "Replanner", "ResultCallback", "run_plan"]

logger = logging.getLogger(__name__)

Activation = dict[str, np.ndarray]
Replanner = Callable[[Cluster], Plan]
ResultCallback = Callable[[int, Activation], None]
ProgressCallback = Callable[[int, int | None, float], None]
_TICK_S = 0.05


def prepared_profile(profile: ModelProfile, cluster: Cluster) -> ModelProfile:
    """The profile with the cluster's derived kinds added (when it lacks them)."""
    for kind in cluster.kinds:
        if kind.name not in profile.device_kinds:
            profile = profile.with_derived_kind(kind.name, kind.relative_to, kind.slowdown)
    return profile


# -- the driver's two ends of the pipeline ---------------------------------------------------
@dataclass
class _SourceLink:
    """Driver -> stage 0 for one epoch: credit window, shaped link, ack reader."""

    conn: Connection
    epoch: int
    max_in_flight: int
    shaper: LinkShaper | None
    stopped: threading.Event = field(default_factory=threading.Event)
    credit: threading.Condition = field(default_factory=threading.Condition)
    unacked: int = 0
    wire: queue.Queue[tuple[float, Frame]] = field(default_factory=queue.Queue)
    lost_s: float | None = None  # when stage 0 closed the stream (its process died)

    def start(self) -> None:
        for target in (self._write, self._read_acks):
            threading.Thread(target=target, daemon=True, name=f"source-{target.__name__}").start()

    def send(self, frame: Frame) -> bool:
        """Blocks for a credit; False when this link was stopped first."""
        with self.credit:
            while self.unacked >= self.max_in_flight:
                if self.stopped.is_set():
                    return False
                self.credit.wait(_TICK_S)
            if self.stopped.is_set():
                return False
            self.unacked += 1
        now = time.time()
        due_s = self.shaper.due_s(frame.num_bytes, now) if self.shaper is not None else now
        self.wire.put((due_s, frame))
        return True

    def _write(self) -> None:
        while not self.stopped.is_set():
            try:
                due_s, frame = self.wire.get(timeout=_TICK_S)
            except queue.Empty:
                continue
            delay_s = due_s - time.time()
            if delay_s > 0 and self.stopped.wait(delay_s):
                return
            try:
                self.conn.send(frame)
            except EdgesplitError:
                return

    def _read_acks(self) -> None:
        while not self.stopped.is_set():
            frame = self.conn.recv()
            if frame is None:
                if not self.stopped.is_set():
                    self.lost_s = time.time()
                return
            if frame.type == "ack":
                with self.credit:
                    self.unacked -= 1
                    self.credit.notify_all()

    def stop(self) -> None:
        self.stopped.set()
        self.conn.close()


@dataclass
class _Ledger:
    """Every accepted micro-batch from submission to its one delivery (thread-safe)."""

    on_result: ResultCallback | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    inputs: dict[int, Activation] = field(default_factory=dict)  # accepted, not yet answered
    sent_s: dict[int, float] = field(default_factory=dict)
    done_s: dict[int, float] = field(default_factory=dict)
    latency_s: dict[int, float] = field(default_factory=dict)
    waiting: dict[int, Activation] = field(default_factory=dict)  # answered, not yet delivered
    delivered: list[int] = field(default_factory=list)
    next_to_deliver: int = 0
    submitted: int = 0
    duplicates_suppressed: int = 0
    replayed: int = 0
    first_result_after_s: float | None = None
    answered: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.answered = threading.Condition(self.lock)

    def accept(self, request_id: int, tensors: Activation) -> None:
        with self.lock:
            self.inputs[request_id] = tensors
            self.submitted += 1

    def answer(self, request_id: int, tensors: Activation, now_s: float) -> bool:
        with self.lock:
            if request_id in self.done_s or request_id not in self.inputs:
                self.duplicates_suppressed += 1
                return False
            del self.inputs[request_id]
            self.done_s[request_id] = now_s
            self.latency_s[request_id] = now_s - self.sent_s.get(request_id, now_s)
            self.waiting[request_id] = tensors
            while self.next_to_deliver in self.waiting:
                rid = self.next_to_deliver
                output = self.waiting.pop(rid)
                if self.on_result is not None:
                    self.on_result(rid, output)
                self.delivered.append(rid)
                self.next_to_deliver += 1
            self.answered.notify_all()
            return True

    def unfinished(self) -> list[int]:
        with self.lock:
            return sorted(self.inputs)


@dataclass
class _Stages:
    """The current epoch's placement, actors and stream addresses."""

    epoch: int
    stages: tuple[StagePlacement, ...]
    actors: dict[str, StageActor]
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)


class _Driver:
    def __init__(
        self,
        plan: Plan,
        cluster: Cluster,
        profile: ModelProfile,
        spec: Any,
        config: RuntimeConfig,
        requests: Iterator[Activation],
        num_requests: int | None,
        replanner: Replanner | None,
        faults: Sequence[ScheduledFault],
        on_result: ResultCallback | None,
        progress: ProgressCallback | None,
        metrics: RunMetrics | None,
    ) -> None:
        self.plan = plan
        self.cluster = cluster
        self.profile = profile
        self.spec = spec
        self.config = config
        self.requests = requests
        self.num_requests = num_requests
        self.replanner = replanner
        self.faults = sorted(faults, key=lambda f: f.at_s)
        self.progress = progress
        self.metrics = metrics
        self.ledger = _Ledger(on_result)
        self.failed: set[str] = set()
        self.failures: list[dict[str, Any]] = []
        self.detector = FailureDetector(
            config.hang_timeout_s, config.batch_deadline_s, config.stream_loss_grace_s
        )
        self.resend: list[int] = []
        self.source_done = threading.Event()
        self.source_paused = threading.Event()
        self.source_lock = threading.Lock()
        self.num_nodes = 1
        self.aborted = threading.Event()
        self.link: _SourceLink | None = None
        self.t0_s = 0.0
        self.session: RaySession | None = None
        self.current: _Stages | None = None
        self.all_actors: dict[str, StageActor] = {}
        self.sink: Any = None
        self.sink_conns: list[Connection] = []
        self.sink_lost: tuple[int, float] | None = None
        self.retired_timelines: list[dict[str, Any]] = []

    # -- set-up -------------------------------------------------------------------------------
    def stage_specs(self, stages: Sequence[StagePlacement], epoch: int) -> list[StageSpec]:
        cost = CostModel(self.profile, self.cluster)
        config = self.config
        specs = []
        for index, stage in enumerate(stages):
            nxt = stages[index + 1].device if index + 1 < len(stages) else self.cluster.source
            bandwidth, latency = self.cluster.link(stage.device, nxt)
            shaped = config.shape_links and stage.device != nxt
            device = self.cluster.device(stage.device)
            specs.append(
                StageSpec(
                    index=index,
                    device=stage.device,
                    start=stage.start,
                    end=stage.end,
                    epoch=epoch,
                    compute=config.compute,
                    compute_s=cost.compute_s(stage.device, stage.start, stage.end)
                    * config.time_scale,
                    input_bytes=int(cost.in_bytes(stage.start)),
                    output_bytes=int(self.profile.units[stage.end - 1].output_bytes),
                    bandwidth_bytes_per_s=bandwidth / config.time_scale if shaped else None,
                    latency_s=latency * config.time_scale if shaped else 0.0,
                    max_in_flight=config.max_in_flight,
                    model_spec=None if self.spec is None else self.spec.model_dump(mode="json"),
                    num_threads=1 if config.compute == "emulated" else device.num_threads,
                )
            )
        return specs

    def ensure_actors(self, devices: Iterable[str]) -> None:
        assert self.session is not None
        new = [d for d in devices if d not in self.all_actors]
        for device in new:
            self.all_actors[device] = self.session.start_actor(device)
        if not new:
            return
        refs = [self.all_actors[d].call("info") for d in new]
        try:
            infos = self.session.get(refs, self.config.startup_timeout_s)
        except (ActorDiedError, TimeoutError) as e:
            raise DeviceUnavailableError(
                f"stage actors for {new} did not start within {self.config.startup_timeout_s} s:"
                f" {e}"
            ) from e
        for device, info in zip(new, infos, strict=True):
            self.all_actors[device].info = info

    def configure(self, stages: tuple[StagePlacement, ...], epoch: int) -> _Stages:
        """Build every stage of `stages` (weights of its units only) and wire the streams."""
        assert self.session is not None
        self.ensure_actors(s.device for s in stages)
        specs = self.stage_specs(stages, epoch)
        actors = {s.device: self.all_actors[s.device] for s in stages}
        refs = [actors[s.device].call("configure", s.model_dump()) for s in specs]
        try:
            addresses = self.session.get(refs, self.config.startup_timeout_s)
        except ActorDiedError as e:
            raise DeviceUnavailableError(f"a stage actor died while configuring: {e}") from e
        except TimeoutError as e:
            raise DeviceUnavailableError(f"configuring stages timed out: {e}") from e
        except Exception as e:  # the actor's own error (e.g. a checkpoint missing weights)
            cause = getattr(e, "cause", None) or e
            raise ConfigError(f"building a stage failed: {cause}") from e
        current = _Stages(epoch, stages, actors)
        current.addresses = {s.device: tuple(a) for s, a in zip(stages, addresses, strict=True)}
        sink_address = self.sink.address
        start_refs = []
        for index, stage in enumerate(stages):
            downstream = (
                current.addresses[stages[index + 1].device]
                if index + 1 < len(stages)
                else sink_address
            )
            start_refs.append(actors[stage.device].call("start", downstream))
        self.session.get(start_refs, self.config.startup_timeout_s)
        conn = connect(current.addresses[stages[0].device], self.config.startup_timeout_s)
        conn.send(Frame("hello", epoch=epoch, meta={"from": "driver"}))
        first = stages[0].device
        shaper = None
        if self.config.shape_links and first != self.cluster.source:
            bandwidth, latency = self.cluster.link(self.cluster.source, first)
            shaper = LinkShaper(
                bandwidth / self.config.time_scale, latency * self.config.time_scale
            )
        link = _SourceLink(conn, epoch, self.config.max_in_flight, shaper)
        link.start()
        self.link = link
        self._watch(stages)
        if self.metrics is not None:
            self.metrics.stages.set(len(stages))
        return current

    def _watch(self, stages: Sequence[StagePlacement]) -> None:
        """(Re)start heartbeat clocks: silence is counted from the moment the stages are live."""
        now = time.time()
        cost = CostModel(self.profile, self.cluster)
        # Real compute may run slower than a profile taken elsewhere: triple its allowance.
        slack = 3.0 if self.config.compute == "real" else 1.0
        for stage in stages:
            expected = cost.compute_s(stage.device, stage.start, stage.end) * self.config.time_scale
            self.detector.watch(stage.device, now, expected * slack)

    # -- the two driver threads ------------------------------------------------------------------
    def _source(self) -> None:
        counter = itertools.count()
        exhausted = False
        while not self.aborted.is_set():
            with self.source_lock:
                sent = self._source_step(counter, exhausted)
            if sent is None:
                exhausted = True
            elif not sent:
                time.sleep(_TICK_S)

    def _source_step(self, counter: Iterator[int], exhausted: bool) -> bool | None:
        """Send one micro-batch; False when there was nothing to do, None when input ran out."""
        link = self.link
        if self.source_paused.is_set() or link is None:
            return False
        if self.resend:
            request_id = self.resend.pop(0)
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
            request_id = next(counter)
            self.ledger.accept(request_id, tensors)
            if self.metrics is not None:
                self.metrics.submitted.inc()
        else:
            return False
        if not link.send(Frame("data", request_id, 0, link.epoch, tensors)):
            self.resend.insert(0, request_id)  # the link stopped mid-send: recovery re-queues it
            return False
        with self.ledger.lock:
            self.ledger.sent_s.setdefault(request_id, time.time())
        return True

    def _accept_results(self) -> None:
        while not self.aborted.is_set():
            conn = self.sink.accept(timeout_s=0.2)
            if conn is None:
                continue
            self.sink_conns.append(conn)
            threading.Thread(
                target=self._read_results, args=(conn,), daemon=True, name="sink-read"
            ).start()

    def _read_results(self, conn: Connection) -> None:
        epoch = None
        while True:
            frame = conn.recv()
            if frame is None:
                current = self.current
                if current is not None and epoch == current.epoch and not self.aborted.is_set():
                    self.sink_lost = (epoch, time.time())  # the last stage's process is gone
                return
            if frame.type == "hello":
                epoch = frame.epoch
                continue
            if frame.type != "data" or self.current is None or epoch != self.current.epoch:
                continue
            now = time.time()
            self._answer(frame.request_id, frame.tensors, now)
            try:
                conn.send(Frame("ack", frame.request_id, epoch=frame.epoch))
            except EdgesplitError:
                return

    def _answer(self, request_id: int, tensors: Activation, now_s: float) -> None:
        if self.ledger.answer(request_id, tensors, now_s):
            if self.ledger.first_result_after_s is None:
                self.ledger.first_result_after_s = now_s
            if self.metrics is not None:
                self.metrics.completed.inc()
                self.metrics.latency.set(self.ledger.latency_s[request_id] / self.config.time_scale)

    # -- monitoring -------------------------------------------------------------------------
    def run(self) -> None:
        assert self.session is not None
        self.current = self.configure(self.plan.stages, 0)
        self.num_nodes = self.session.num_nodes()
        self.t0_s = time.time()
        threading.Thread(target=self._accept_results, daemon=True, name="sink").start()
        threading.Thread(target=self._source, daemon=True, name="source").start()
        self._watch(self.plan.stages)
        pings: dict[str, Any] = {}
        pending_faults = list(self.faults)
        last_progress_s = 0.0
        last_change_s = time.time()
        last_done = 0
        while True:
            now = time.time()
            with self.ledger.lock:
                done = len(self.ledger.done_s)
                unfinished = len(self.ledger.inputs)
            if self.source_done.is_set() and unfinished == 0:
                break
            if done != last_done:
                last_done, last_change_s = done, now
            while pending_faults and now - self.t0_s >= pending_faults[0].at_s:
                self._inject(pending_faults.pop(0))
            suspicions = self._detect(pings, now)
            if suspicions:
                self._recover(suspicions)
                pings.clear()
                last_change_s = time.time()
                continue
            if now - last_change_s > max(60.0, 20 * self.config.hang_timeout_s):
                logger.error("no progress for %.0f s; giving up", now - last_change_s)
                break
            if self.progress is not None and now - last_progress_s >= self.config.progress_period_s:
                last_progress_s = now
                self.progress(done, self.num_requests, self._recent_throughput(now))
            time.sleep(_TICK_S)
        self.aborted.set()
        if self.progress is not None:
            self.progress(len(self.ledger.done_s), self.num_requests, self._recent_throughput(now))

    def _recent_throughput(self, now_s: float, window_s: float = 5.0) -> float:
        with self.ledger.lock:
            recent = [t for t in self.ledger.done_s.values() if t > now_s - window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now_s - min(recent), 1e-9)
        value = len(recent) * self.plan.batch_size / span * self.config.time_scale
        if self.metrics is not None:
            self.metrics.throughput.set(value)
            self.metrics.in_flight.set(len(self.ledger.inputs))
        return value

    def _detect(self, pings: dict[str, Any], now_s: float) -> list[Suspicion]:
        assert self.session is not None
        assert self.current is not None
        actors = list(self.current.actors.values())
        found: list[Suspicion] = []
        for actor in self.session.dead_actors(actors, timeout_s=0):
            found.append(
                Suspicion(
                    actor.device,
                    "actor_died",
                    self.detector.last_heard_s(actor.device),
                    "Ray reports the actor dead",
                )
            )
        if found:
            return found
        # Heartbeats: one outstanding ping per stage; replies refresh the detector.
        ready = set(self.session.poll(list(pings.values()), 0)) if pings else set()
        for device, ref in list(pings.items()):
            if ref in ready:
                ok, value = self.session.result(ref)
                del pings[device]
                if ok and value.get("epoch") == self.current.epoch:
                    self.detector.heard(device, time.time(), value["busy_since_s"])
                    lost_s = value.get("downstream_lost_s")
                    if lost_s is not None:
                        nxt = self._downstream_of(device)
                        if nxt is not None:
                            self.detector.unreachable(nxt, lost_s)
                    if value.get("error"):
                        raise EdgesplitError(
                            f"stage on '{device}' failed: {value['error']}; run with --debug"
                        )
        for device, actor in self.current.actors.items():
            if device not in pings:
                pings[device] = actor.call("ping")
        stages = self.current.stages
        if self.link is not None and self.link.lost_s is not None:
            self.detector.unreachable(stages[0].device, self.link.lost_s)
        if self.sink_lost is not None and self.sink_lost[0] == self.current.epoch:
            self.detector.unreachable(stages[-1].device, self.sink_lost[1])
        return self.detector.check(now_s)

    def _downstream_of(self, device: str) -> str | None:
        assert self.current is not None
        names = [s.device for s in self.current.stages]
        index = names.index(device) if device in names else -1
        return names[index + 1] if 0 <= index < len(names) - 1 else None

    def _inject(self, fault: ScheduledFault) -> None:
        actor = self.all_actors.get(fault.device)
        if actor is None:
            logger.warning("fault for '%s' ignored: no stage runs there", fault.device)
            return
        logger.info("injecting %s on %s at %.2f s", fault.action, fault.device, fault.at_s)
        self.failures.append({"device": fault.device, "at_wall_s": time.time(), "injected": True})
        if callable(fault.action):
            fault.action(dict(actor.info))
            return
        pid = int(actor.info["pid"])
        local = (
            str(actor.info.get("host", "")).startswith("127.")
            or actor.info.get("host") == self.config.host
        )
        if not local:
            assert self.session is not None
            self.session.kill(actor)
            return
        os.kill(pid, signal.SIGKILL if fault.action == "kill" else signal.SIGSTOP)

    # -- recovery -------------------------------------------------------------------------------
    def _recover(self, suspicions: list[Suspicion]) -> None:
        assert self.session is not None
        assert self.current is not None
        detected_wall_s = time.time()
        for suspicion in suspicions:
            logger.warning(
                "[failover] %s failed (%s: %s)", suspicion.device, suspicion.cause, suspicion.detail
            )
        # 1. Pause the source and ban the failed devices.
        self.source_paused.set()
        if self.link is not None:
            self.link.stop()
        failed_now = {s.device for s in suspicions}
        for device in failed_now:
            self.session.kill(self.all_actors[device])
            self.detector.forget(device)
            self.all_actors.pop(device, None)
            if self.metrics is not None:
                cause = next(s.cause for s in suspicions if s.device == device)
                self.metrics.failures.labels(cause=cause).inc()
        self.failed |= failed_now
        # 2. Halt the survivors and collect what they hold (one that does not answer failed too).
        survivors = [a for d, a in self.current.actors.items() if d not in self.failed]
        refs = {a.device: a.call("halt", self.config.halt_timeout_s) for a in survivors}
        retained: dict[int, list[tuple[int, Any]]] = {}
        for device, ref in refs.items():
            try:
                items = self.session.get(ref, self.config.halt_timeout_s + 5)
            except (ActorDiedError, TimeoutError) as e:
                logger.warning("[failover] %s did not halt (%s); excluding it too", device, e)
                self.session.kill(self.all_actors[device])
                self.all_actors.pop(device, None)
                self.detector.forget(device)
                self.failed.add(device)
                failed_now.add(device)
                continue
            for item in items:
                retained.setdefault(int(item["request_id"]), []).append(
                    (int(item["boundary"]), item["tensors"])
                )
        with self.source_lock:  # the source finished its step; it stays paused from here
            pass
        for conn in self.sink_conns:
            conn.close()
        self.sink_conns.clear()
        # 3. New placement: a standby takes the stage, else re-plan over the survivors.
        stages = standby_stages(self.current.stages, self.failed, self.config.standby_devices)
        action = "standby"
        if stages is None:
            if self.replanner is None or not self.config.replan:
                self._record(suspicions, detected_wall_s, "none", 0, 0, ())
                raise DeviceUnavailableError(
                    f"device(s) {sorted(self.failed)} failed and there is no standby device or "
                    "re-planner; pass standby devices or a replanner (api.run does)"
                )
            survivors_cluster = self.cluster.without(self.failed)
            new_plan = self.replanner(survivors_cluster)
            stages = new_plan.stages
            action = "replan"
            self.session.check_devices([s.device for s in stages])
        logger.warning(
            "[failover] new stages: %s", ", ".join(f"{s.device}[{s.start},{s.end})" for s in stages)
        )
        epoch = self.current.epoch + 1
        for device in list(self.detector.devices):
            self.detector.forget(device)
        self.current = self.configure(tuple(stages), epoch)
        # 4. Replay every unfinished micro-batch from the furthest boundary that survived.
        unfinished = self.ledger.unfinished()
        replays = choose_replays(unfinished, retained, stages)
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
            self.session.get(self.current.actors[device].call("inject", items), 30.0)
        self.resend = from_input + [r for r in self.resend if r not in from_input]
        self.ledger.replayed += len(replays)
        if self.metrics is not None:
            self.metrics.replayed.inc(len(replays))
        self.ledger.first_result_after_s = None
        self._record(
            suspicions,
            detected_wall_s,
            action,
            len(replays),
            len(replays) - len(from_input),
            tuple(stages),
        )
        # Replays may have taken a while on a loaded host: count silence from now on.
        self._watch(stages)
        self.source_paused.clear()

    def _record(
        self,
        suspicions: list[Suspicion],
        detected_wall_s: float,
        action: str,
        replayed: int,
        from_stage: int,
        stages: tuple[StagePlacement, ...],
    ) -> None:
        for suspicion in suspicions:
            injected = [
                f
                for f in self.failures
                if f["device"] == suspicion.device
                and f.get("injected")
                and "detected_wall_s" not in f
            ]
            if injected:
                entry = injected[0]
            else:
                entry = {
                    "device": suspicion.device,
                    "at_wall_s": suspicion.last_heard_s,
                    "injected": False,
                }
                self.failures.append(entry)
            entry.update(
                detected_wall_s=detected_wall_s,
                cause=suspicion.cause,
                action=action,
                replayed=replayed,
                from_stage=from_stage,
                stages=stages,
            )

    def failure_records(self) -> list[FailureRecord]:
        records = []
        ordered = sorted(self.failures, key=lambda f: f["at_wall_s"])
        for entry in ordered:
            if "detected_wall_s" not in entry:
                continue  # injected into a device whose failure was never observed
            recovered = None
            later = [t for t in self.ledger.done_s.values() if t > entry["detected_wall_s"]]
            if later:
                recovered = min(later) - entry["at_wall_s"]
            records.append(
                FailureRecord(
                    device=entry["device"],
                    at_s=entry["at_wall_s"] - self.t0_s,
                    detected_after_s=entry["detected_wall_s"] - entry["at_wall_s"],
                    recovered_after_s=recovered,
                    cause=entry["cause"],
                    action=entry["action"],
                    replayed=entry["replayed"],
                    replayed_from_stage_output=entry["from_stage"],
                    new_stages=entry["stages"],
                )
            )
        return records

    # -- tear-down and report ------------------------------------------------------------------
    def collect_timelines(self) -> list[dict[str, Any]]:
        assert self.session is not None
        result = []
        for device, actor in self.all_actors.items():
            try:
                for timeline in self.session.get(actor.call("timelines"), 10.0):
                    result.append({"device": device, **timeline})
            except (ActorDiedError, TimeoutError) as e:
                logger.debug("no timeline from %s: %s", device, e)
        return result

    def shutdown(self) -> None:
        self.aborted.set()
        if self.link is not None:
            self.link.stop()
        for conn in self.sink_conns:
            conn.close()
        if self.sink is not None:
            self.sink.close()
        if self.session is None:
            return
        for actor in self.all_actors.values():
            self.session.kill(actor)


def _emulated_requests(count: int, num_bytes: int) -> Iterator[Activation]:
    payload = np.zeros(num_bytes, dtype=np.uint8)
    for _ in range(count):
        yield {"input": payload}


def _real_requests(spec: Any, batch_size: int, count: int, seed: int) -> Iterator[Activation]:
    from edgesplit.models import example_input

    for index in range(count):
        activation = example_input(spec, batch_size, seed=seed + index)
        yield {k: v.detach().contiguous().numpy() for k, v in activation.items()}


def _as_numpy(activation: Mapping[str, Any]) -> Activation:
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
) -> ModelProfile:
    plan.validate_against(profile, cluster)
    if plan.batch_size != profile.batch_size:
        raise ConfigError(
            f"plan is for micro-batch {plan.batch_size} but the profile for {profile.batch_size};"
            " re-plan with this profile"
        )
    profile = prepared_profile(profile, cluster)
    CostModel(profile, cluster)  # raises ProfileMissingError naming a kind without times
    for name in config.standby_devices:
        cluster.device(name)
        if name in plan.devices:
            raise ConfigError(f"standby device '{name}' already runs a stage of the plan")
    for fault in faults:
        if fault.device not in plan.devices and fault.device not in config.standby_devices:
            raise ConfigError(
                f"fault for '{fault.device}', which runs no stage; plan devices: "
                f"{list(plan.devices)}"
            )
    return profile


def _stage_stats(
    timelines: list[dict[str, Any]], t0_s: float, makespan_s: float, scale: float
) -> tuple[list[StageStats], list[TimelineEntry]]:
    stats = []
    entries: list[TimelineEntry] = []
    for timeline in sorted(timelines, key=lambda t: (t["epoch"], t["index"])):
        rows = np.asarray(timeline["entries"], dtype=np.float64).reshape(-1, 6)
        device, index, epoch = timeline["device"], int(timeline["index"]), int(timeline["epoch"])
        if len(rows) == 0:
            continue
        _rid, received, c0, c1, _due, sent = rows.T
        stats.append(
            StageStats(
                index=index,
                device=device,
                start=int(timeline["start"]),
                end=int(timeline["end"]),
                epoch=epoch,
                items=len(rows),
                compute_s=float(np.mean(c1 - c0)) / scale,
                queue_s=float(np.mean(c0 - received)) / scale,
                transfer_s=float(np.mean(sent - c1)) / scale,
                busy_fraction=float(np.sum(c1 - c0) / max(makespan_s, 1e-9)),
            )
        )
        for row in rows:
            entries.append(
                TimelineEntry(
                    index, device, epoch, int(row[0]), "compute", row[2] - t0_s, row[3] - t0_s
                )
            )
            entries.append(
                TimelineEntry(
                    index, device, epoch, int(row[0]), "transfer", row[3] - t0_s, row[5] - t0_s
                )
            )
    return stats, entries


def run_plan(
    plan: Plan,
    cluster: Cluster,
    profile: ModelProfile,
    spec: Any = None,
    config: RuntimeConfig | None = None,
    requests: int | Iterable[Mapping[str, Any]] = 64,
    replanner: Replanner | None = None,
    *,
    faults: Sequence[ScheduledFault] = (),
    on_result: ResultCallback | None = None,
    progress: ProgressCallback | None = None,
    timeline_path: Path | str | None = None,
    metrics_port: int | None = None,
) -> RunReport:
    """Run `plan` on Ray: one actor per device, micro-batches streaming, failover on failure.

    Args:
        plan: the placement to run (validated against `profile` and `cluster` first).
        cluster: devices, links (shaped in emulation) and the source device.
        profile: the model profile the plan was made from (emulated times and sizes).
        spec: an `edgesplit.models.ModelSpec` for `compute="real"` (default: from `plan.model`).
        config: runtime knobs (`RuntimeConfig`).
        requests: a number of synthetic micro-batches, or an iterable of input activations
            (name -> array/tensor), consumed lazily under back-pressure.
        replanner: `cluster_without_failed -> Plan`, called after a failure when no standby
            device is left (api.py injects the planner; the runtime never imports planners).
        faults: scheduled fault injections (`--kill DEVICE@SECONDS`).
        on_result: called once per micro-batch, in request order, with its output.
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
    profile = _check_inputs(plan, cluster, profile, config, faults)
    if config.compute == "real" and spec is None:
        from edgesplit.models import model_spec_from_name

        spec = model_spec_from_name(plan.model)
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
    )
    error: BaseException | None = None
    try:
        driver.session = RaySession.open(config, devices)
        driver.sink = listen(driver.session.driver_host())
        if config.standby_devices:
            driver.ensure_actors(config.standby_devices)
        driver.run()
    except BaseException as e:
        error = e
    timelines: list[dict[str, Any]] = []
    try:
        if driver.session is not None and driver.t0_s:
            timelines = driver.collect_timelines()
    finally:
        driver.shutdown()
        metrics.close()
        # Drop every actor handle and object ref before Ray shuts down (a ref collected after
        # ray.shutdown() can end the process on this Ray build).
        driver.all_actors.clear()
        driver.current = None
        gc.collect()
        if driver.session is not None:
            driver.session.close()
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
    plan, config, ledger = driver.plan, driver.config, driver.ledger
    scale = config.time_scale
    done = sorted(ledger.done_s.values())
    makespan_s = (max(done) - driver.t0_s) if done else 0.0
    warmup = min(len(plan.stages) + 1, max(0, len(done) // 4))
    # Measured period from the steady state only when no failure interrupted it.
    records = driver.failure_records()
    if records:
        first_fail = driver.t0_s + min(r.at_s for r in records)
        before = [t for t in done if t <= first_fail]
        series = before if len(before) >= warmup + 3 else done
    else:
        series = done
    wall_period_s = steady_period_s(series, warmup)
    period_s = wall_period_s / scale
    delivered = ledger.delivered
    stats, entries = _stage_stats(timelines, driver.t0_s, makespan_s, scale)
    plot = None
    if timeline_path is not None and entries:
        plot = str(
            plot_timeline(
                entries,
                Path(timeline_path),
                failures=records,
                title=f"{plan.model}: {len(plan.stages)} stages, compute="
                f"{config.compute}, time_scale={scale:g}",
            )
        )
    notes = ""
    if error is not None:
        notes = f"run ended early: {type(error).__name__}: {error}"
    return RunReport(
        model=plan.model,
        plan_stages=plan.stages,
        batch_size=plan.batch_size,
        compute=config.compute,
        transport="tcp-direct",
        time_scale=scale,
        max_in_flight=config.max_in_flight,
        measured=Measured(
            period_s=period_s,
            throughput_per_s=plan.batch_size / period_s if period_s > 0 else 0.0,
            requests_per_s=len(done) / (makespan_s / scale) if makespan_s > 0 else 0.0,
            latency_s=latency_stats([v / scale for v in ledger.latency_s.values()]),
            makespan_s=makespan_s / scale,
            warmup_requests=warmup,
            wall_period_s=wall_period_s,
        ),
        predicted=PredictedFigures(
            period_s=plan.predicted.period_s,
            throughput_per_s=plan.predicted.throughput_per_s,
            latency_s=plan.predicted.latency_s,
        ),
        requests=RequestCounts(
            submitted=ledger.submitted,
            completed=len(ledger.done_s),
            lost=ledger.submitted - len(ledger.done_s),
            duplicated=len(delivered) - len(set(delivered)),
            replayed=ledger.replayed,
            duplicates_suppressed=ledger.duplicates_suppressed,
        ),
        stages=tuple(stats),
        failures=tuple(records),
        timeline_plot=plot,
        ray_nodes=driver.num_nodes,
        notes=notes,
    )
