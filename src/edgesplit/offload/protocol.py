"""The offloading wire protocol, shared by client and server (neither imports the other).

Owns the versioned binary request frame and the JSON response model. A request body is

    b"ESPL" | version: u8 | header_length: u32 big-endian | header: msgpack map | payload

where the header is a `PatchRequestHeader` and the payload is the encoded patch pixels (see
codec.py); `payload_bytes` in the header must equal the payload's length. A *progressive* frame
(header with `segment_ends` and `segment_bytes`) may be cut after any whole segment: the device
stops uploading at its deadline and the server answers from the patches of the segments that
arrived (the header it gets back from `decode_frame` describes exactly those). No pickle anywhere.
pydantic + msgpack + stdlib only.
"""

from __future__ import annotations

import itertools
import struct
from typing import Literal

import msgpack
from pydantic import Field, ValidationError, model_validator

from edgesplit.core.schema import FrozenModel
from edgesplit.errors import ProtocolVersionError
from edgesplit.offload.codec import CodecName

__all__ = [
    "CONTENT_TYPE",
    "MAGIC",
    "PROTOCOL_VERSION",
    "ErrorResponse",
    "FrameError",
    "PatchRequestHeader",
    "PatchResponse",
    "ServerInfo",
    "decode_frame",
    "encode_frame",
]

MAGIC = b"ESPL"
PROTOCOL_VERSION = 1
CONTENT_TYPE = "application/x-edgesplit-patches"
_PREFIX = struct.Struct(">4sBI")  # magic, version, header length
MAX_HEADER_BYTES = 64 * 1024


class FrameError(ValueError):
    """A request body that is not a valid frame; the message says what is wrong."""


