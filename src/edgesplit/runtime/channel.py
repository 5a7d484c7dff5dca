"""The one activation channel every workload uses: who may send, how much, and how fast.

Owns `Inbound` (a listener that admits at most `max_connections` peers, makes each prove the
run key before a frame is read, reads bounded frames and hands them to a callback; strangers and
malformed streams are dropped and logged, never reach compute) and `Sender` (frames to one
downstream under a credit window, with sender-side link shaping, acks read back). Stage to stage,
driver to stage 0 and last stage to driver all go through these two classes. numpy + transport
+ emulation only.

[Note: lean hops] A stage computes in the thread that read the frame, and on an unshaped link
`Sender.send` writes in that same thread, so a hop costs no hand-off between threads: one
wake-up to read, compute, send. Overlap of communication and compute is kept by the kernel's
socket buffers, which hold the `max_in_flight` frames a sender may have unacknowledged while
the receiver computes. A shaped link adds a writer thread that holds each frame until the
emulated link would have delivered it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from edgesplit.errors import TransportError
from edgesplit.runtime.emulation import LinkShaper
from edgesplit.runtime.transport import Frame, FrameError, FrameLimits, TcpConnection, TcpListener

__all__ = ["Inbound", "Sender", "drain"]

logger = logging.getLogger(__name__)
_TICK_S = 0.05
_HANDSHAKE_S = 2.0

T = TypeVar("T")
FrameHandler = Callable[[Frame, TcpConnection], None]
ClosedHandler = Callable[[TcpConnection], None]


class Inbound:
    """Accepts this run's peers on `host` and calls `on_frame(frame, conn)` from their readers.

    `on_closed(conn)` runs when an admitted peer's stream ends (EOF or a broken frame). Refused
    peers (cap reached, failed handshake, malformed frame) are counted in `refused`.
    """

    def __init__(
        self,
        host: str,
        key: bytes | None,
        on_frame: FrameHandler,
        *,
        limits: FrameLimits | None = None,
        max_connections: int = 8,
        on_closed: ClosedHandler | None = None,
        name: str = "inbound",
    ) -> None:
        self._listener: TcpListener = TcpListener(host, 0, limits)
        self.address = self._listener.address
        self._key = key
        self._on_frame = on_frame
        self._on_closed = on_closed
        self._max_connections = max_connections
        self._name = name
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[TcpConnection] = set()
        self.refused = 0
        self._thread = threading.Thread(target=self._accept, daemon=True, name=f"{name}-accept")
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            conn = self._listener.accept(timeout_s=0.2)
            if conn is None:
                continue
            with self._lock:
                full = len(self._conns) >= self._max_connections
                if not full:
                    self._conns.add(conn)
            if full:
                self._refuse(conn, f"connection cap of {self._max_connections} reached")
                continue
            threading.Thread(
                target=self._read, args=(conn,), daemon=True, name=f"{self._name}-read"
            ).start()

    def _refuse(self, conn: TcpConnection, why: str) -> None:
        with self._lock:
            self.refused += 1
            self._conns.discard(conn)
        logger.warning("[%s] dropped %s: %s", self._name, conn.peer, why)
        conn.close()

    def _read(self, conn: TcpConnection) -> None:
        try:
            if self._key is not None:
                conn.prove_as_listener(self._key, _HANDSHAKE_S)
            while not self._stopped.is_set():
                frame = conn.recv()
                if frame is None:
                    break
                self._on_frame(frame, conn)
        except TransportError as e:  # a stranger, a broken frame, another protocol version
            if not self._stopped.is_set():
                self._refuse(conn, str(e))
                if self._on_closed is not None and isinstance(e, FrameError):
                    self._on_closed(conn)
            return
        with self._lock:
            self._conns.discard(conn)
        if self._on_closed is not None and not self._stopped.is_set():
            self._on_closed(conn)

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            conn.close()


def drain(items: queue.Queue[T], stopped: threading.Event, handle: Callable[[T], bool]) -> None:
    """`handle` each item of `items` in turn until `stopped` or it returns False."""
    while not stopped.is_set():
        try:
            item = items.get(timeout=_TICK_S)
        except queue.Empty:
            continue
        if not handle(item):
            return


@dataclass
class _Pending:
    due_s: float
    frame: Frame
    after: Callable[[float], None] | None


@dataclass
class Sender:
    """Frames to one downstream: at most `max_in_flight` unacknowledged, shaped when asked.

    `send` blocks for a credit (back-pressure) and returns False once the sender is stopped or
    its stream broke. `after(sent_s)` runs once the frame has been written. Acks arrive on the
    same stream; `lost_s` is when the peer closed it (its process is gone).
    """

    conn: TcpConnection
    max_in_flight: int
    shaper: LinkShaper | None = None
    on_ack: Callable[[Frame], None] | None = None
    name: str = "sender"
    stopped: threading.Event = field(default_factory=threading.Event)
    lost_s: float | None = None
    unacked: int = 0
    _credit: threading.Condition = field(default_factory=threading.Condition)
    _wire: queue.Queue[_Pending] = field(default_factory=queue.Queue)

    def start(self) -> None:
        for target in [self._read_acks] + ([self._write] if self.shaper is not None else []):
            threading.Thread(
                target=target, daemon=True, name=f"{self.name}-{target.__name__}"
            ).start()

    def send(self, frame: Frame, after: Callable[[float], None] | None = None) -> bool:
        with self._credit:
            while self.unacked >= self.max_in_flight and not self.stopped.is_set():
                self._credit.wait(_TICK_S)
            if self.stopped.is_set():
                return False
            self.unacked += 1
        if self.shaper is None:
            return self._write_now(frame, after)
        now = time.time()
        self._wire.put(_Pending(self.shaper.due_s(frame.num_bytes, now), frame, after))
        return True

    def _write_now(self, frame: Frame, after: Callable[[float], None] | None) -> bool:
        try:
            self.conn.send(frame)
        except TransportError:
            # The downstream died or its link broke: not this side's error. The driver learns
            # who failed (Ray, heartbeats, `lost_s`).
            if not self.stopped.is_set():
                self.lost_s = self.lost_s or time.time()
            self.stopped.set()
            return False
        if after is not None:
            after(time.time())
        return True

    def _write(self) -> None:
        drain(self._wire, self.stopped, self._write_due)

    def _write_due(self, pending: _Pending) -> bool:
        delay_s = pending.due_s - time.time()
        if delay_s > 0 and self.stopped.wait(delay_s):
            return False
        return self._write_now(pending.frame, pending.after)

    def _read_acks(self) -> None:
        while not self.stopped.is_set():
            try:
                frame = self.conn.recv()
            except TransportError as e:
                logger.warning("[%s] broken ack stream: %s", self.name, e)
                frame = None
            if frame is None:
                if not self.stopped.is_set():
                    self.lost_s = self.lost_s or time.time()
                    self.stopped.set()
                return
            if frame.type != "ack":
                continue
            if self.on_ack is not None:
                self.on_ack(frame)
            with self._credit:
                self.unacked = max(0, self.unacked - 1)
                self._credit.notify_all()

    def stop(self) -> None:
        self.stopped.set()
        self.conn.close()
