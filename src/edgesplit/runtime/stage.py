"""One device's stage: receive activations, compute its units, forward downstream, keep what a
replay would need. A plain class (`StageWorker`); runtime/cluster.py makes it a Ray actor.

Threads per configured epoch (a `_StageRunner`): an acceptor, one reader per upstream stream, a
compute thread, a forwarder (credit wait + link shaping) and a writer (sends when the shaped link
delivers). Imports numpy and runtime.transport/emulation; torch and models only for real compute.

[Note: retained activations] A stage holds each micro-batch from the moment it arrives until its
downstream acknowledges having forwarded it: first the input (boundary = start), then the output
(boundary = end). The downstream acks only after *it* forwarded the item, so at any instant every
accepted micro-batch is held by at least one live stage or by the driver; after a failure the
driver collects these (`halt`) and replays each micro-batch from the furthest boundary it has.
Credits: a sender may have at most `max_in_flight` unacknowledged items at its downstream, which
bounds every queue and gives back-pressure all the way to the request source.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edgesplit.core.schema import FrozenModel
from edgesplit.errors import TransportError
from edgesplit.runtime.emulation import LinkShaper
from edgesplit.runtime.transport import Connection, Frame, TcpListener, connect, listen

__all__ = ["StageSpec", "StageWorker"]

logger = logging.getLogger(__name__)
_POLL_S = 0.05


class StageSpec(FrozenModel):
    """What one stage runs in one epoch (crosses the Ray boundary as a plain dict)."""

    index: int
    device: str
    start: int
    end: int
    epoch: int
    compute: Literal["real", "emulated"]
    compute_s: float = 0.0  # emulated: seconds to sleep per micro-batch (already time-scaled)
    input_bytes: int = 0  # emulated: expected input size (checked)
    output_bytes: int = 0  # emulated: size of the output produced
    bandwidth_bytes_per_s: float | None = None  # shaping of the link out; None = unshaped
    latency_s: float = 0.0
    max_in_flight: int = 4
    model_spec: dict[str, Any] | None = None  # real: edgesplit.models.ModelSpec as a dict
    num_threads: int = 1


@dataclass
class _Item:
    request_id: int
    boundary: int
    tensors: dict[str, np.ndarray]
    upstream: Connection | None  # where to ack once forwarded; None for driver injections
    received_s: float
    compute_start_s: float = 0.0
    compute_end_s: float = 0.0
    due_s: float = 0.0


@dataclass
class _StageRunner:
    spec: StageSpec
    module: Any
    listener: TcpListener
    stopped: threading.Event = field(default_factory=threading.Event)
    inbox: queue.Queue[_Item] = field(default_factory=queue.Queue)
    outbox: queue.Queue[_Item] = field(default_factory=queue.Queue)
    wire: queue.Queue[_Item] = field(default_factory=queue.Queue)
    lock: threading.Lock = field(default_factory=threading.Lock)
    credit: threading.Condition = field(default_factory=threading.Condition)
    unacked: int = 0
    held: dict[int, tuple[int, dict[str, np.ndarray]]] = field(default_factory=dict)
    downstream: Connection | None = None
    upstreams: list[Connection] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    timeline: list[tuple[int, float, float, float, float, float]] = field(default_factory=list)
    busy_since_s: float | None = None
    last_progress_s: float = field(default_factory=time.time)
    processed: int = 0
    error: str | None = None
    downstream_lost_s: float | None = None
    emulated_output: np.ndarray | None = None

    # -- threads ---------------------------------------------------------------------------
    def start(self, downstream_address: tuple[str, int], connect_timeout_s: float) -> None:
        self.downstream = connect(downstream_address, connect_timeout_s)
        self.downstream.send(Frame("hello", epoch=self.spec.epoch, meta={"from": self.spec.device}))
        for target in (self._accept, self._compute, self._forward, self._write, self._read_acks):
            thread = threading.Thread(
                target=self._guard(target),
                daemon=True,
                name=f"stage{self.spec.index}-{target.__name__}",
            )
            thread.start()
            self.threads.append(thread)

    def _guard(self, target: Any) -> Any:
        def run() -> None:
            try:
                target()
            except Exception as e:  # surfaced through ping() to the driver
                if not self.stopped.is_set():
                    logger.exception(
                        "[stage %d @ %s] %s failed",
                        self.spec.index,
                        self.spec.device,
                        target.__name__,
                    )
                    self.error = f"{target.__name__}: {type(e).__name__}: {e}"

        return run

    def _accept(self) -> None:
        while not self.stopped.is_set():
            conn = self.listener.accept(timeout_s=0.2)
            if conn is None:
                continue
            self.upstreams.append(conn)
            reader = threading.Thread(
                target=self._guard(lambda c=conn: self._read(c)),
                daemon=True,
                name=f"stage{self.spec.index}-read",
            )
            reader.start()
            self.threads.append(reader)

    def _read(self, conn: Connection) -> None:
        while not self.stopped.is_set():
            frame = conn.recv()
            if frame is None or frame.type == "bye":
                return
            if frame.type != "data" or frame.epoch != self.spec.epoch:
                continue
            self.put_item(_Item(frame.request_id, frame.boundary, frame.tensors, conn, time.time()))

    def put_item(self, item: _Item) -> None:
        with self.lock:
            self.held[item.request_id] = (item.boundary, item.tensors)
        self.inbox.put(item)

    def _compute(self) -> None:
        while not self.stopped.is_set():
            try:
                item = self.inbox.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            item.compute_start_s = self.busy_since_s = time.time()
            outputs = self._run(item)
            item.compute_end_s = time.time()
            self.busy_since_s = None
            if self.stopped.is_set():
                return
            item.tensors = outputs
            item.boundary = self.spec.end
            with self.lock:
                self.held[item.request_id] = (item.boundary, outputs)
            self.outbox.put(item)

    def _run(self, item: _Item) -> dict[str, np.ndarray]:
        if item.boundary != self.spec.start:
            raise ValueError(
                f"micro-batch {item.request_id} arrived at unit {item.boundary} but stage "
                f"{self.spec.index} on '{self.spec.device}' starts at unit {self.spec.start}"
            )
        if self.spec.compute == "emulated":
            received = sum(int(t.nbytes) for t in item.tensors.values())
            if self.spec.input_bytes and received != self.spec.input_bytes:
                raise ValueError(
                    f"stage {self.spec.index} on '{self.spec.device}' expected "
                    f"{self.spec.input_bytes} input bytes, got {received}"
                )
            self.stopped.wait(self.spec.compute_s)
            assert self.emulated_output is not None
            return {"hidden": self.emulated_output}
        import torch

        with torch.inference_mode():
            activation = {
                k: torch.from_numpy(v if v.flags.writeable else v.copy())
                for k, v in item.tensors.items()
            }
            result = self.module(activation)
            return {k: v.detach().contiguous().numpy() for k, v in result.items()}

    def _forward(self) -> None:
        assert self.downstream is not None
        shaper = None
        if self.spec.bandwidth_bytes_per_s is not None:
            shaper = LinkShaper(self.spec.bandwidth_bytes_per_s, self.spec.latency_s)
        while not self.stopped.is_set():
            try:
                item = self.outbox.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            with self.credit:
                while self.unacked >= self.spec.max_in_flight and not self.stopped.is_set():
                    self.credit.wait(_POLL_S)
                self.unacked += 1
            now = time.time()
            size = sum(int(t.nbytes) for t in item.tensors.values())
            item.due_s = shaper.due_s(size, now) if shaper is not None else now
            self.wire.put(item)

    def _write(self) -> None:
        assert self.downstream is not None
        while not self.stopped.is_set():
            try:
                item = self.wire.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            delay_s = item.due_s - time.time()
            if delay_s > 0 and self.stopped.wait(delay_s):
                return
            frame = Frame("data", item.request_id, item.boundary, self.spec.epoch, item.tensors)
            try:
                self.downstream.send(frame)
            except TransportError:
                # The downstream died or its link broke: not this stage's error. The item stays
                # held; the driver learns who failed (Ray, heartbeats, `downstream_lost_s`).
                self.downstream_lost_s = time.time()
                return
            sent_s = time.time()
            if item.upstream is not None:
                with contextlib.suppress(TransportError):
                    item.upstream.send(Frame("ack", item.request_id, epoch=self.spec.epoch))
            self.processed += 1
            self.last_progress_s = sent_s
            self.timeline.append(
                (
                    item.request_id,
                    item.received_s,
                    item.compute_start_s,
                    item.compute_end_s,
                    item.due_s,
                    sent_s,
                )
            )

    def _read_acks(self) -> None:
        assert self.downstream is not None
        while not self.stopped.is_set():
            frame = self.downstream.recv()
            if frame is None:
                if not self.stopped.is_set():
                    self.downstream_lost_s = time.time()
                return
            if frame.type != "ack" or frame.epoch != self.spec.epoch:
                continue
            with self.lock:
                self.held.pop(frame.request_id, None)
            with self.credit:
                self.unacked -= 1
                self.credit.notify_all()

    def halt(self, timeout_s: float) -> list[dict[str, Any]]:
        self.stopped.set()
        self.listener.close()
        for conn in [*self.upstreams, *([self.downstream] if self.downstream else [])]:
            conn.close()
        deadline = time.time() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.time()))
        with self.lock:
            return [
                {"request_id": rid, "boundary": boundary, "tensors": tensors}
                for rid, (boundary, tensors) in sorted(self.held.items())
            ]


class StageWorker:
    """A device's process: builds a stage per epoch and runs it (see module docstring)."""

    def __init__(self, device: str, host: str) -> None:
        self.device = device
        self.host = host
        self._runner: _StageRunner | None = None
        self._modules: dict[tuple[int, int], Any] = {}
        self._stop = threading.Event()
        self._timelines: list[dict[str, Any]] = []

    def info(self) -> dict[str, Any]:
        return {"device": self.device, "pid": os.getpid(), "host": self.host}

    def configure(self, spec_data: dict[str, Any]) -> tuple[str, int]:
        """Build the stage of `spec_data` (only its units' weights); returns its listen address."""
        spec = StageSpec.model_validate(spec_data)
        self._retire()
        module = None
        if spec.compute == "real":
            module = self._build_module(spec)
        runner = _StageRunner(spec=spec, module=module, listener=listen(self.host))
        if spec.compute == "emulated":
            runner.emulated_output = np.zeros(spec.output_bytes, dtype=np.uint8)
        self._runner = runner
        return runner.listener.address

    def _build_module(self, spec: StageSpec) -> Any:
        import torch

        from edgesplit.models import ModelSpec, build_stage

        torch.set_num_threads(spec.num_threads)
        key = (spec.start, spec.end)
        if key not in self._modules:
            self._modules.clear()  # keep only the current stage's weights
            assert spec.model_spec is not None
            model_spec = ModelSpec.model_validate(spec.model_spec)
            self._modules[key] = build_stage(model_spec, spec.start, spec.end)
        return self._modules[key]

    def start(self, downstream_address: tuple[str, int], connect_timeout_s: float = 10.0) -> None:
        assert self._runner is not None, "configure() first"
        self._runner.start(tuple(downstream_address), connect_timeout_s)  # type: ignore[arg-type]

    def ping(self) -> dict[str, Any]:
        runner = self._runner
        if runner is None:
            return {"now_s": time.time(), "busy_since_s": None, "error": None, "processed": 0}
        return {
            "now_s": time.time(),
            "busy_since_s": runner.busy_since_s,
            "error": runner.error,
            "processed": runner.processed,
            "epoch": runner.spec.epoch,
            "downstream_lost_s": runner.downstream_lost_s,
        }

    def inject(self, items: list[dict[str, Any]]) -> None:
        """Replay: put micro-batches straight into this stage's inbox (no upstream to ack)."""
        assert self._runner is not None
        for item in items:
            self._runner.put_item(
                _Item(
                    int(item["request_id"]),
                    int(item["boundary"]),
                    item["tensors"],
                    None,
                    time.time(),
                )
            )

    def halt(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Stop this epoch; return every micro-batch still held (see [Note: retained ...])."""
        if self._runner is None:
            return []
        return self._retire(timeout_s)

    def _retire(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        runner, self._runner = self._runner, None
        if runner is None:
            return []
        held = runner.halt(timeout_s)
        self._timelines.append(
            {
                "index": runner.spec.index,
                "epoch": runner.spec.epoch,
                "start": runner.spec.start,
                "end": runner.spec.end,
                "entries": list(runner.timeline),
            }
        )
        return held

    def timelines(self) -> list[dict[str, Any]]:
        """Per-epoch (request, received, compute start, compute end, due, sent) wall times."""
        current = []
        if self._runner is not None:
            spec = self._runner.spec
            current.append(
                {
                    "index": spec.index,
                    "epoch": spec.epoch,
                    "start": spec.start,
                    "end": spec.end,
                    "entries": list(self._runner.timeline),
                }
            )
        return [*self._timelines, *current]

    def serve(self) -> str:
        """Blocks until shutdown: the driver waits on it to learn at once that this process died."""
        self._stop.wait()
        return "stopped"

    def shutdown(self) -> None:
        self._retire(1.0)
        self._stop.set()
