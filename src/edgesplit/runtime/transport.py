"""The wire: framed messages over TCP, an HMAC handshake, and bounds on everything that arrives.

Owns `Frame` (an explicit header + raw tensor bytes; no pickle), `FrameLimits` (what a peer may
declare before we allocate), `TcpConnection`/`TcpListener` and the run-key handshake. Imports
numpy only; never ray or torch. runtime/channel.py builds credits, link shaping and listeners
with a connection cap on top; `connect`/`listen` stay callable on their own (no key = no
handshake) for link surveys.

Wire format of one frame:
    u32 header_length (big endian) | header (UTF-8 JSON) | tensor bytes, in header order
header = {"v": PROTOCOL_VERSION, "type": ..., "request_id": ..., "boundary": ..., "epoch": ...,
          "tensors": [{"name", "dtype", "shape"}], "meta": {...}}

[Note: run key] Every stream of a run starts with a challenge-response before any frame is read:
listener -> `MAGIC + nonce_l`; connector -> `nonce_c + HMAC(key, "c" + nonce_l + nonce_c)`;
listener -> `HMAC(key, "l" + nonce_c + nonce_l)`. The 32-byte key is made by the driver per run
and reaches the stages only through Ray's authenticated control calls, so a stranger on the
network cannot feed a stage, and a stage never sends activations to a listener without the key.
All handshake reads have a fixed size and a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import secrets
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edgesplit.errors import ProtocolVersionError, TransportError

__all__ = [
    "MAGIC",
    "PROTOCOL_VERSION",
    "Frame",
    "FrameError",
    "FrameLimits",
    "FrameType",
    "HandshakeError",
    "TcpConnection",
    "TcpListener",
    "connect",
    "encode_header",
    "new_run_key",
]

PROTOCOL_VERSION = 2
MAGIC = b"ESR2"
FrameType = Literal["hello", "data", "ack"]
_TYPES = frozenset(("hello", "data", "ack"))
_LENGTH = struct.Struct(">I")
_READ_AHEAD = 1 << 16
_NONCE_BYTES = 16
_MAC_BYTES = 32
_DTYPE_KINDS = frozenset("biufc")  # numbers and booleans only: no objects, strings, voids


class FrameError(TransportError):
    """A frame that breaks the protocol or its bounds; the stream it came on is dropped."""


class HandshakeError(TransportError):
    """A peer that could not prove it holds this run's key."""


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """What a peer may declare; checked before a byte of payload is allocated."""

    max_payload_bytes: int = 64 << 20
    max_header_bytes: int = 64 << 10
    max_tensors: int = 16
    max_dims: int = 8


@dataclass(frozen=True, slots=True)
class Frame:
    """One message: a typed header and named arrays (an activation, or nothing for control)."""

    type: FrameType
    request_id: int = -1
    boundary: int = 0  # unit index the tensors stand at: stage input = its start unit
    epoch: int = 0
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_bytes(self) -> int:
        return sum(int(t.nbytes) for t in self.tensors.values())


def new_run_key() -> bytes:
    return secrets.token_bytes(32)


def encode_header(frame: Frame) -> bytes:
    header = {
        "v": PROTOCOL_VERSION,
        "type": frame.type,
        "request_id": frame.request_id,
        "boundary": frame.boundary,
        "epoch": frame.epoch,
        "tensors": [
            {"name": name, "dtype": array.dtype.str, "shape": list(array.shape)}
            for name, array in frame.tensors.items()
        ],
        "meta": frame.meta,
    }
    body = json.dumps(header, separators=(",", ":")).encode()
    return _LENGTH.pack(len(body)) + body


