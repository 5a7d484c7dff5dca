"""Frames over real loopback TCP: explicit header + raw bytes, no pickle."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edgesplit.errors import ProtocolVersionError, TransportError
from edgesplit.runtime.transport import Frame, TcpListener, connect, encode_header


def test_frames_round_trip_arrays_of_several_dtypes() -> None:
    listener = TcpListener("127.0.0.1")
    client = connect(listener.address, timeout_s=5)
    server = listener.accept(timeout_s=5)
    assert server is not None
    rng = np.random.default_rng(0)
    tensors = {
        "hidden": rng.standard_normal((2, 5, 8)).astype(np.float32),
        "attention_mask": np.array([[1, 1, 0]], dtype=np.int64),
        "flags": np.array([True, False]),
        "empty": np.zeros((0, 3), dtype=np.float16),
    }
    client.send(Frame("data", request_id=7, boundary=3, epoch=2, tensors=tensors, meta={"k": 1}))
    client.send(Frame("ack", request_id=7, epoch=2))
    got = server.recv()
    assert got is not None
    assert (got.type, got.request_id, got.boundary, got.epoch, got.meta) == (
        "data",
        7,
        3,
        2,
        {"k": 1},
    )
    for name, array in tensors.items():
        np.testing.assert_array_equal(got.tensors[name], array)
        assert got.tensors[name].dtype == array.dtype
    ack = server.recv()
    assert ack is not None
    assert ack.type == "ack"
    client.close()
    assert server.recv() is None  # peer closed
    server.close()
    listener.close()


def test_header_is_json_not_pickle() -> None:
    header = encode_header(Frame("data", 1, 0, 0, {"x": np.zeros(2, dtype=np.float32)}))
    (length,) = struct.unpack(">I", header[:4])
    decoded = json.loads(header[4 : 4 + length])
    assert decoded["tensors"] == [{"name": "x", "dtype": "<f4", "shape": [2]}]


def test_other_protocol_version_is_a_clear_error() -> None:
    listener = TcpListener("127.0.0.1")
    client = connect(listener.address, timeout_s=5)
    server = listener.accept(timeout_s=5)
    assert server is not None
    body = json.dumps(
        {
            "v": 99,
            "type": "hello",
            "request_id": 0,
            "boundary": 0,
            "epoch": 0,
            "tensors": [],
            "meta": {},
        }
    ).encode()
    client._sock.sendall(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolVersionError, match="protocol 99"):
        server.recv()
    client.close()
    server.close()
    listener.close()


def test_connect_to_a_closed_port_names_the_address() -> None:
    listener = TcpListener("127.0.0.1")
    address = listener.address
    listener.close()
    with pytest.raises(TransportError, match=f"127.0.0.1:{address[1]}"):
        connect(address, timeout_s=1)


def test_accept_on_a_listener_closed_by_another_thread_returns_none() -> None:
    """An Inbound's accept thread may call accept just after close(): no exception escapes."""
    listener = TcpListener("127.0.0.1")
    listener.close()
    assert listener.accept(timeout_s=0.01) is None
