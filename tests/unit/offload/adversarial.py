"""Adversarial request frames for the offload server: bombs, truncations, mutated payloads.

`build_corpus()` makes the corpus deterministically (seeded); `python -m
tests.unit.offload.adversarial` writes it to tests/unit/offload/corpus/ (one .bin per frame and
manifest.json with the statuses each may get). test_corpus.py replays the committed files and
checks they are what this module builds. The frames are for a 64x64 image in 8x8 patches (the
tiny pipeline's geometry).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import msgpack
import numpy as np
from PIL import Image

from edgesplit.offload.codec import encode_patches, encode_segments
from edgesplit.offload.patches import patchify
from edgesplit.offload.protocol import MAGIC, PROTOCOL_VERSION, PatchRequestHeader, encode_frame

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
ALL_PATCHES = list(range(64))  # the 64x64 mosaic of all 64 patches
CLIENT_ERRORS = (400, 409, 413, 422)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, extra: bytes = b"") -> bytes:
    """An 8-bit grey PNG whose IHDR declares width x height; its IDAT holds one row of zeros."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + extra
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1), 9))
        + png_chunk(b"IEND", b"")
    )


def jpeg_bomb(width: int, height: int) -> bytes:
    """A real 16x16 grey JPEG whose SOF0 segment is rewritten to declare width x height."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, format="JPEG", quality=50)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def webp_bomb() -> bytes:
    """A real 16x16 lossless WebP turned into an extended (VP8X) file with a 16384^2 canvas."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, format="WEBP", lossless=True)
    canvas = (16383).to_bytes(3, "little") * 2
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + canvas
    body = b"WEBP" + vp8x + buffer.getvalue()[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_lossy_bomb() -> bytes:
    """A real lossy 64x64 WebP whose VP8 key frame is rewritten to declare 16383x16383."""
    buffer = io.BytesIO()
    Image.fromarray(IMAGE).save(buffer, format="WEBP", quality=50)
    data = bytearray(buffer.getvalue())
    start = data.index(b"\x9d\x01\x2a")
    struct.pack_into("<HH", data, start + 3, 16383, 16383)
    return bytes(data)


def zlib_bomb(inflated_bytes: int) -> bytes:
    return zlib.compress(b"\x00" * inflated_bytes, 9)


def frame(payload: bytes, codec: str, indices: list[int], **fields: object) -> bytes:
    header = PatchRequestHeader.model_validate(
        {
            "request_id": "corpus",
            "image_size": 64,
            "patch_size": 8,
            "codec": codec,
            "indices": indices,
            "payload_bytes": len(payload),
            **fields,
        }
    )
    return encode_frame(header, payload)


def raw_frame(fields: object, payload: bytes = b"", version: int = PROTOCOL_VERSION) -> bytes:
    """A frame whose header is any msgpack value (no validation on this side)."""
    packed = msgpack.packb(fields, use_bin_type=True)
    return struct.pack(">4sBI", MAGIC, version, len(packed)) + packed + payload


def valid_frame(codec: str, indices: list[int], request_id: str = "corpus") -> bytes:
    payload = encode_patches(patchify(IMAGE, 8)[indices], codec, 50)  # type: ignore[arg-type]
    quality = 50 if codec in ("jpeg", "webp") else None
    return frame(payload, codec, indices, quality=quality, request_id=request_id)


def _progressive() -> bytes:
    ends = [8, 16, 32]
    segments = encode_segments(patchify(IMAGE, 8)[:32], ends, "zlib")
    return frame(
        b"".join(segments),
        "zlib",
        list(range(32)),
        segment_ends=ends,
        segment_bytes=[len(s) for s in segments],
    )


def _mutate(body: bytes, rng: np.random.Generator) -> bytes:
    """`body` with 1-8 payload bytes overwritten."""
    mutated = bytearray(body)
    start = _payload_start(body)
    for position in rng.integers(start, len(body), int(rng.integers(1, 9))):
        mutated[int(position)] = int(rng.integers(0, 256))
    return bytes(mutated)


def _payload_start(body: bytes) -> int:
    (header_length,) = struct.unpack_from(">I", body, 5)
    return 9 + header_length


def build_corpus() -> dict[str, tuple[bytes, tuple[int, ...]]]:
    """name -> (request body, the statuses it may get). Never a 5xx."""
    corpus: dict[str, tuple[bytes, tuple[int, ...]]] = {
        "bomb-png-20000": (frame(png_bomb(20_000, 20_000), "png", ALL_PATCHES), (422,)),
        "bomb-png-ztxt": (
            frame(
                png_bomb(64, 64, png_chunk(b"zTXt", b"k\x00\x00" + zlib_bomb(1 << 20))),
                "png",
                ALL_PATCHES,
            ),
            (422,),
        ),
        "bomb-png-apng": (
            frame(png_bomb(64, 64, png_chunk(b"acTL", bytes(8))), "png", ALL_PATCHES),
            (422,),
        ),
        "bomb-jpeg-65000": (frame(jpeg_bomb(65_000, 65_000), "jpeg", ALL_PATCHES), (422,)),
        "bomb-webp-vp8x": (frame(webp_bomb(), "webp", ALL_PATCHES), (422,)),
        "bomb-webp-vp8": (frame(webp_lossy_bomb(), "webp", ALL_PATCHES), (422,)),
        "bomb-zlib-1mib": (frame(zlib_bomb(1 << 20), "zlib", ALL_PATCHES), (422,)),
        "bomb-zlib-segment": (
            frame(
                zlib_bomb(64) + zlib_bomb(1 << 20),
                "zlib",
                list(range(2)),
                segment_ends=[1, 2],
                segment_bytes=[len(zlib_bomb(64)), len(zlib_bomb(1 << 20))],
            ),
            (422,),
        ),
        "header-bad-magic": (b"ESPX" + valid_frame("raw", [0])[4:], (400,)),
        "header-version-9": (raw_frame({}, version=9), (400,)),
        "header-length-past-body": (struct.pack(">4sBI", MAGIC, 1, 1 << 30) + b"x", (400,)),
        "header-not-a-map": (raw_frame([1, 2, 3]), (400,)),
        "header-nested": (raw_frame(json.loads("[" * 200 + "]" * 200)), (400,)),
        "header-bytes-key": (raw_frame({b"\x00": 1}), (400,)),
        "header-negative-size": (
            raw_frame(
                {
                    "request_id": "x",
                    "image_size": 64,
                    "patch_size": 8,
                    "codec": "raw",
                    "indices": [0],
                    "payload_bytes": -1,
                }
            ),
            (400,),
        ),
        "header-huge-indices": (
            raw_frame(
                {
                    "request_id": "x",
                    "image_size": 64,
                    "patch_size": 8,
                    "codec": "raw",
                    "indices": list(range(5000)),
                    "payload_bytes": 0,
                }
            ),
            (400,),
        ),
        "header-round2-no-session": (
            raw_frame(
                {
                    "request_id": "x",
                    "round_index": 2,
                    "image_size": 64,
                    "patch_size": 8,
                    "codec": "raw",
                    "indices": [0],
                    "payload_bytes": 64,
                },
                bytes(64),
            ),
            (400,),
        ),
        "round1-names-session": (
            frame(bytes(64), "raw", [0], request_id="corpus-s", session_id="0" * 32),
            (409,),
        ),
        "round2-unknown-session": (
            frame(bytes(64), "raw", [0], request_id="corpus-u", round_index=2, session_id="f" * 32),
            (409,),
        ),
        "geometry-128": (frame(bytes(64), "raw", [0], image_size=128), (422,)),
        "raw-short": (frame(bytes(63), "raw", [0]), (422,)),
    }
    rng = np.random.default_rng(19)
    for name, codec, indices in (
        ("zlib", "zlib", list(range(0, 64, 4))),
        ("png", "png", list(range(0, 64, 4))),
        ("jpeg", "jpeg", ALL_PATCHES),
        ("webp", "webp", ALL_PATCHES),
    ):
        body = valid_frame(codec, indices)
        start = _payload_start(body)
        for cut in (7, start - 3, start + 1, len(body) - 1):
            corpus[f"truncated-{name}-{cut}"] = (body[:cut], (400,))
        for j in range(6):  # each its own request id: an id is bound to its body
            original = valid_frame(codec, indices, request_id=f"corpus-{name}-{j}")
            corpus[f"mutated-{name}-{j}"] = (_mutate(original, rng), (200, 422))
    progressive = _progressive()
    corpus["progressive-cut-mid-segment"] = (progressive[:-3], (400,))
    return corpus


def write_corpus(directory: Path = CORPUS_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus()
    for name, (body, _) in corpus.items():
        (directory / f"{name}.bin").write_bytes(body)
    manifest = {name: list(statuses) for name, (_, statuses) in corpus.items()}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_corpus()
