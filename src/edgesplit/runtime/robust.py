"""Executing a robust width plan: shard workers return partial sums, the coordinator combines.

Owns the `ShardBackend` seam (in-process `LocalShardBackend` here, on the stage worker's shard
executor; the stage workers over the channel in runtime/shards.py, with emulation and link
shaping) and `RobustCoordinator`, which runs the
shared parts (embeddings, norms, shared biases, head) and, per layer part, sends the hidden
state to the first live replica of every unit, sums what arrived before the deadline, marks
silent or dead devices failed and fails their units over to the next live replica. Never
imports planners; plans arrive as replica lists.

[Note: failover equals masking] A unit contributes iff some live device holds it; when every
holder is failed its term is absent from the sum, which is exactly `keep[u] = 0` in
`WidthModel.forward`. So with a fixed failed set the output equals the masked evaluation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from edgesplit.models.width import WidthContext, WidthLayer, WidthModel, WidthShard
from edgesplit.runtime.executors import ShardExecutor

__all__ = [
    "CombineReport",
    "LocalShardBackend",
    "RobustCoordinator",
    "ShardBackend",
    "context_arrays",
    "shard_payloads",
]

log = logging.getLogger(__name__)


def context_arrays(ctx: WidthContext) -> dict[str, np.ndarray]:
    """The attention mask and RoPE tables as plain arrays (what crosses to a shard)."""
    out: dict[str, np.ndarray] = {}
    for name in ("attn_bias", "rope_cos", "rope_sin"):
        value = getattr(ctx, name)
        if value is not None:
            out[name] = value.detach().numpy()
    return out


def shard_payloads(
    model: WidthModel, replicas: Sequence[Sequence[int]], num_devices: int
) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Per device index: (meta, arrays) of every unit it holds (as primary or standby)."""
    held: list[list[int]] = [[] for _ in range(num_devices)]
    for u, devices in enumerate(replicas):
        for d in devices:
            held[d].append(u)
    return [model.shard(units).to_arrays() for units in held]


