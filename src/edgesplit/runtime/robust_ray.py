"""Ray backend of the robust coordinator: one shard actor per device.

Owns `RayShardBackend` (start shard actors from plain (meta, arrays) payloads, submit partial-sum
calls, `ray.wait` with a deadline, kill a device's actor). Connection, waiting, results and kills
go through runtime/cluster.py's `RaySession`, and its `remote_class` makes `ShardWorker` an
actor class, so this module never imports ray.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgesplit.runtime.cluster import RaySession, StageActor, remote_class
from edgesplit.runtime.config import RuntimeConfig
from edgesplit.runtime.robust import ShardWorker

__all__ = ["RayShardBackend"]

log = logging.getLogger(__name__)

_RemoteShard = remote_class(ShardWorker)


class RayShardBackend:
    """Shard actors on an embedded (or existing) Ray cluster; plain arrays cross to them."""

    def __init__(
        self,
        devices: Sequence[str],
        payloads: Sequence[tuple[dict[str, Any], dict[str, np.ndarray]]],
        config: RuntimeConfig | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.config = config or RuntimeConfig(placement="local")
        self.session = RaySession.open(self.config, list(devices))
        self.actors: dict[str, StageActor] = {}
        for device, (meta, arrays) in zip(devices, payloads, strict=True):
            options: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0, "max_concurrency": 4}
            if self.session.use_resources:
                options["resources"] = {device: 0.01}
            handle = _RemoteShard.options(**options).remote(device, meta, arrays)
            self.actors[device] = StageActor(device=device, handle=handle, serve_ref=None)
        # wait until every actor is constructed (a ping answers after __init__)
        pings = [a.call("ping") for a in self.actors.values()]
        self.session.get(pings, timeout_s=startup_timeout_s)

    def submit(
        self,
        device: str,
        layer_index: int,
        kind: str,
        slots: list[int],
        hidden: np.ndarray,
        ctx: dict[str, np.ndarray],
    ) -> Any:
        return self.actors[device].call("partial", layer_index, kind, slots, hidden, ctx)

    def wait(self, handles: Sequence[Any], timeout_s: float) -> list[Any]:
        return self.session.poll(handles, timeout_s)

    def result(self, handle: Any) -> tuple[bool, Any]:
        return self.session.result(handle)

    def kill(self, device: str) -> None:
        """Kill the device's actor process (a real failure: its calls error from now on)."""
        self.session.kill(self.actors[device])

    def close(self) -> None:
        for actor in self.actors.values():
            self.session.kill(actor)
        self.session.close()
