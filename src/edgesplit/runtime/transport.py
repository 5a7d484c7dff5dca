"""The activation data path: framed messages over direct TCP streams between stages.

Owns `Frame` (an explicit header + raw tensor bytes; no pickle), `Connection`/`Listener` (the small
transport interface the pipeline talks to) and their TCP implementation. Imports numpy only; never
ray or torch. Ray keeps membership, placement and health; activations travel here (see
docs/runtime.md for the measurement that made us move them off Ray's object store across nodes).

Wire format of one frame:
    u32 header_length (big endian) | header (UTF-8 JSON) | tensor bytes, in header order
header = {"v": PROTOCOL_VERSION, "type": ..., "request_id": ..., "boundary": ..., "epoch": ...,
          "tensors": [{"name", "dtype", "shape"}], "meta": {...}}
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from edgesplit.errors import ProtocolVersionError, TransportError

__all__ = [
    "PROTOCOL_VERSION",
    "Connection",
    "Frame",
    "FrameType",
    "Listener",
    "TcpConnection",
    "TcpListener",
    "connect",
    "listen",
]

PROTOCOL_VERSION = 1
FrameType = Literal["hello", "data", "ack", "bye"]
_LENGTH = struct.Struct(">I")
_MAX_HEADER_BYTES = 1 << 20


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


class Connection(Protocol):
    """A bidirectional, ordered stream of frames."""

    def send(self, frame: Frame) -> None: ...

    def recv(self) -> Frame | None:
        """The next frame, or None when the peer closed the stream."""
        ...

    def close(self) -> None: ...


class Listener(Protocol):
    address: tuple[str, int]

    def accept(self, timeout_s: float) -> Connection | None: ...

    def close(self) -> None: ...


class TcpConnection:
    """Frames over one TCP socket; `send` is thread-safe, `recv` is for one reader thread."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._send_lock = threading.Lock()
        self._closed = False

    def send(self, frame: Frame) -> None:
        arrays = [np.ascontiguousarray(a) for a in frame.tensors.values()]
        try:
            with self._send_lock:
                self._sock.sendall(encode_header(frame))
                for array in arrays:
                    if array.nbytes:
                        self._sock.sendall(array.data.cast("B"))
        except OSError as e:
            raise TransportError(f"sending a {frame.type} frame failed: {e}") from e

    def _read_exact(self, num_bytes: int) -> bytearray | None:
        buffer = bytearray(num_bytes)
        view = memoryview(buffer)
        got = 0
        while got < num_bytes:
            try:
                n = self._sock.recv_into(view[got:], num_bytes - got)
            except OSError:
                return None
            if n == 0:
                return None
            got += n
        return buffer

    def recv(self) -> Frame | None:
        raw_length = self._read_exact(_LENGTH.size)
        if raw_length is None:
            return None
        (length,) = _LENGTH.unpack(raw_length)
        if length > _MAX_HEADER_BYTES:
            raise TransportError(f"frame header of {length} bytes exceeds {_MAX_HEADER_BYTES}")
        raw_header = self._read_exact(length)
        if raw_header is None:
            return None
        header = json.loads(raw_header)
        if header.get("v") != PROTOCOL_VERSION:
            raise ProtocolVersionError(
                f"peer speaks transport protocol {header.get('v')!r}, this side "
                f"{PROTOCOL_VERSION}; run the same edgesplit version on every device"
            )
        tensors: dict[str, np.ndarray] = {}
        for spec in header["tensors"]:
            dtype = np.dtype(spec["dtype"])
            shape = tuple(int(s) for s in spec["shape"])
            num_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            raw = self._read_exact(num_bytes) if num_bytes else bytearray()
            if raw is None:
                return None
            tensors[spec["name"]] = np.frombuffer(raw, dtype=dtype).reshape(shape)
        return Frame(
            type=header["type"],
            request_id=int(header["request_id"]),
            boundary=int(header["boundary"]),
            epoch=int(header["epoch"]),
            tensors=tensors,
            meta=dict(header.get("meta") or {}),
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


class TcpListener:
    """A listening socket on `host` (port 0 = any free port)."""

    def __init__(self, host: str, port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(16)
        self.address: tuple[str, int] = (host, self._sock.getsockname()[1])

    def accept(self, timeout_s: float) -> TcpConnection | None:
        self._sock.settimeout(timeout_s)
        try:
            sock, _ = self._sock.accept()
        except (TimeoutError, OSError):
            return None
        sock.settimeout(None)
        return TcpConnection(sock)

    def close(self) -> None:
        self._sock.close()


def listen(host: str, port: int = 0) -> TcpListener:
    return TcpListener(host, port)


def connect(address: tuple[str, int], timeout_s: float) -> TcpConnection:
    """Open a stream to `address`; TransportError naming it when that fails."""
    try:
        sock = socket.create_connection(address, timeout=timeout_s)
    except OSError as e:
        raise TransportError(
            f"cannot connect to {address[0]}:{address[1]} within {timeout_s} s: {e}; is the "
            "stage running and the port reachable (firewall between devices)?"
        ) from e
    sock.settimeout(None)
    return TcpConnection(sock)
