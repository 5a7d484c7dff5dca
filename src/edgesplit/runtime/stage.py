"""The one stage worker: a device that receives frames, runs its executor, forwards the result.

Owns `StageSpec` (what a stage runs in one epoch; crosses Ray as a plain dict) and `StageWorker`
(a plain class; runtime/cluster.py makes it the Ray actor of every workload). Per epoch a
`_StageRunner` wires `channel.Inbound` -> the executor (in the reader's thread) -> `Sender`;
items the driver injects for a replay go through a compute thread under the same lock.
The executor (runtime/executors.py) is picked by `StageSpec.executor`; its module is built in one
place, `StageWorker._module`. Control only through method calls (Ray actor calls); data only
through the channel. torch and models are imported lazily for real compute; never ray.

[Note: retained activations] A stage holds each item from the moment it arrives until its
downstream acknowledges having forwarded it: first the input (boundary = start), then the output
(boundary = end). The downstream acks only after *it* forwarded the item, so at any instant every
accepted item is held by at least one live stage or by the driver; after a failure the batch
driver collects these (`halt`) and replays each from the furthest boundary it has (the decode
driver replays from its own token lists instead). Credits: a sender may have at most
`max_in_flight` unacknowledged items at its downstream, which bounds every queue and gives
back-pressure all the way to the request source.

[Note: errors stay with their request] An executor that raises produces an error frame for that
request only (meta "error" = "executor", "detail" = the message); later stages pass it through
untouched and the driver decides (retry once, then answer that request with the error). The
count of errors in a row is reported by `ping`; past `RuntimeConfig.failing_after_errors` the
driver treats the stage as failed and replaces it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgesplit.core.link_codec import decode_tensors, encode_tensors
from edgesplit.core.precision import LinkEncoding, StageDtype
from edgesplit.core.schema import FrozenModel
from edgesplit.runtime.channel import Inbound, Sender, drain
from edgesplit.runtime.config import FaultAction
from edgesplit.runtime.emulation import LinkShaper
from edgesplit.runtime.executors import (
    DecodeExecutor,
    EmulatedDecodeExecutor,
    EmulatedForwardExecutor,
    EmulatedShardExecutor,
    Executor,
    ForwardExecutor,
    ShardExecutor,
)
from edgesplit.runtime.transport import Frame, FrameLimits, TcpConnection, connect

__all__ = ["ExecutorKind", "StageSpec", "StageWorker"]

logger = logging.getLogger(__name__)
ExecutorKind = Literal["forward", "decode", "shard"]


class StageSpec(FrozenModel):
    """What one stage runs in one epoch (crosses the Ray boundary as a plain dict)."""

    index: int
    device: str
    start: int
    end: int
    epoch: int
    executor: ExecutorKind = "forward"
    compute: Literal["real", "emulated"]
    run_key_hex: str = Field(min_length=64, max_length=64)  # [Note: run key] in transport.py
    max_frame_bytes: int = Field(default=64 << 20, gt=0)  # bound on what upstream may declare
    max_connections: int = Field(default=4, ge=1)
    compute_s: float = 0.0  # emulated forward: seconds per micro-batch (already time-scaled)
    input_bytes: int = 0  # emulated forward: expected input size (checked)
    output_bytes: int = 0  # emulated forward: size of the output produced
    num_units: int = 0  # decode: units of the whole model (the last stage picks tokens)
    hidden_size: int = 0  # emulated decode: width of the hidden state sent on
    vocab_size: int = 0  # emulated decode: range of the (meaningless) tokens picked
    decode_s: float = 0.0  # emulated decode: seconds per decode step of this stage
    prefill_s_per_token: float = 0.0  # emulated decode: seconds per prompt token in a prefill
    # emulated decode: (batch, step time / one row's) points; () = B rows take B one-row steps
    decode_batch_scale: tuple[tuple[int, float], ...] = ()
    shard_unit_s: float = 0.0  # emulated shard: seconds per width unit asked for
    link: tuple[float | None, float] | None = None  # the link out: RuntimeConfig.shaped_link
    max_in_flight: int = 4
    model_spec: dict[str, Any] | None = None  # real: edgesplit.models.ModelSpec as a dict
    num_threads: int = 1
    dtype: StageDtype = "float32"  # real: weights of the stage's units (models.precision)
    link_encoding: LinkEncoding = "float32"  # what this stage sends on (core.link_codec)
    # real: few-row kernel choices an earlier process measured on this device (models.one_row)
    kernels: tuple[dict[str, Any], ...] = ()

    @property
    def run_key(self) -> bytes:
        return bytes.fromhex(self.run_key_hex)


@dataclass
class _Item:
    request_id: int
    boundary: int
    tensors: dict[str, np.ndarray]
    meta: dict[str, Any]
    upstream: TcpConnection | None  # where to ack once forwarded; None for driver injections
    received_s: float
    compute_start_s: float = 0.0
    compute_end_s: float = 0.0


@dataclass
class _StageRunner:
    spec: StageSpec
    executor: Executor
    host: str
    stopped: threading.Event
    inbox: queue.Queue[_Item] = field(default_factory=queue.Queue)
    lock: threading.Lock = field(default_factory=threading.Lock)
    compute_lock: threading.Lock = field(default_factory=threading.Lock)
    held: dict[int, tuple[int, dict[str, np.ndarray]]] = field(default_factory=dict)
    inbound: Inbound | None = None
    sender: Sender | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    timeline: list[tuple[int, float, float, float, float]] = field(default_factory=list)
    busy_since_s: float | None = None
    errors_in_a_row: int = 0
    downstream_lost_s: float | None = None
    cut: threading.Event = field(default_factory=threading.Event)

    def listen(self) -> tuple[str, int]:
        self.inbound = Inbound(
            self.host,
            self.spec.run_key,
            self._on_frame,
            limits=FrameLimits(max_payload_bytes=self.spec.max_frame_bytes),
            max_connections=self.spec.max_connections,
            name=f"stage {self.spec.index} @ {self.spec.device}",
        )
        return self.inbound.address

    def start(self, downstream_address: tuple[str, int], connect_timeout_s: float) -> None:
        spec = self.spec
        conn = connect(downstream_address, connect_timeout_s, key=spec.run_key)
        conn.send(Frame("hello", epoch=spec.epoch, meta={"from": spec.device}))
        shaper = LinkShaper.of(spec.link)
        self.sender = Sender(
            conn, spec.max_in_flight, shaper, self._acked, f"stage{spec.index}-send"
        )
        self.sender.start()
        thread = threading.Thread(target=self._compute, daemon=True, name=f"stage{spec.index}")
        thread.start()
        self.threads.append(thread)

    def _on_frame(self, frame: Frame, conn: TcpConnection) -> None:
        if frame.type != "data" or frame.epoch != self.spec.epoch or self.cut.is_set():
            return  # hello/bye carry nothing to do; a cut link delivers nothing
        item = _Item(frame.request_id, frame.boundary, frame.tensors, frame.meta, conn, time.time())
        with self.lock:
            self.held[item.request_id] = (item.boundary, item.tensors)
        if self.sender is None:
            self.inbox.put(item)
        else:
            self._process(item)  # [Note: lean hops] in channel.py: no hand-off to another thread

    def put_item(self, item: _Item) -> None:
        """Queue an item for the compute thread (replays injected by the driver)."""
        with self.lock:
            self.held[item.request_id] = (item.boundary, item.tensors)
        self.inbox.put(item)

    def _acked(self, frame: Frame) -> None:
        with self.lock:
            self.held.pop(frame.request_id, None)

    def _compute(self) -> None:
        drain(self.inbox, self.stopped, self._process)

    def _process(self, item: _Item) -> bool:
        """Compute one item and send it on; False once this epoch cannot go on."""
        assert self.sender is not None
        with self.compute_lock:  # one item at a time, whichever thread brought it
            if self.stopped.is_set():
                return False
            item.compute_start_s = self.busy_since_s = time.time()
            out = self._run(item)
            item.compute_end_s = time.time()
            self.busy_since_s = None
            if self.stopped.is_set():
                return False
            if "error" not in out.meta:
                with self.lock:
                    self.held[item.request_id] = (out.boundary, out.tensors)
            if self.cut.is_set():
                self.stopped.wait()  # a cut link: nothing leaves, nothing is acknowledged
                return False
            if not self.sender.send(out, functools.partial(self._forwarded, item)):
                self.downstream_lost_s = self.sender.lost_s or time.time()
                return False
            return True

    def _run(self, item: _Item) -> Frame:
        spec = self.spec
        meta = dict(item.meta)
        if "error" in meta:  # an upstream stage could not run this request: pass it on
            return Frame("data", item.request_id, spec.end, spec.epoch, {}, meta)
        try:
            if item.boundary != spec.start:
                raise ValueError(
                    f"request {item.request_id} arrived at unit {item.boundary} but this stage "
                    f"starts at unit {spec.start}"
                )
            # Frames arrive in the upstream's link encoding and leave in this stage's.
            tensors, meta = self.executor.run(item.request_id, decode_tensors(item.tensors), meta)
            tensors = encode_tensors(tensors, spec.link_encoding)
        except Exception as e:
            self.errors_in_a_row += 1
            detail = f"[stage {spec.index} @ {spec.device}] {type(e).__name__}: {e}"
            logger.warning("%s (request %d)", detail, item.request_id)
            return Frame(
                "data",
                item.request_id,
                spec.end,
                spec.epoch,
                {},
                {**meta, "error": "executor", "detail": detail},
            )
        self.errors_in_a_row = 0
        return Frame("data", item.request_id, spec.end, spec.epoch, tensors, meta)

    def _forwarded(self, item: _Item, sent_s: float) -> None:
        if item.upstream is not None:
            try:
                item.upstream.send(Frame("ack", item.request_id, epoch=self.spec.epoch))
            except Exception as e:  # the upstream is gone; the driver finds out on its own
                logger.debug("ack of %d not sent: %s", item.request_id, e)
        self.timeline.append(
            (item.request_id, item.received_s, item.compute_start_s, item.compute_end_s, sent_s)
        )

    def halt(self, timeout_s: float) -> list[dict[str, Any]]:
        self.stopped.set()
        if self.inbound is not None:
            self.inbound.close()
        if self.sender is not None:
            self.sender.stop()
        deadline = time.time() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.time()))
        # An item a reader thread is computing finishes (or gives up) before we read `held`.
        if self.compute_lock.acquire(timeout=max(0.0, deadline - time.time())):
            self.compute_lock.release()
        with self.lock:
            return [
                {"request_id": rid, "boundary": boundary, "tensors": tensors}
                for rid, (boundary, tensors) in sorted(self.held.items())
            ]


def _process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


class StageWorker:
    """A device's process: one stage per epoch, any executor (see module docstring)."""

    def __init__(self, device: str, host: str) -> None:
        self.device = device
        self.host = host
        self._runner: _StageRunner | None = None
        self._modules: dict[tuple[str, str, int, int], Any] = {}
        self._shard_payload: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None
        self._stop = threading.Event()
        self._timelines: list[dict[str, Any]] = []

    def info(self) -> dict[str, Any]:
        return {"device": self.device, "pid": os.getpid(), "host": self.host}

    # -- building a stage ------------------------------------------------------------------
    def load_shard(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> int:
        """Receive this device's width units (plain arrays over Ray); returns their bytes."""
        self._shard_payload = (meta, arrays)
        self._modules.clear()
        return int(sum(a.nbytes for a in arrays.values()))

    def _module(self, spec: StageSpec) -> Any:
        """The one place a stage's module is built: units [start, end) of `spec.model_spec`, or
        the width units sent by `load_shard`.

        Kept across epochs while the range is unchanged (only the current stage's weights).
        """
        import torch

        from edgesplit.models import ModelSpec, build_stage, one_row
        from edgesplit.models.kv_stage import KvStage
        from edgesplit.models.width import WidthShard

        torch.set_num_threads(spec.num_threads)
        one_row.adopt(spec.kernels)  # a restarted stage does not measure its kernels again
        if spec.executor == "shard":
            if self._shard_payload is None:
                raise ValueError(f"no width units were loaded on '{self.device}'")
            key = ("shard", "", 0, 0)
            if key not in self._modules:
                self._modules[key] = WidthShard.from_arrays(*self._shard_payload)
            return self._modules[key]
        assert spec.model_spec is not None
        kind = f"{spec.executor}/{spec.dtype}"
        key = (kind, repr(sorted(spec.model_spec.items())), spec.start, spec.end)
        if key not in self._modules:
            self._modules.clear()
            model_spec = ModelSpec.model_validate(spec.model_spec)
            if spec.executor == "decode":
                self._modules[key] = KvStage.build(model_spec, spec.start, spec.end, spec.dtype)
            else:
                self._modules[key] = build_stage(model_spec, spec.start, spec.end, spec.dtype)
        return self._modules[key]

    def _executor(self, spec: StageSpec, stopped: threading.Event) -> Executor:
        if spec.executor == "shard":
            if spec.compute == "emulated":
                return EmulatedShardExecutor(spec.shard_unit_s, stopped)
            return ShardExecutor(self._module(spec))
        if spec.executor == "forward":
            if spec.compute == "emulated":
                return EmulatedForwardExecutor(
                    spec.compute_s, spec.input_bytes, spec.output_bytes, stopped
                )
            return ForwardExecutor(self._module(spec))
        if spec.compute == "emulated":
            return EmulatedDecodeExecutor(
                spec.decode_s,
                spec.prefill_s_per_token,
                spec.hidden_size,
                spec.vocab_size,
                spec.end == spec.num_units,
                stopped,
                spec.decode_batch_scale,
            )
        return DecodeExecutor(self._module(spec))  # a new epoch: empty caches

    def configure(self, spec_data: dict[str, Any]) -> tuple[str, int]:
        """Build the stage of `spec_data` (only its units' weights); returns its listen address."""
        spec = StageSpec.model_validate(spec_data)
        self.halt()
        stopped = threading.Event()
        runner = _StageRunner(spec, self._executor(spec, stopped), self.host, stopped)
        address = runner.listen()
        self._runner = runner
        return address

    def start(self, downstream_address: tuple[str, int], connect_timeout_s: float = 10.0) -> None:
        assert self._runner is not None, "configure() first"
        host, port = downstream_address
        self._runner.start((str(host), int(port)), connect_timeout_s)

    def warm(self, model_spec: dict[str, Any] | None = None, dtype: StageDtype = "float32") -> int:
        """Import torch and transformers and run one tiny GPT-2 and Llama step now, so that a
        standby's takeover costs its weights, not seconds of lazy imports and kernel warm-up.

        With the run's `model_spec`, also measure this device's few-row kernel for every weight
        shape of that model (`models.tune_kernels`: no weights loaded), which a stage build
        would otherwise pay at takeover; returns how many shapes.
        """
        import torch

        from edgesplit.models import ModelSpec, model_spec_from_name, tune_kernels
        from edgesplit.models.kv_stage import KvStage

        torch.set_num_threads(1)
        for name in ("gpt2-tiny", "llama-tiny"):
            stage = KvStage.build(model_spec_from_name(name), 0, 3)
            with torch.inference_mode():
                stage.step(0, {"input_ids": torch.tensor([[1, 2]])}, 0)
                stage.step(0, {"input_ids": torch.tensor([[3]])}, 2)
        if model_spec is None:
            return 0
        return tune_kernels(ModelSpec.model_validate(model_spec), dtype)

    def kernels(self) -> list[dict[str, Any]]:
        """The few-row kernel choices measured in this process (`models.one_row`), as plain
        data for `StageSpec.kernels` of a later stage on this device; none without torch."""
        if "edgesplit.models.one_row" not in sys.modules:
            return []
        from edgesplit.models import one_row

        return [dataclasses.asdict(choice) for choice in one_row.measured()]

    # -- health and faults -------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        runner = self._runner
        if runner is None:
            return {"busy_since_s": None, "epoch": None}
        if runner.cut.is_set():
            runner.stopped.wait(60.0)  # a cut device is silent (its heartbeats are lost too)
        return {
            "busy_since_s": runner.busy_since_s,
            "errors_in_a_row": runner.errors_in_a_row,
            "epoch": runner.spec.epoch,
            "downstream_lost_s": runner.downstream_lost_s
            or (runner.sender.lost_s if runner.sender is not None else None),
            "refused": runner.inbound.refused if runner.inbound is not None else 0,
        }

    def fault(self, kind: FaultAction) -> None:
        """Fault injection, executed here so that it reaches a device on any node.

        kill: SIGKILL this process. stop: SIGSTOP it (a hang). crash: SIGKILL this node's raylet
        (this process's parent) and this process. cut: the data streams and heartbeats go silent.
        """
        logger.warning("[stage @ %s] fault injected: %s", self.device, kind)
        if kind == "cut":
            if self._runner is not None:
                self._runner.cut.set()
            return
        if kind == "crash":
            parent = os.getppid()
            if _process_name(parent) == "raylet":
                os.kill(parent, signal.SIGKILL)
            else:  # never kill a process we cannot name as this node's raylet
                logger.error(
                    "[stage @ %s] parent %d is not a raylet; crash = kill", self.device, parent
                )
        os.kill(os.getpid(), signal.SIGSTOP if kind == "stop" else signal.SIGKILL)

    # -- replay and teardown -----------------------------------------------------------------
    def inject(self, items: list[dict[str, Any]]) -> None:
        """Replay: put items straight into this stage's inbox (no upstream to ack)."""
        assert self._runner is not None
        for item in items:
            self._runner.put_item(
                _Item(
                    int(item["request_id"]),
                    int(item["boundary"]),
                    item["tensors"],
                    dict(item.get("meta") or {}),
                    None,
                    time.time(),
                )
            )

    def halt(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Stop this epoch; return every item still held (see [Note: retained activations])."""
        runner, self._runner = self._runner, None
        if runner is None:
            return []
        held = runner.halt(timeout_s)
        self._timelines.append(self._timeline_of(runner))
        return held

    @staticmethod
    def _timeline_of(runner: _StageRunner) -> dict[str, Any]:
        spec = runner.spec
        return {
            "index": spec.index,
            "epoch": spec.epoch,
            "start": spec.start,
            "end": spec.end,
            "entries": list(runner.timeline),
        }

    def timelines(self) -> list[dict[str, Any]]:
        """Per-epoch (request, received, compute start, compute end, sent) wall times."""
        current = [self._timeline_of(self._runner)] if self._runner is not None else []
        return [*self._timelines, *current]

    def serve(self) -> str:
        """Blocks until shutdown: the driver waits on it to learn at once that this process died."""
        self._stop.wait()
        return "stopped"

    def shutdown(self) -> None:
        self.halt(1.0)
        self._stop.set()
