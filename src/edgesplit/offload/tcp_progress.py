"""How far the kernel has delivered what was written to a TCP socket (Linux), and the pacing rule
that a progressive upload uses on a real link.

Writing to a socket says little about the link: the send buffer takes a sub-KB request body at
once, so the wall clock of the writes shows no slow progress (docs/offload.md, "Kernel tbf
check"). The peer's acknowledgements do. Two kernel views of them:

* `unacked_bytes`: `ioctl(fd, SIOCOUTQ)` (= `termios.TIOCOUTQ` on Linux), the bytes written to
  the socket that the peer has not acknowledged yet (not sent + in flight).
* `read_tcp_info`: `getsockopt(IPPROTO_TCP, TCP_INFO)` decoded against `struct tcp_info` of
  `include/uapi/linux/tcp.h` (offsets checked with `offsetof` on this machine's header); among
  others `bytes_acked` (cumulative, kernel >= 4.1) and `notsent_bytes` (>= 4.6).

Both return None where they cannot answer (not Linux, a closed socket, a kernel too old for a
field), and callers fall back to what they did without them.

`SocketTracker` finds the connection's socket inside httpx (httpcore's `trace` request
extension, `connection.connect_tcp.complete`, and the `network_stream` response extension), and
`DeliveryPacer` turns a progress source (a callable returning the unacknowledged bytes) into the
wait-then-decide step of a progressive upload. No torch, no httpx import: pure enough to test
with fake clocks.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "DeliveryPacer",
    "PaceOutcome",
    "SocketTracker",
    "TcpInfo",
    "read_tcp_info",
    "socket_of",
    "unacked_bytes",
]

_IS_LINUX = sys.platform.startswith("linux")
_SIOCOUTQ = 0x5411  # TIOCOUTQ on Linux (asm-generic/ioctls.h); SIOCOUTQ is defined as it
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_TCP_INFO_BUFFER = 256  # struct tcp_info is 232 B in 5.x headers and grows; ask for more

# (name, byte offset, struct format) in struct tcp_info (include/uapi/linux/tcp.h, native
# little/big endian as the host; every field is naturally aligned, no padding before these).
_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("state", 0, "B"),
    ("rto_us", 8, "I"),
    ("snd_mss", 16, "I"),
    ("unacked_segs", 24, "I"),
    ("rtt_us", 68, "I"),
    ("rttvar_us", 72, "I"),
    ("snd_cwnd", 80, "I"),
    ("total_retrans", 100, "I"),
    ("bytes_acked", 120, "Q"),
    ("bytes_received", 128, "Q"),
    ("segs_out", 136, "I"),
    ("notsent_bytes", 144, "I"),
    ("min_rtt_us", 148, "I"),
    ("data_segs_out", 156, "I"),
    ("delivery_rate_bytes_per_s", 160, "Q"),
    ("bytes_sent", 200, "Q"),
    ("bytes_retrans", 208, "Q"),
)


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """The fields of `struct tcp_info` used here; None where the kernel's struct is too short."""

    state: int
    rto_us: int
    snd_mss: int
    unacked_segs: int
    rtt_us: int
    rttvar_us: int
    snd_cwnd: int
    total_retrans: int
    bytes_acked: int | None
    bytes_received: int | None
    segs_out: int | None
    notsent_bytes: int | None
    min_rtt_us: int | None
    data_segs_out: int | None
    delivery_rate_bytes_per_s: int | None
    bytes_sent: int | None
    bytes_retrans: int | None

    @property
    def unacked_bytes(self) -> int | None:
        """Written but not acknowledged, from the byte counters (kernel >= 4.19): data sent once
        minus data acknowledged, plus what is still queued unsent. `bytes_acked` also counts
        the SYN (snd_una - isn), hence the 1. SIOCOUTQ is the direct, atomic view."""
        if self.bytes_sent is None or self.bytes_retrans is None or self.bytes_acked is None:
            return None
        if self.notsent_bytes is None:
            return None
        data_acked = max(0, self.bytes_acked - 1)
        return max(0, self.bytes_sent - self.bytes_retrans - data_acked) + self.notsent_bytes


def decode_tcp_info(raw: bytes) -> TcpInfo | None:
    """Decode the bytes `getsockopt(TCP_INFO)` returned; None if even the old core is missing."""
    values: dict[str, int | None] = {}
    for name, offset, fmt in _FIELDS:
        end = offset + struct.calcsize(fmt)
        values[name] = struct.unpack_from("=" + fmt, raw, offset)[0] if len(raw) >= end else None
    if values["total_retrans"] is None:  # the pre-3.x core ends at 104 B
        return None
    return TcpInfo(**values)  # type: ignore[arg-type]


