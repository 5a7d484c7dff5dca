"""The channel over real loopback sockets: run-key handshake, frame bounds, cap, credits."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

from edgesplit.errors import TransportError
from edgesplit.runtime.channel import Inbound, Sender
from edgesplit.runtime.transport import (
    MAGIC,
    PROTOCOL_VERSION,
    Frame,
    FrameLimits,
    HandshakeError,
    TcpConnection,
    connect,
    encode_header,
    new_run_key,
)

KEY = bytes(range(32))


def declared_frame(shape: list[int], dtype: str = "<u1") -> bytes:
    """Length + header of a data frame declaring one tensor (no payload follows)."""
    header = json.dumps(
        {
            "v": PROTOCOL_VERSION,
            "type": "data",
            "request_id": 0,
            "boundary": 0,
            "epoch": 0,
            "tensors": [{"name": "x", "dtype": dtype, "shape": shape}],
            "meta": {},
        }
    ).encode()
    return struct.pack(">I", len(header)) + header


def _wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        threading.Event().wait(0.01)
    return predicate()


def _collector() -> tuple[list[Frame], Callable[[Frame, TcpConnection], None]]:
    got: list[Frame] = []

    def on_frame(frame: Frame, conn: TcpConnection) -> None:
        got.append(frame)
        if frame.type == "data":
            conn.send(Frame("ack", frame.request_id))

    return got, on_frame


def _closed_by_peer(sock: socket.socket, timeout_s: float = 5.0) -> bool:
    """Read until EOF (the peer dropped us); False if it keeps the stream open."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True  # closed with our unread bytes still queued: a reset
    except TimeoutError:
        return False
    return True


def test_peer_with_the_key_streams_frames_under_credits() -> None:
    got, on_frame = _collector()
    inbound = Inbound("127.0.0.1", KEY, on_frame, max_connections=2, name="t")
    try:
        sender = Sender(connect(inbound.address, 5.0, key=KEY), max_in_flight=2, name="t")
        sender.start()
        payload = np.arange(1000, dtype=np.float32)
        for request_id in range(10):
            assert sender.send(Frame("data", request_id, 0, 0, {"x": payload}))
        assert _wait_until(lambda: len(got) == 10)
        assert [f.request_id for f in got] == list(range(10))
        np.testing.assert_array_equal(got[-1].tensors["x"], payload)
        assert _wait_until(lambda: sender.unacked == 0)
        assert inbound.refused == 0
        sender.stop()
    finally:
        inbound.close()


def test_connector_with_another_key_is_refused_both_ways() -> None:
    got, on_frame = _collector()
    inbound = Inbound("127.0.0.1", KEY, on_frame, name="t")
    try:
        with pytest.raises(HandshakeError):
            connect(inbound.address, 5.0, key=new_run_key())
        assert _wait_until(lambda: inbound.refused == 1)
        assert got == []
    finally:
        inbound.close()


def test_stranger_garbage_and_frames_without_handshake_never_reach_the_handler() -> None:
    got, on_frame = _collector()
    inbound = Inbound("127.0.0.1", KEY, on_frame, name="t")
    frame = Frame("data", 1, 0, 0, {"input_ids": np.array([[1, 2, 3]], dtype=np.int64)})
    well_formed = encode_header(frame) + frame.tensors["input_ids"].tobytes()
    attacks = [
        b"\x00garbage" * 64,
        well_formed,
        declared_frame([64, 1024, 1024], "<f4"),
    ]
    try:
        for attack in attacks:
            with socket.create_connection(inbound.address, timeout=5) as sock:
                assert sock.recv(len(MAGIC)) == MAGIC  # the stage speaks first: a challenge
                sock.sendall(attack)
                assert _closed_by_peer(sock), attack[:16]
        assert _wait_until(lambda: inbound.refused == len(attacks))
        assert got == []
        # The legitimate peer is still served afterwards.
        conn = connect(inbound.address, 5.0, key=KEY)
        conn.send(frame)
        assert _wait_until(lambda: len(got) == 1)
        conn.close()
    finally:
        inbound.close()


def test_header_declaring_256_mib_is_refused_before_allocating() -> None:
    got, on_frame = _collector()
    closed: list[TcpConnection] = []
    inbound = Inbound(
        "127.0.0.1",
        KEY,
        on_frame,
        limits=FrameLimits(max_payload_bytes=1 << 20),
        on_closed=closed.append,
        name="t",
    )
    tracemalloc.start()
    try:
        conn = connect(inbound.address, 5.0, key=KEY)  # a peer holding the key, misbehaving
        conn._sock.sendall(declared_frame([256 << 20]))
        assert _wait_until(lambda: inbound.refused == 1)
        _, peak_bytes = tracemalloc.get_traced_memory()
        assert peak_bytes < 16 << 20, peak_bytes
        assert got == []
        assert conn.recv() is None  # dropped
    finally:
        tracemalloc.stop()
        inbound.close()


@pytest.mark.parametrize(
    "tensor",
    [
        {"name": "x", "dtype": "|O", "shape": [4]},  # objects: never
        {"name": "x", "dtype": "<f4", "shape": [-1]},
        {"name": "x", "dtype": "<f4", "shape": [1] * 9},
    ],
)
def test_malformed_tensor_specs_are_frame_errors(tensor: dict[str, object]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    left = socket.create_connection(listener.getsockname(), timeout=5)
    right, _ = listener.accept()
    listener.close()
    header = json.dumps(
        {
            "v": PROTOCOL_VERSION,
            "type": "data",
            "request_id": 0,
            "boundary": 0,
            "epoch": 0,
            "tensors": [tensor],
            "meta": {},
        }
    ).encode()
    left.sendall(struct.pack(">I", len(header)) + header)
    with pytest.raises(TransportError, match="tensor"):
        TcpConnection(right).recv()
    left.close()
    right.close()


def test_connection_cap_drops_extra_peers() -> None:
    got, on_frame = _collector()
    inbound = Inbound("127.0.0.1", KEY, on_frame, max_connections=2, name="t")
    try:
        kept = [connect(inbound.address, 5.0, key=KEY) for _ in range(2)]
        with socket.create_connection(inbound.address, timeout=5) as extra:
            assert _closed_by_peer(extra)
        assert _wait_until(lambda: inbound.refused == 1)
        for conn in kept:
            conn.close()
        assert _wait_until(lambda: not inbound._conns)  # slots free up when peers leave
        later = connect(inbound.address, 5.0, key=KEY)
        later.send(Frame("data", 7))
        assert _wait_until(lambda: [f.request_id for f in got] == [7])
        assert inbound.refused == 1
        later.close()
    finally:
        inbound.close()
