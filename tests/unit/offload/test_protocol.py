"""The binary request frame: round trip and every way it can be malformed."""

from __future__ import annotations

import struct

import msgpack
import pytest

from edgesplit.errors import ProtocolVersionError
from edgesplit.offload.protocol import (
    MAGIC,
    FrameError,
    PatchRequestHeader,
    decode_frame,
    encode_frame,
)


def _header(**overrides: object) -> PatchRequestHeader:
    fields: dict[str, object] = {
        "request_id": "r1",
        "image_size": 64,
        "patch_size": 8,
        "codec": "raw",
        "indices": [0, 5],
        "payload_bytes": 128,
    }
    fields.update(overrides)
    return PatchRequestHeader.model_validate(fields)


def test_roundtrip() -> None:
    header = _header()
    body = encode_frame(header, b"\x01" * 128)
    decoded, payload = decode_frame(body)
    assert decoded == header
    assert payload == b"\x01" * 128
    assert b"pickle" not in body


def _raw_frame(fields: dict[str, object], payload: bytes, version: int = 1) -> bytes:
    packed = msgpack.packb(fields)
    return struct.pack(">4sBI", MAGIC, version, len(packed)) + packed + payload


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"ES", "shorter"),
        (b"XXXX" + b"\x01" + b"\x00" * 8, "does not start"),
        (struct.pack(">4sBI", MAGIC, 1, 999) + b"\x00", "header length"),
        (struct.pack(">4sBI", MAGIC, 1, 2) + b"\xc1\xc1", "msgpack"),
        (_raw_frame([1, 2], b""), "map"),  # type: ignore[arg-type]
        (_raw_frame({"request_id": "x"}, b""), "invalid header"),
    ],
)
def test_malformed_frames(body: bytes, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        decode_frame(body)


def test_version_mismatch_is_its_own_error() -> None:
    body = _raw_frame(_header().model_dump(mode="json"), b"\x01" * 128, version=9)
    with pytest.raises(ProtocolVersionError, match="version 9"):
        decode_frame(body)


def test_payload_length_must_match() -> None:
    fields = _header().model_dump(mode="json")
    with pytest.raises(FrameError, match="payload is 3 bytes"):
        decode_frame(_raw_frame(fields, b"abc"))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"indices": [0, 64]}, "out of range"),
        ({"indices": [3, 3]}, "repeat"),
        ({"round_index": 2}, "session_id"),
        ({"image_size": 60}, "multiple"),
        ({"bogus": 1}, "Extra inputs"),
    ],
)
def test_header_validation(overrides: dict[str, object], match: str) -> None:
    fields = _header().model_dump(mode="json")
    fields.update(overrides)
    with pytest.raises(FrameError, match=match):
        decode_frame(_raw_frame(fields, b"\x01" * 128))
