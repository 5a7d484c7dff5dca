"""Width shards on the one stage worker: the robust coordinator's backend over the channel.

Owns `ChannelShardBackend`: one `StageWorker` actor per device running a shard executor (real:
its width units, sent once as plain arrays over Ray; emulated: sleep per unit, real-size
partial sums), wired as a star (coordinator -> every shard -> coordinator) on the authenticated
channel, with sender-side link shaping from the cluster both ways. It implements the
`ShardBackend` seam of runtime/robust.py (submit / wait / result); a shard whose actor died or
whose stream closed answers at once with an error, so failover does not wait for the deadline.
numpy + runtime only; torch stays in the workers.
"""

from __future__ import annotations

import gc
import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgesplit.core.cluster import Cluster
from edgesplit.runtime.cluster import RaySession
from edgesplit.runtime.config import FaultAction, RuntimeConfig, ScheduledFault
from edgesplit.runtime.emulation import LinkShaper
from edgesplit.runtime.stage import StageSpec
from edgesplit.runtime.stages import StageGroup
from edgesplit.runtime.transport import Frame

__all__ = ["ChannelShardBackend", "star_config"]

_TICK_S = 0.01


def star_config(config: RuntimeConfig | None, num_devices: int) -> RuntimeConfig:
    """The runtime knobs of a star of `num_devices` shard stages.

    Every shard device streams back to the coordinator's one sink, so the sink must admit one
    peer per device (and one more, for a replacement's) whatever the configured cap.
    """
    base = config or RuntimeConfig(compute="real", placement="local")
    wanted = num_devices + 1
    if base.max_connections >= wanted:
        return base
    return base.model_copy(update={"max_connections": wanted})