class ShardBackend(Protocol):
    """How the coordinator reaches shards: one shard executor call per device and layer part
    (tensors: `hidden` + context arrays; meta: `layer`, `kind`, `slots`), in process or on the
    stage workers (runtime/shards.py)."""

    def submit(self, device: str, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> Any: ...

    def wait(self, handles: Sequence[Any], timeout_s: float) -> list[Any]:
        """The handles that finished (result or error) within `timeout_s`."""
        ...

    def result(self, handle: Any) -> tuple[bool, Any]:
        """(True, array) or (False, error) of a finished handle."""
        ...


@dataclass
class _Done:
    ok: bool
    value: Any


class LocalShardBackend:
    """Each device's `WidthShard` in this process, run by the stage worker's shard executor; a
    device listed in `silent` never answers (a hung device)."""

    def __init__(self, shards: dict[str, WidthShard], silent: Sequence[str] = ()) -> None:
        self.executors = {device: ShardExecutor(shard) for device, shard in shards.items()}
        self.silent = set(silent)

    def submit(self, device: str, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
        if device in self.silent:
            return None  # never finishes
        try:
            return _Done(True, self.executors[device].run(0, tensors, meta)[0]["partial"])
        except Exception as e:
            return _Done(False, e)

    def wait(self, handles: Sequence[Any], timeout_s: float) -> list[Any]:
        return [h for h in handles if h is not None]

    def result(self, handle: Any) -> tuple[bool, Any]:
        assert isinstance(handle, _Done)
        return handle.ok, handle.value


@dataclass
class CombineReport:
    """What happened during one request: failures detected, failovers, units lost."""

    failed_devices: list[str] = field(default_factory=list)
    failovers: int = 0
    lost_units: set[int] = field(default_factory=set)
    requests: int = 0
    wall_s: float = 0.0


class RobustCoordinator:
    """Runs a WidthModel's shared parts and combines partial sums from shard devices.

    Args:
        model: the full width model (its shared parts are used; unit weights are not).
        devices: device names, indexed by the replica lists.
        replicas: per unit, the ordered device indices holding it (first live computes).
        backend: how shards are reached.
        deadline_s: how long to wait for one round of partial sums before declaring the
            devices that did not answer failed.
    """

    def __init__(
        self,
        model: WidthModel,
        devices: Sequence[str],
        replicas: Sequence[Sequence[int]],
        backend: ShardBackend,
        deadline_s: float = 5.0,
    ) -> None:
        if len(replicas) != model.num_units:
            raise ValueError(
                f"plan has {len(replicas)} units but the model has {model.num_units}; "
                "re-plan for this model"
            )
        self.model = model
        self.devices = list(devices)
        self.replicas = [list(r) for r in replicas]
        self.backend = backend
        self.deadline_s = deadline_s
        self.failed: set[int] = set()
        self.detections: list[tuple[str, str, float]] = []  # (device, cause, wall s) in order

    def _live_holder(self, unit: int) -> int | None:
        for d in self.replicas[unit]:
            if d not in self.failed:
                return d
        return None

    def _combine(
        self,
        layer_index: int,
        kind: str,
        units: range,
        x: torch.Tensor,
        ctx: dict[str, np.ndarray],
        report: CombineReport,
    ) -> torch.Tensor:
        """Σ of every unit's term from its first live holder; re-asks next replicas on failure."""
        hidden = x.detach().numpy()
        pending = list(units)
        total = torch.zeros_like(x)
        first_round = True
        while pending:
            assignment: dict[int, list[int]] = {}
            for u in pending:
                d = self._live_holder(u)
                if d is None:
                    report.lost_units.add(u)
                else:
                    assignment.setdefault(d, []).append(u)
            if not assignment:
                break
            if not first_round:
                report.failovers += sum(len(v) for v in assignment.values())
            first_round = False
            handles = {}
            for d, us in assignment.items():
                meta = {"layer": layer_index, "kind": kind, "slots": [u - units.start for u in us]}
                handles[d] = self.backend.submit(self.devices[d], {"hidden": hidden, **ctx}, meta)
                report.requests += 1
            ready = self.backend.wait(list(handles.values()), self.deadline_s)
            ready_ids = {id(h) for h in ready}
            pending = []
            for d in sorted(handles):
                handle = handles[d]
                ok, value = (
                    self.backend.result(handle) if id(handle) in ready_ids else (False, None)
                )
                if ok:
                    total = total + torch.from_numpy(value)
                    continue
                log.warning(
                    "[robust @ %s] no partial sum for layer %d %s (%s); marking it failed",
                    self.devices[d],
                    layer_index,
                    kind,
                    "timeout" if value is None else value,
                )
                self.failed.add(d)
                report.failed_devices.append(self.devices[d])
                cause = "hang" if value is None else "actor_died"
                self.detections.append((self.devices[d], cause, time.time()))
                pending.extend(assignment[d])
        return total

    @torch.no_grad()
    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, CombineReport]:
        """One request through the whole model; returns (output, what happened)."""
        start = time.perf_counter()
        report = CombineReport()
        hidden, ctx = self.model.embed(inputs)
        ctx_arrays = context_arrays(ctx)
        for layer_index, (layer, (a, f, e)) in enumerate(
            zip(self.model.layers, self.model.layer_offsets, strict=True)
        ):
            assert isinstance(layer, WidthLayer)
            x = layer.attn_input(hidden)
            hidden = layer.attn_output(
                hidden, self._combine(layer_index, "attn", range(a, f), x, ctx_arrays, report)
            )
            x = layer.ffn_input(hidden)
            hidden = layer.ffn_output(
                hidden, self._combine(layer_index, "ffn", range(f, e), x, ctx_arrays, report)
            )
        report.wall_s = time.perf_counter() - start
        return self.model.head(hidden), report