def _tensor_specs(
    header: dict[str, Any], limits: FrameLimits
) -> list[tuple[str, np.dtype[Any], tuple[int, ...], int]]:
    """(name, dtype, shape, bytes) of every declared tensor, refusing anything outside
    `limits`."""
    specs = header.get("tensors")
    if not isinstance(specs, list) or len(specs) > limits.max_tensors:
        raise FrameError(f"frame declares an invalid tensor list ({type(specs).__name__})")
    result = []
    total = 0
    for spec in specs:
        try:
            name = str(spec["name"])
            dtype = np.dtype(str(spec["dtype"]))
            shape = tuple(int(s) for s in spec["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise FrameError(f"frame declares a malformed tensor: {e}") from e
        if (
            dtype.kind not in _DTYPE_KINDS
            or len(shape) > limits.max_dims
            or min(shape, default=0) < 0
        ):
            raise FrameError(f"frame declares tensor '{name}' as {dtype.str}{list(shape)}")
        num_bytes = math.prod(shape) * dtype.itemsize
        total += num_bytes
        if total > limits.max_payload_bytes:
            raise FrameError(
                f"frame declares {total} bytes of tensors, over this stream's bound of "
                f"{limits.max_payload_bytes}; refused before allocating"
            )
        result.append((name, dtype, shape, num_bytes))
    return result


class TcpConnection:
    """Frames over one TCP socket; `send` is thread-safe, `recv` is for one reader thread."""

    def __init__(self, sock: socket.socket, limits: FrameLimits | None = None) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._send_lock = threading.Lock()
        self._closed = False
        self._ahead = bytearray()  # bytes read past the last frame part (one recv per frame)
        self.limits = limits or FrameLimits()
        self.peer = "?"
        try:
            host, port = sock.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            pass

    def send(self, frame: Frame) -> None:
        buffers = [memoryview(encode_header(frame))]
        for array in frame.tensors.values():
            if array.nbytes:
                buffers.append(np.ascontiguousarray(array).data.cast("B"))
        try:
            with self._send_lock:
                self._send_buffers(buffers)
        except OSError as e:
            raise TransportError(f"sending a {frame.type} frame failed: {e}") from e

    def _send_buffers(self, buffers: list[memoryview]) -> None:
        """Header and tensors in one gathering write (one wake-up of the reader, not two)."""
        while buffers:
            sent = self._sock.sendmsg(buffers)
            while buffers and sent >= len(buffers[0]):
                sent -= len(buffers[0])
                buffers.pop(0)
            if sent:
                buffers[0] = buffers[0][sent:]

    def _read_small(self, num_bytes: int) -> bytes | None:
        """`num_bytes` of framing (length, header): one recv also brings what follows, which
        later reads take from `_ahead` before asking the socket (fewer syscalls per frame)."""
        while len(self._ahead) < num_bytes:
            try:
                chunk = self._sock.recv(_READ_AHEAD)
            except OSError:
                return None
            if not chunk:
                return None
            self._ahead += chunk
        data = bytes(self._ahead[:num_bytes])
        del self._ahead[:num_bytes]
        return data

    def _read_into(self, view: memoryview) -> bool:
        """Fill `view` (a tensor's own buffer: no copy beyond the kernel's, no zero-fill)."""
        got = min(len(view), len(self._ahead))
        if got:
            view[:got] = self._ahead[:got]
            del self._ahead[:got]
        while got < len(view):
            try:
                n = self._sock.recv_into(view[got:])
            except OSError:
                return False
            if n == 0:
                return False
            got += n
        return True

    def recv(self) -> Frame | None:
        """The next frame; None at end of stream; FrameError for anything out of bounds."""
        raw_length = self._read_small(_LENGTH.size)
        if raw_length is None:
            return None
        (length,) = _LENGTH.unpack(raw_length)
        if length > self.limits.max_header_bytes:
            raise FrameError(
                f"frame header of {length} bytes exceeds {self.limits.max_header_bytes}"
            )
        raw_header = self._read_small(length)
        if raw_header is None:
            return None
        try:
            header = json.loads(raw_header)
        except ValueError as e:
            raise FrameError(f"frame header is not JSON: {e}") from e
        if not isinstance(header, dict):
            raise FrameError("frame header is not an object")
        if header.get("v") != PROTOCOL_VERSION:
            raise ProtocolVersionError(
                f"peer speaks transport protocol {header.get('v')!r}, this side "
                f"{PROTOCOL_VERSION}; run the same edgesplit version on every device"
            )
        if header.get("type") not in _TYPES:
            raise FrameError(f"unknown frame type {header.get('type')!r}")
        specs = _tensor_specs(header, self.limits)
        meta = header.get("meta") or {}
        try:
            request_id, boundary, epoch = (
                int(header["request_id"]),
                int(header["boundary"]),
                int(header["epoch"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FrameError(f"frame header lacks a valid id field: {e}") from e
        if not isinstance(meta, dict):
            raise FrameError("frame meta is not an object")
        tensors: dict[str, np.ndarray] = {}
        for name, dtype, shape, num_bytes in specs:
            raw = np.empty(num_bytes, dtype=np.uint8)
            if not self._read_into(raw.data):
                return None
            tensors[name] = raw.view(dtype).reshape(shape)
        return Frame(header["type"], request_id, boundary, epoch, tensors, dict(meta))

    # -- the run-key handshake ([Note: run key]) -----------------------------------------------
    def _read_fixed(self, num_bytes: int, timeout_s: float) -> bytes:
        self._sock.settimeout(timeout_s)
        try:
            data = self._read_small(num_bytes)
        finally:
            with contextlib.suppress(OSError):
                self._sock.settimeout(None)
        if data is None:
            raise HandshakeError(f"peer {self.peer} closed or stalled during the handshake")
        return data

    def prove_as_listener(self, key: bytes, timeout_s: float) -> None:
        """Challenge the connecting peer; HandshakeError unless it answers with the run key."""
        nonce_l = secrets.token_bytes(_NONCE_BYTES)
        try:
            self._sock.sendall(MAGIC + nonce_l)
        except OSError as e:
            raise HandshakeError(f"peer {self.peer} went away during the handshake") from e
        answer = self._read_fixed(_NONCE_BYTES + _MAC_BYTES, timeout_s)
        nonce_c, mac = answer[:_NONCE_BYTES], answer[_NONCE_BYTES:]
        expected = hmac.new(key, b"c" + nonce_l + nonce_c, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise HandshakeError(f"peer {self.peer} does not hold this run's key")
        reply = hmac.new(key, b"l" + nonce_c + nonce_l, hashlib.sha256).digest()
        try:
            self._sock.sendall(reply)
        except OSError as e:
            raise HandshakeError(f"peer {self.peer} went away during the handshake") from e

    def prove_as_connector(self, key: bytes, timeout_s: float) -> None:
        """Answer the listener's challenge and check that the listener holds the key too."""
        challenge = self._read_fixed(len(MAGIC) + _NONCE_BYTES, timeout_s)
        if challenge[: len(MAGIC)] != MAGIC:
            raise HandshakeError(f"{self.peer} is not an edgesplit stage of this version")
        nonce_l = challenge[len(MAGIC) :]
        nonce_c = secrets.token_bytes(_NONCE_BYTES)
        mac = hmac.new(key, b"c" + nonce_l + nonce_c, hashlib.sha256).digest()
        try:
            self._sock.sendall(nonce_c + mac)
        except OSError as e:
            raise HandshakeError(f"{self.peer} refused the handshake: {e}") from e
        reply = self._read_fixed(_MAC_BYTES, timeout_s)
        expected = hmac.new(key, b"l" + nonce_c + nonce_l, hashlib.sha256).digest()
        if not hmac.compare_digest(reply, expected):
            raise HandshakeError(f"{self.peer} does not hold this run's key")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


class TcpListener:
    """A listening socket on `host` (port 0 = any free port)."""

    def __init__(self, host: str, port: int = 0, limits: FrameLimits | None = None) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(16)
        self.limits = limits or FrameLimits()
        self.address: tuple[str, int] = (host, self._sock.getsockname()[1])

    def accept(self, timeout_s: float) -> TcpConnection | None:
        """A peer, or None after `timeout_s` or once the listener is closed (by another thread)."""
        try:
            self._sock.settimeout(timeout_s)
            sock, _ = self._sock.accept()
        except (TimeoutError, OSError):
            return None
        sock.settimeout(None)
        return TcpConnection(sock, self.limits)

    def close(self) -> None:
        self._sock.close()


def connect(
    address: tuple[str, int],
    timeout_s: float,
    *,
    key: bytes | None = None,
    limits: FrameLimits | None = None,
) -> TcpConnection:
    """Open a stream to `address` (and prove the run key when given); TransportError naming it."""
    try:
        sock = socket.create_connection(address, timeout=timeout_s)
    except OSError as e:
        raise TransportError(
            f"cannot connect to {address[0]}:{address[1]} within {timeout_s} s: {e}; is the "
            "stage running and the port reachable (firewall between devices)?"
        ) from e
    sock.settimeout(None)
    conn = TcpConnection(sock, limits)
    if key is not None:
        try:
            conn.prove_as_connector(key, timeout_s)
        except HandshakeError:
            conn.close()
            raise
    return conn