def _usable(sock: socket.socket | None) -> bool:
    return _IS_LINUX and sock is not None and sock.fileno() != -1


def unacked_bytes(sock: socket.socket | None) -> int | None:
    """Bytes written to `sock` that the peer has not acknowledged (SIOCOUTQ); None if unknown."""
    if not _usable(sock):
        return None
    assert sock is not None
    import fcntl

    try:
        raw = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    return int(struct.unpack("i", raw)[0])


def read_tcp_info(sock: socket.socket | None) -> TcpInfo | None:
    """`struct tcp_info` of `sock`, decoded; None off Linux, on a closed or non-TCP socket."""
    if not _usable(sock):
        return None
    assert sock is not None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_BUFFER)
    except OSError:
        return None
    return decode_tcp_info(raw)


def socket_of(stream: object) -> socket.socket | None:
    """The socket under an httpcore network stream (`get_extra_info("socket")`), if any."""
    get = getattr(stream, "get_extra_info", None)
    if get is None:
        return None
    try:
        sock = get("socket")
    except Exception:  # a stream type that cannot tell
        return None
    return sock if isinstance(sock, socket.socket) else None


class SocketTracker:
    """Remembers the socket of the HTTP connection that carries (or will carry) a request.

    Pass `tracker.trace` as httpx's `extensions={"trace": ...}` on every request: a new
    connection (first request, a reconnect after the server closed the old one, a retry)
    reports its stream in `connection.connect_tcp.complete`. After each answer, `observe(...)`
    with the response's extensions records the connection that served it: the one a sequential
    client reuses for its next request (keep-alive). `socket` is None until then, or once that
    connection is closed.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    def trace(self, event_name: str, info: Mapping[str, object]) -> None:
        if event_name == "connection.connect_tcp.complete":
            sock = socket_of(info.get("return_value"))
            if sock is not None:
                self._sock = sock

    def observe(self, extensions: Mapping[str, object]) -> None:
        sock = socket_of(extensions.get("network_stream"))
        if sock is not None:
            self._sock = sock

    @property
    def socket(self) -> socket.socket | None:
        sock = self._sock
        return sock if sock is not None and sock.fileno() != -1 else None

    def unacked_bytes(self) -> int | None:
        return unacked_bytes(self.socket)


@dataclass(frozen=True, slots=True)
class PaceOutcome:
    """What the pacer decided before a segment. `send` is None when the progress source could
    not answer (the caller falls back to its wall-clock rule)."""

    send: bool | None
    queued_bytes: int
    waited_s: float


# fits(delivered_bytes, delivery_s, queued_bytes) -> may the next segment still go?
FitsRule = Callable[[float, float, int], bool]


@dataclass
class DeliveryPacer:
    """Before each later segment of one upload: wait until what was written is acknowledged,
    or until the segment can no longer fit; measure the delivery rate while waiting.

    The rate counts only bytes acknowledged while some were queued, over the time they were
    queued (`delivered_bytes` / `delivery_s`): a burst the link carried at once (a full token
    bucket, the socket buffer) adds neither bytes nor time, so it cannot pass for a rate.
    `fits(delivered_bytes, delivery_s, queued_bytes)` is the caller's rule (segment_fits with
    the bytes still queued ahead of the segment added to it); it is asked at every poll, so the
    wait ends as soon as waiting longer cannot let the segment arrive in time. The wait is
    therefore bounded by the deadline the rule encodes (and, against a clock that does not
    move, by `max_polls`, after which the caller falls back). One pacer per upload.
    """

    unacked: Callable[[], int | None]
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    poll_s: float = 0.002
    max_polls: int = 20_000
    delivered_bytes: float = 0.0
    delivery_s: float = 0.0

    def before_segment(self, fits: FitsRule) -> PaceOutcome:
        start = self.clock()
        queued = self.unacked()
        if queued is None:
            return PaceOutcome(None, 0, 0.0)
        t = start
        for _ in range(self.max_polls):
            if not fits(self.delivered_bytes, self.delivery_s, queued):
                return PaceOutcome(False, queued, t - start)
            if queued <= 0:
                return PaceOutcome(True, 0, t - start)
            self.sleep(self.poll_s)
            now_queued, now = self.unacked(), self.clock()
            if now_queued is None:  # the connection went away: let the caller fall back
                return PaceOutcome(None, queued, now - start)
            self.delivered_bytes += max(0, queued - now_queued)
            self.delivery_s += now - t
            queued, t = now_queued, now
        return PaceOutcome(None, queued, t - start)