class PatchRequestHeader(FrozenModel):
    """What the device sends beside the pixels of one round."""

    request_id: str = Field(min_length=1, max_length=64)
    round_index: Literal[1, 2] = 1
    session_id: str | None = Field(default=None, max_length=64)  # required when round_index=2
    image_size: int = Field(gt=0, le=4096)
    patch_size: int = Field(gt=0, le=256)
    channels: Literal[1] = 1
    codec: CodecName
    quality: int | None = Field(default=None, ge=1, le=100)
    # Patch indices in payload order. Empty with server_order: the first segment_ends[-1]
    # entries of the server's published patch order (GET /v1/info), saving a byte per patch.
    indices: list[int] = Field(default_factory=list)
    server_order: bool = False
    payload_bytes: int = Field(ge=0)
    extra_k: int = Field(default=0, ge=0)  # how many patches round 2 may add (0: none wanted)
    # Progressive frames: patches [ends[j-1], ends[j]) are segment j, encoded on its own in
    # segment_bytes[j] bytes; the body may end after any whole segment.
    segment_ends: list[int] | None = None
    segment_bytes: list[int] | None = None

    @model_validator(mode="after")
    def _check(self) -> PatchRequestHeader:
        if self.server_order and (self.indices or self.segment_ends is None):
            raise ValueError(
                "server_order frames are progressive (segment_ends set) and leave indices empty"
            )
        if not self.server_order and not self.indices:
            raise ValueError("indices must list at least one patch (or set server_order)")
        if (self.segment_ends is None) != (self.segment_bytes is None):
            raise ValueError("segment_ends and segment_bytes come together or not at all")
        if self.segment_ends is not None and self.segment_bytes is not None:
            ends, sizes = self.segment_ends, self.segment_bytes
            if len(ends) != len(sizes) or not ends:
                raise ValueError(f"{len(ends)} segment ends but {len(sizes)} segment sizes")
            increasing = all(b > a for a, b in zip([0, *ends[:-1]], ends, strict=True))
            if not increasing or (not self.server_order and ends[-1] != len(self.indices)):
                raise ValueError(
                    f"segment_ends {ends[:8]} must increase strictly and end at the "
                    f"{len(self.indices)} indices"
                )
            if any(size <= 0 for size in sizes) or sum(sizes) != self.payload_bytes:
                raise ValueError(
                    f"segment_bytes must be positive and sum to payload_bytes "
                    f"{self.payload_bytes}, got a sum of {sum(sizes)}"
                )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        n = (self.image_size // self.patch_size) ** 2
        if self.server_order and self.segment_ends and self.segment_ends[-1] > n:
            raise ValueError(
                f"server_order frame of {self.segment_ends[-1]} patches; image has {n}"
            )
        bad = [i for i in self.indices if not 0 <= i < n]
        if bad:
            raise ValueError(f"patch indices {bad[:5]} out of range [0, {n})")
        if len(set(self.indices)) != len(self.indices):
            raise ValueError("patch indices repeat")
        if self.round_index == 2 and not self.session_id:
            raise ValueError("round 2 needs the session_id returned by round 1")
        return self


class PatchResponse(FrozenModel):
    """The server's answer to one round."""

    protocol_version: int = PROTOCOL_VERSION
    request_id: str
    session_id: str
    round_index: Literal[1, 2]
    label: int
    class_name: str
    confidence: float
    probabilities: list[float]
    num_received: int  # patches the answer is based on (round 1 + round 2)
    requested_indices: list[int]  # round-2 suggestion: least certain missing patches
    reused_round1: bool
    server_compute_s: float
    server_timings_s: dict[str, float]


class ErrorResponse(FrozenModel):
    """The JSON body of every 4xx/5xx the server answers."""

    error: str  # a stable code: bad_frame, unauthorized, payload, request_id_reused, internal ...
    detail: str  # what failed, the values, what to do
    protocol_version: int = PROTOCOL_VERSION


class ServerInfo(FrozenModel):
    """GET /v1/info: what a client needs before sending."""

    protocol_version: int = PROTOCOL_VERSION
    image_size: int
    patch_size: int
    channels: int
    num_patches: int
    class_names: list[str]
    patch_order: list[int]  # "server" sampling: send a prefix of this order
    max_body_bytes: int
    codecs: list[str]


def encode_frame(header: PatchRequestHeader, payload: bytes) -> bytes:
    """Build a request body; header.payload_bytes must match len(payload)."""
    if header.payload_bytes != len(payload):
        raise ValueError(f"header says {header.payload_bytes} payload bytes, got {len(payload)}")
    # Fields at their defaults are left out (the receiver fills them back in): every byte
    # counts on a weak uplink.
    fields = header.model_dump(mode="json", exclude_defaults=True)
    packed = msgpack.packb(fields, use_bin_type=True)
    return _PREFIX.pack(MAGIC, PROTOCOL_VERSION, len(packed)) + packed + payload


def decode_frame(body: bytes) -> tuple[PatchRequestHeader, bytes]:
    """Parse a request body.

    Raises:
        ProtocolVersionError: the frame is of another protocol version.
        FrameError: anything else malformed (bad magic, truncated, bad header, wrong length).
    """
    if len(body) < _PREFIX.size:
        raise FrameError(
            f"body of {len(body)} bytes is shorter than the {_PREFIX.size}-byte prefix"
        )
    magic, version, header_length = _PREFIX.unpack_from(body)
    if magic != MAGIC:
        raise FrameError(
            f"body does not start with {MAGIC!r} (got {magic!r}); not an edgesplit frame"
        )
    if version != PROTOCOL_VERSION:
        raise ProtocolVersionError(
            f"request speaks protocol version {version}, this server speaks {PROTOCOL_VERSION}; "
            "upgrade the client or the server"
        )
    if header_length > MAX_HEADER_BYTES or _PREFIX.size + header_length > len(body):
        raise FrameError(
            f"header length {header_length} exceeds the body ({len(body)} bytes) or "
            f"{MAX_HEADER_BYTES} bytes"
        )
    raw_header = body[_PREFIX.size : _PREFIX.size + header_length]
    try:
        fields = msgpack.unpackb(raw_header, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as e:
        raise FrameError(f"header is not valid msgpack: {e}") from e
    if not isinstance(fields, dict):
        raise FrameError(f"header must be a msgpack map, got {type(fields).__name__}")
    try:
        header = PatchRequestHeader.model_validate(fields)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'header'}: {err['msg']}"
            for err in e.errors()
        )
        raise FrameError(f"invalid header: {problems}") from e
    payload = body[_PREFIX.size + header_length :]
    if header.segment_ends is not None and header.segment_bytes is not None:
        return _cut_progressive(header, payload)
    if len(payload) != header.payload_bytes:
        raise FrameError(
            f"payload is {len(payload)} bytes but the header says {header.payload_bytes}"
        )
    return header, payload


def _cut_progressive(
    header: PatchRequestHeader, payload: bytes
) -> tuple[PatchRequestHeader, bytes]:
    """The header for the whole segments in a (possibly cut) progressive payload."""
    assert header.segment_ends is not None
    assert header.segment_bytes is not None
    boundaries = list(itertools.accumulate(header.segment_bytes))
    if len(payload) not in boundaries:
        raise FrameError(
            f"progressive payload of {len(payload)} bytes does not end at a segment boundary "
            f"(boundaries {boundaries[:8]}); cut uploads only between segments"
        )
    n = boundaries.index(len(payload)) + 1
    if n == len(boundaries):
        return header, payload
    cut = header.model_copy(
        update={
            "indices": header.indices[: header.segment_ends[n - 1]] if header.indices else [],
            "segment_ends": header.segment_ends[:n],
            "segment_bytes": header.segment_bytes[:n],
            "payload_bytes": len(payload),
        }
    )
    return cut, payload
