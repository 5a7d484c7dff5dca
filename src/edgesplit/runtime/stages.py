"""The stage actors of one run and what every driver does with them.

Owns `StageGroup`: the per-run key, one `StageWorker` actor per device (standbys included), an
epoch's configure-and-wire (driver -> stage 0 -> ... -> last stage -> driver, every stream
authenticated), the driver's source `Sender` and result sink, the one failure detector (Ray
actor death, heartbeats, per-item deadline, closed streams, a stage whose executor keeps
failing), the one fault-injection API and the failure log. The batch driver (pipeline.py) and
the decode driver (generation.py) differ only in scheduling and recovery. Ray comes through
runtime/cluster.py; never planners.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from edgesplit.errors import ConfigError, DeviceUnavailableError
from edgesplit.runtime.channel import Inbound, Sender
from edgesplit.runtime.cluster import ActorDiedError, RaySession, StageActor, expect_exit
from edgesplit.runtime.config import RuntimeConfig, ScheduledFault
from edgesplit.runtime.emulation import LinkShaper
from edgesplit.runtime.failover import FailureDetector, FailureLog, Suspicion
from edgesplit.runtime.stage import StageSpec
from edgesplit.runtime.transport import Frame, FrameLimits, TcpConnection, connect, new_run_key

__all__ = ["ResultHandler", "StageGroup", "frame_bound_bytes"]

logger = logging.getLogger(__name__)

ResultHandler = Callable[[Frame], None]
_MIN_FRAME_BOUND = 1 << 20


def frame_bound_bytes(planned_bytes: float, config: RuntimeConfig) -> int:
    """The largest tensor payload a stream accepts: a margin over what the plan sends."""
    bound = max(_MIN_FRAME_BOUND, int(planned_bytes * config.frame_bound_factor))
    return min(bound, config.max_frame_bytes)


class StageGroup:
    """Stage actors, their epoch's streams, failure detection and fault injection.

    Args:
        session: the Ray session (cluster.py).
        config: runtime knobs (timeouts, caps).
        on_result: called with each result frame of the current epoch that reaches the driver
            (from the sink's reader thread); the sink acknowledges it afterwards.
        sink_bound_bytes: the largest result payload the driver accepts.
    """

    def __init__(
        self,
        session: RaySession,
        config: RuntimeConfig,
        on_result: ResultHandler,
        sink_bound_bytes: int,
    ) -> None:
        self.session = session
        self.config = config
        self.run_key = new_run_key()
        self.actors: dict[str, StageActor] = {}
        self.devices: tuple[str, ...] = ()  # the current epoch's stage devices, in order
        self.addresses: dict[str, tuple[str, int]] = {}  # their stream listeners
        self.epoch = -1
        self.sources: dict[str, Sender] = {}
        self.detector = FailureDetector(
            config.hang_timeout_s, config.batch_deadline_s, config.stream_loss_grace_s
        )
        self.failures = FailureLog()
        # Few-row kernel choices each device's stage measured (models.one_row): a stage built
        # there again (a restart in a new process) takes them instead of measuring again.
        self.kernels: dict[str, tuple[dict[str, Any], ...]] = {}
        self._on_result = on_result
        self._pings: dict[str, Any] = {}
        self._pinged_s: dict[str, float] = {}
        self._sink_epochs: dict[int, int] = {}
        self._sink_lost: tuple[int, float] | None = None
        self.sink = Inbound(
            session.driver_host(),
            self.run_key,
            self._on_sink_frame,
            limits=FrameLimits(max_payload_bytes=sink_bound_bytes),
            max_connections=config.max_connections,
            on_closed=self._on_sink_closed,
            name="driver sink",
        )

    # -- actors -------------------------------------------------------------------------------
    def ensure(
        self, devices: Iterable[str], *, warm: tuple[dict[str, Any] | None, str] | None = None
    ) -> None:
        """Start an actor for every device that has none; with `warm` = (model spec, dtype),
        each new one runs `StageWorker.warm` in the background (standbys: imports, kernels)."""
        new = [d for d in devices if d not in self.actors]
        for device in new:
            self.actors[device] = self.session.start_actor(device)
        if not new:
            return
        refs = [self.actors[d].call("info") for d in new]
        try:
            infos = self.session.get(refs, self.config.startup_timeout_s)
        except (ActorDiedError, TimeoutError) as e:
            raise DeviceUnavailableError(
                f"stage actors for {new} did not start within {self.config.startup_timeout_s} s:"
                f" {e}"
            ) from e
        for device, info in zip(new, infos, strict=True):
            self.actors[device].info = info
            if warm is not None:
                self.actors[device].call("warm", *warm)

    def check_faults(self, faults: Sequence[ScheduledFault]) -> None:
        """A node crash needs the device on its own Ray node (not the driver's)."""
        driver_node = self.session.driver_node_id()
        for fault in faults:
            actor = self.actors.get(fault.device)
            if (
                fault.action == "crash"
                and actor is not None
                and actor.info.get("node_id") == driver_node
            ):
                raise ConfigError(
                    f"crash:{fault.device} would kill the driver's own Ray node; give the "
                    f"device its own node (`edgesplit cluster up --device {fault.device}`) "
                    "or inject kill/stop instead"
                )

    def lose(self, suspicions: Sequence[Suspicion]) -> set[str]:
        """Failed devices: log them, stop the driver's source, kill their actors."""
        for s in suspicions:
            logger.warning("[failover] %s failed (%s: %s)", s.device, s.cause, s.detail)
        self.stop_source()
        for s in suspicions:
            self.drop(s.device)
        return {s.device for s in suspicions}

    def drop(self, device: str) -> None:
        """Kill a failed device's actor and stop watching it."""
        actor = self.actors.pop(device, None)
        if actor is not None:
            self.session.kill(actor)
        self.detector.forget(device)
        self._pings.pop(device, None)
        self._pinged_s.pop(device, None)

    # -- an epoch ------------------------------------------------------------------------------
    def configure(
        self,
        specs: Sequence[StageSpec],
        *,
        source_in_flight: int,
        source_shapers: Mapping[str, LinkShaper | None],
        expected_compute_s: Mapping[str, float] | None = None,
        star: bool = False,
    ) -> None:
        """Build every stage of a new epoch and wire its streams: one driver source per key of
        `source_shapers` (shaped by its value); chain (pipelines): driver -> stage 0 -> ... ->
        last stage -> driver; star (width shards): driver -> every stage -> driver.
        """
        self.stop_source()
        self.ensure(s.device for s in specs)
        if self.config.compute == "real":
            specs = [
                s.model_copy(update={"kernels": self.kernels.get(s.device, ())}) for s in specs
            ]
        refs = [self.actors[s.device].call("configure", s.model_dump()) for s in specs]
        try:
            addresses = [tuple(a) for a in self.session.get(refs, self.config.startup_timeout_s)]
        except ActorDiedError as e:
            raise DeviceUnavailableError(f"a stage actor died while configuring: {e}") from e
        except TimeoutError as e:
            raise DeviceUnavailableError(f"configuring stages timed out: {e}") from e
        except Exception as e:  # the actor's own error (e.g. a checkpoint missing weights)
            cause = getattr(e, "cause", None) or e
            raise ConfigError(f"building a stage failed: {cause}") from e
        self.epoch = specs[0].epoch
        self.devices = tuple(s.device for s in specs)
        self.addresses = {
            s.device: (str(a[0]), int(a[1])) for s, a in zip(specs, addresses, strict=True)
        }
        downstream = (
            [self.sink.address] * len(specs) if star else [*addresses[1:], self.sink.address]
        )
        starts = [
            self.actors[s.device].call("start", target, self.config.startup_timeout_s)
            for s, target in zip(specs, downstream, strict=True)
        ]
        self.session.get(starts, self.config.startup_timeout_s)
        if self.config.compute == "real":
            choices = [self.actors[s.device].call("kernels") for s in specs]
            for spec, found in zip(specs, self.session.get(choices, 10.0), strict=True):
                self.kernels[spec.device] = tuple(found)
        for device, shaper in source_shapers.items():
            host, port = self.addresses[device]
            conn = connect((host, port), self.config.startup_timeout_s, key=self.run_key)
            conn.send(Frame("hello", epoch=self.epoch, meta={"from": "driver"}))
            sender = Sender(conn, source_in_flight, shaper, name=f"driver-source-{device}")
            sender.start()
            self.sources[device] = sender
        self.watch(expected_compute_s or {})

    @property
    def source(self) -> Sender | None:
        """The driver's stream into stage 0 (chain)."""
        return self.sources.get(self.devices[0]) if self.devices else None

    def watch(self, expected_compute_s: Mapping[str, float]) -> None:
        """(Re)start heartbeat clocks: silence is counted from the moment the stages are live."""
        for device in list(self.detector.devices):
            self.detector.forget(device)
        self._pings.clear()
        now = time.time()
        for device in self.devices:
            self.detector.watch(device, now, expected_compute_s.get(device, 0.0))

    def stop_source(self) -> None:
        for sender in self.sources.values():
            sender.stop()
        self.sources.clear()

    def send(self, frame: Frame, device: str | None = None) -> bool:
        """Into stage 0 (or `device`'s stage) of the current epoch, blocking for a credit;
        False if that stream stopped."""
        source = self.source if device is None else self.sources.get(device)
        return source is not None and source.send(frame)

    def _on_sink_frame(self, frame: Frame, conn: TcpConnection) -> None:
        if frame.type == "hello":
            self._sink_epochs[id(conn)] = frame.epoch
            return
        if frame.type != "data" or frame.epoch != self.epoch:
            return  # a result of an epoch given up on
        if self._sink_epochs.get(id(conn)) != frame.epoch:
            return
        self._on_result(frame)
        try:
            conn.send(Frame("ack", frame.request_id, epoch=frame.epoch))
        except Exception as e:  # the last stage is gone; detection handles it
            logger.debug("ack of %d not sent: %s", frame.request_id, e)

    def _on_sink_closed(self, conn: TcpConnection) -> None:
        epoch = self._sink_epochs.pop(id(conn), None)
        if epoch is not None and epoch == self.epoch:
            self._sink_lost = (epoch, time.time())  # the last stage's process is gone

    # -- the one failure detector ------------------------------------------------------------
    def detect(self, now_s: float) -> list[Suspicion]:
        """Suspected failures of the current epoch's stages (call every tick)."""
        live = [self.actors[d] for d in self.devices if d in self.actors]
        found = [
            Suspicion(
                actor.device,
                "actor_died",
                self.detector.last_heard_s(actor.device),
                "Ray reports the actor dead",
            )
            for actor in self.session.dead_actors(live, timeout_s=0)
        ]
        if found:
            return found
        pending = list(self._pings.values())
        ready = set(self.session.poll(pending, 0)) if pending else set()
        for device, ref in list(self._pings.items()):
            if ref not in ready:
                continue
            ok, value = self.session.result(ref)
            del self._pings[device]
            if not ok or value.get("epoch") != self.epoch:
                continue
            self.detector.heard(device, time.time(), value["busy_since_s"])
            lost_s = value.get("downstream_lost_s")
            if lost_s is not None:
                nxt = self._downstream_of(device)
                if nxt is not None:
                    self.detector.unreachable(nxt, lost_s)
            if value.get("errors_in_a_row", 0) >= self.config.failing_after_errors:
                self.detector.failing(
                    device, time.time(), f"{value['errors_in_a_row']} executor errors in a row"
                )
        now = time.time()
        for actor in live:  # one heartbeat per stage and period (control traffic stays light)
            due = self._pinged_s.get(actor.device, 0.0) + self.config.heartbeat_period_s
            if actor.device not in self._pings and now >= due:
                self._pings[actor.device] = actor.call("ping")
                self._pinged_s[actor.device] = now
        for device, sender in self.sources.items():
            if sender.lost_s is not None:
                self.detector.unreachable(device, sender.lost_s)
        if self._sink_lost is not None and self._sink_lost[0] == self.epoch and self.devices:
            self.detector.unreachable(self.devices[-1], self._sink_lost[1])
        return self.detector.check(now_s)

    def _downstream_of(self, device: str) -> str | None:
        names = list(self.devices)
        index = names.index(device) if device in names else -1
        return names[index + 1] if 0 <= index < len(names) - 1 else None

    # -- the one fault-injection API ----------------------------------------------------------
    def inject(self, fault: ScheduledFault) -> None:
        actor = self.actors.get(fault.device)
        if actor is None:
            logger.warning("fault for '%s' ignored: no stage runs there", fault.device)
            return
        logger.info("injecting %s on %s at %.2f s", fault.kind, fault.device, fault.at_s)
        self.failures.injected(fault.device, fault.kind, time.time())
        expect_exit(actor.info)
        if callable(fault.action):
            fault.action(dict(actor.info))
            return
        actor.call("fault", fault.action)  # the stage does it to itself: reaches any node

    # -- recovery and teardown ----------------------------------------------------------------
    def halt(self, devices: Iterable[str]) -> tuple[dict[int, list[tuple[int, Any]]], list[str]]:
        """Stop `devices`' epochs; (items they held by request id, devices that did not answer)."""
        refs = {
            d: self.actors[d].call("halt", self.config.halt_timeout_s)
            for d in devices
            if d in self.actors
        }
        retained: dict[int, list[tuple[int, Any]]] = {}
        silent = []
        for device, ref in refs.items():
            try:
                items = self.session.get(ref, self.config.halt_timeout_s + 5)
            except (ActorDiedError, TimeoutError) as e:
                logger.warning("[failover] %s did not halt (%s); excluding it too", device, e)
                self.drop(device)
                silent.append(device)
                continue
            for item in items:
                retained.setdefault(int(item["request_id"]), []).append(
                    (int(item["boundary"]), item["tensors"])
                )
        return retained, silent

    def inject_items(self, device: str, items: list[dict[str, Any]]) -> None:
        self.session.get(self.actors[device].call("inject", items), 30.0)

    def timelines(self) -> list[dict[str, Any]]:
        result = []
        for device, actor in self.actors.items():
            try:
                for timeline in self.session.get(actor.call("timelines"), 10.0):
                    result.append({"device": device, **timeline})
            except (ActorDiedError, TimeoutError) as e:
                logger.debug("no timeline from %s: %s", device, e)
        return result

    def close(self) -> None:
        self.stop_source()
        self.sink.close()
        for actor in self.actors.values():
            self.session.kill(actor)
        self.actors.clear()
        self._pings.clear()