class ChannelShardBackend:
    """Shard stages for `RobustCoordinator`; the coordinator runs where this object lives.

    Args:
        devices: device names, in the order of the plan's replica lists.
        payloads: per device, (meta, arrays) of its width units (`robust.shard_payloads`).
        config: runtime knobs; `compute="emulated"` sleeps `unit_s` per unit asked for.
        cluster: when given (shaped as `config.link_shaping` says), links between its source (the
            coordinator) and each device are shaped as in a pipeline run.
        unit_s: emulated seconds per width unit (already time-scaled).
        frame_bytes: the largest hidden state a request sends (bounds every stream).
    """

    def __init__(
        self,
        devices: Sequence[str],
        payloads: Sequence[tuple[dict[str, Any], dict[str, np.ndarray]]],
        config: RuntimeConfig | None = None,
        *,
        cluster: Cluster | None = None,
        unit_s: float = 0.0,
        frame_bytes: int | None = None,
    ) -> None:
        self.devices = list(devices)
        self.config = star_config(config, len(self.devices))
        self.session = RaySession.open(self.config, self.devices)
        bound = frame_bytes or self.config.max_frame_bytes
        self._results: dict[int, tuple[bool, Any]] = {}
        self._done = threading.Condition()
        self._ids = itertools.count()
        self._pending: dict[int, str] = {}
        self.group = StageGroup(self.session, self.config, self._on_result, bound)
        try:
            self._start(payloads, cluster, unit_s, bound)
        except BaseException:
            self.close()
            raise

    def _start(
        self,
        payloads: Sequence[tuple[dict[str, Any], dict[str, np.ndarray]]],
        cluster: Cluster | None,
        unit_s: float,
        bound: int,
    ) -> None:
        config = self.config
        self.group.ensure(self.devices)
        loads = [
            self.group.actors[d].call("load_shard", meta, arrays)
            for d, (meta, arrays) in zip(self.devices, payloads, strict=True)
        ]
        self.session.get(loads, config.startup_timeout_s)
        shapers: dict[str, LinkShaper | None] = {}
        specs = []
        for index, device in enumerate(self.devices):
            link_out = link_in = None
            if cluster is not None:
                link_out = config.shaped(cluster, device, cluster.source)
                link_in = config.shaped(cluster, cluster.source, device)
            shapers[device] = LinkShaper.of(link_in)
            specs.append(
                StageSpec(
                    index=index,
                    device=device,
                    start=0,
                    end=1,
                    epoch=0,
                    executor="shard",
                    compute=config.compute,
                    run_key_hex=self.group.run_key.hex(),
                    max_frame_bytes=bound,
                    max_connections=config.max_connections,
                    shard_unit_s=unit_s,
                    link=link_out,
                    max_in_flight=config.max_in_flight,
                )
            )
        self.group.configure(
            specs,
            source_in_flight=config.max_in_flight,
            source_shapers=shapers,
            star=True,
        )

    def _on_result(self, frame: Frame) -> None:
        error = frame.meta.get("error")
        value: tuple[bool, Any] = (
            (False, str(frame.meta.get("detail", error)))
            if error is not None
            else (True, frame.tensors["partial"])
        )
        with self._done:
            if frame.request_id in self._pending:
                self._results[frame.request_id] = value
                self._done.notify_all()

    # -- the ShardBackend seam -----------------------------------------------------------------
    def submit(self, device: str, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> int:
        request_id = next(self._ids)
        with self._done:
            self._pending[request_id] = device
        hidden = np.ascontiguousarray(tensors["hidden"])
        frame = Frame("data", request_id, 0, self.group.epoch, {**tensors, "hidden": hidden}, meta)
        if not self.group.send(frame, device):
            with self._done:
                self._results[request_id] = (False, f"stream to '{device}' is gone")
        return request_id

    def wait(self, handles: Sequence[Any], timeout_s: float) -> list[Any]:
        """Handles answered (or whose device died) within `timeout_s`."""
        deadline = time.time() + timeout_s
        wanted = set(handles)
        while True:
            with self._done:
                ready = [h for h in handles if h in self._results]
                if len(ready) == len(wanted) or time.time() >= deadline:
                    return ready
                self._done.wait(_TICK_S)
            self._fail_dead(wanted)

    def _fail_dead(self, handles: set[int]) -> None:
        """A pending request on a device whose actor Ray reports dead errors now."""
        with self._done:
            devices = {self._pending[h] for h in handles if h not in self._results}
        live = [self.group.actors[d] for d in devices if d in self.group.actors]
        dead = {a.device for a in self.session.dead_actors(live, timeout_s=0)}
        dead |= {d for d in devices if d not in self.group.actors}
        # A stream its peer closed: the process is gone (a crashed node's actors are reported
        # dead only after Ray's node health checks).
        dead |= {d for d in devices if getattr(self.group.sources.get(d), "lost_s", None)}
        if not dead:
            return
        with self._done:
            for handle in handles:
                if self._pending.get(handle) in dead and handle not in self._results:
                    self._results[handle] = (False, f"'{self._pending[handle]}' died")

    def result(self, handle: Any) -> tuple[bool, Any]:
        with self._done:
            self._pending.pop(handle, None)
            return self._results.pop(handle, (False, None))

    # -- faults and teardown -------------------------------------------------------------------
    def kill(self, device: str, timeout_s: float = 10.0) -> None:
        """SIGKILL the device's stage process and wait until Ray reports it dead."""
        self.fault(device, "kill")
        actor = self.group.actors[device]
        deadline = time.time() + timeout_s
        while not self.session.dead_actors([actor], timeout_s=_TICK_S):
            if time.time() > deadline:
                raise TimeoutError(f"'{device}' did not die within {timeout_s} s")

    def fault(self, device: str, kind: FaultAction) -> None:
        """Inject `kind` (kill, stop, crash, cut) on `device`, as `--fault` does."""
        self.group.inject(ScheduledFault(device, 0.0, kind))

    def close(self) -> None:
        self.group.close()
        gc.collect()  # drop actor handles before Ray shuts down
        self.session.close()
