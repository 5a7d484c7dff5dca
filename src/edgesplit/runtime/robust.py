"""Executing a robust width plan: shard workers return partial sums, the coordinator combines.

Owns `ShardWorker` (one device's width units in this process, for `LocalShardBackend`), the
`ShardBackend` seam (in-process `LocalShardBackend` here; the stage workers over the channel in
runtime/shards.py, with emulation and link shaping) and `RobustCoordinator`, which runs the
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
    "ShardWorker",
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


class ShardWorker:
    """One device's width units. Plain data in and out (numpy arrays, dicts), no pickle.

    Example:
        >>> meta, arrays = model.shard([0, 5, 9]).to_arrays()
        >>> worker = ShardWorker("dev0", meta, arrays)
        >>> partial = worker.partial(0, "attn", [0], hidden_normed, ctx_arrays)
    """

    def __init__(
        self, device: str, meta: dict[str, Any], arrays: dict[str, np.ndarray], num_threads: int = 1
    ) -> None:
        torch.set_num_threads(num_threads)
        self.device = device
        self.shard = WidthShard.from_arrays(meta, arrays)

    def ping(self) -> str:
        return self.device

    def param_bytes(self) -> int:
        return int(self.shard.param_bytes)

    def partial(
        self,
        layer_index: int,
        kind: str,
        slots: list[int],
        hidden: np.ndarray,
        ctx: dict[str, np.ndarray],
    ) -> np.ndarray:
        """Σ over `slots` of layer part (layer_index, kind); hidden (B, T, C) already normed."""
        assert kind in ("attn", "ffn")
        meta = {"layer": layer_index, "kind": kind, "slots": slots}
        out, _ = ShardExecutor(self.shard).run(0, {"hidden": hidden, **ctx}, meta)
        return out["partial"]


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
    """How the coordinator reaches shard workers (in process, or Ray actors)."""

    def submit(
        self,
        device: str,
        layer_index: int,
        kind: str,
        slots: list[int],
        hidden: np.ndarray,
        ctx: dict[str, np.ndarray],
    ) -> Any: ...

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
    """In-process workers; a device listed in `silent` never answers (a hung device)."""

    def __init__(self, workers: dict[str, ShardWorker], silent: Sequence[str] = ()) -> None:
        self.workers = workers
        self.silent = set(silent)

    def submit(
        self,
        device: str,
        layer_index: int,
        kind: str,
        slots: list[int],
        hidden: np.ndarray,
        ctx: dict[str, np.ndarray],
    ) -> Any:
        if device in self.silent:
            return None  # never finishes
        try:
            return _Done(True, self.workers[device].partial(layer_index, kind, slots, hidden, ctx))
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

    def mark_failed(self, device: str) -> None:
        self.failed.add(self.devices.index(device))

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
                slots = [u - units.start for u in us]
                handles[d] = self.backend.submit(
                    self.devices[d], layer_index, kind, slots, hidden, ctx
                )
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
                    total = total + torch.from_numpy(
                        np.array(value)
                    )  # copy: Ray arrays are read-only
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
