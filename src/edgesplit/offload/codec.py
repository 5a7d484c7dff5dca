"""Patch codecs: how the weak device encodes the pixels of the patches it sends.

Owns encoding/decoding k square uint8 patches as raw bytes, zlib, or a mosaic image (the patches
tiled in a near-square grid, in the order sent) compressed as PNG, JPEG or WebP with Pillow.
With all patches sent in row-major order the mosaic *is* the full image, so full-image codecs are
the k = N case of the same code. "jpeg_shared" sends an abbreviated JPEG stream (no tables):
both sides build the standard tables for the quality, as JPEG's abbreviated format allows, which
saves ~300 bytes per request on tiny images. Segmented (progressive) payloads encode the patches
in independently decodable groups, so any prefix of whole segments decodes on its own: what a
deadline-cut upload delivers is still usable. Decoding never allocates more than the
frame declares: zlib output is capped, image sizes are checked before decoding (image_header).
numpy + Pillow only.
"""

from __future__ import annotations

import io
import math
import zlib
from typing import Literal, get_args

import numpy as np
from PIL import Image

from edgesplit.offload.image_header import ImageFormat, read_image_header

__all__ = [
    "CodecName",
    "decode_patches",
    "decode_segments",
    "encode_patches",
    "encode_segments",
    "is_lossy",
    "mosaic_shape",
]

CodecName = Literal["raw", "zlib", "png", "jpeg", "jpeg_shared", "webp"]
CODEC_NAMES: tuple[str, ...] = get_args(CodecName)
_PIL_FORMAT: dict[str, ImageFormat] = {
    "png": "PNG",
    "jpeg": "JPEG",
    "jpeg_shared": "JPEG",
    "webp": "WEBP",
}


def is_lossy(codec: CodecName) -> bool:
    return codec in ("jpeg", "jpeg_shared", "webp")


def _jpeg_tables(quality: int) -> bytes:
    """The tables-only JPEG stream (SOI, DQT, DHT; EOI dropped) for a quality, standard Huffman."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="JPEG", quality=quality, streamtype=1)
    return buffer.getvalue()[:-2]


def mosaic_shape(k: int) -> tuple[int, int]:
    """(rows, cols) of the tile grid for k patches: cols = ceil(sqrt k), rows = ceil(k / cols)."""
    cols = max(1, math.ceil(math.sqrt(k)))
    return math.ceil(k / cols), cols


def _to_mosaic(patches: np.ndarray) -> np.ndarray:
    k, p, _ = patches.shape
    rows, cols = mosaic_shape(k)
    tiles = np.zeros((rows * cols, p, p), dtype=np.uint8)
    tiles[:k] = patches
    if k < rows * cols:
        tiles[k:] = patches[-1]  # repeat the last patch: cheaper to code than a hard edge
    return tiles.reshape(rows, cols, p, p).transpose(0, 2, 1, 3).reshape(rows * p, cols * p)


def _from_mosaic(mosaic: np.ndarray, k: int, patch_size: int) -> np.ndarray:
    rows, cols = mosaic_shape(k)
    p = patch_size
    tiles = mosaic.reshape(rows, p, cols, p).transpose(0, 2, 1, 3).reshape(rows * cols, p, p)
    return np.ascontiguousarray(tiles[:k])


def encode_patches(patches: np.ndarray, codec: CodecName, quality: int | None = None) -> bytes:
    """Encode uint8 patches (k, p, p). `quality` (1-100) is for jpeg/webp only."""
    if patches.dtype != np.uint8 or patches.ndim != 3:
        raise ValueError(f"patches must be uint8 (k, p, p), got {patches.dtype} {patches.shape}")
    if codec == "raw":
        return patches.tobytes()
    if codec == "zlib":
        return zlib.compress(patches.tobytes(), 9)
    buffer = io.BytesIO()
    image = Image.fromarray(_to_mosaic(patches), mode="L")
    if codec == "png":
        image.save(buffer, format="PNG", optimize=True)
    elif codec == "jpeg":
        image.save(buffer, format="JPEG", quality=quality or 75, optimize=True)
    elif codec == "jpeg_shared":
        image.save(buffer, format="JPEG", quality=quality or 75, streamtype=2)
        return buffer.getvalue()[2:]  # drop SOI too: the receiver prepends the tables stream
    elif codec == "webp":
        image.save(buffer, format="WEBP", quality=quality or 75, method=6)
    else:
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODEC_NAMES}")
    return buffer.getvalue()


def decode_patches(
    payload: bytes, codec: CodecName, k: int, patch_size: int, quality: int | None = None
) -> np.ndarray:
    """Inverse of `encode_patches` -> uint8 (k, p, p).

    Raises:
        ValueError: the payload does not decode to k patches of that size (the message says
            what was expected and what was found).
    """
    expected = k * patch_size * patch_size
    if codec in ("raw", "zlib"):
        if codec == "zlib":
            payload = _inflate_at_most(payload, expected)
        if len(payload) != expected:
            raise ValueError(
                f"{codec} payload holds {len(payload)} bytes, expected {expected} "
                f"({k} patches of {patch_size}x{patch_size})"
            )
        return np.frombuffer(payload, dtype=np.uint8).reshape(k, patch_size, patch_size).copy()
    if codec not in _PIL_FORMAT:
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODEC_NAMES}")
    rows, cols = mosaic_shape(k)
    want = (cols * patch_size, rows * patch_size)
    if codec == "jpeg_shared":
        payload = _jpeg_tables(quality or 75) + payload
    image_format = _PIL_FORMAT[codec]
    # [Note: geometry before pixels] The protocol fixes the mosaic's size; the container's
    # header is checked against it before Pillow sees the bytes, so a payload declaring a
    # huge image (a decompression bomb) never reaches a decoder (issue 19).
    try:
        declared = read_image_header(payload, image_format)
    except ValueError as e:
        raise ValueError(
            f"{codec} payload is not a decodable image (expected a {want[0]}x{want[1]} mosaic): {e}"
        ) from e
    if (declared.width, declared.height) != want:
        raise ValueError(
            f"{codec} mosaic is {declared.width}x{declared.height} pixels, expected "
            f"{want[0]}x{want[1]} for {k} patches of {patch_size}x{patch_size}"
        )
    try:
        with Image.open(io.BytesIO(payload), formats=[image_format]) as image:
            if image.size != want:  # Pillow read another header than ours: refuse too
                raise ValueError(
                    f"{codec} mosaic is {image.size[0]}x{image.size[1]} pixels, expected "
                    f"{want[0]}x{want[1]} for {k} patches of {patch_size}x{patch_size}"
                )
            mosaic = np.asarray(image.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        # Pillow's UnidentifiedImageError is an OSError
        raise ValueError(f"{codec} payload is not a decodable image: {e}") from e
    return _from_mosaic(mosaic, k, patch_size)


def _inflate_at_most(payload: bytes, expected: int) -> bytes:
    """Inflate a zlib stream that must hold exactly `expected` bytes, never producing more
    than `expected + 1`: a bomb is refused after one bounded step, not after inflating."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(payload, expected + 1)
    except zlib.error as e:
        raise ValueError(f"zlib payload does not decompress: {e}") from e
    if len(out) > expected:
        raise ValueError(
            f"zlib payload inflates to more than the {expected} bytes its header declares"
        )
    if not inflater.eof:
        raise ValueError(f"zlib payload is truncated after {len(out)} of {expected} bytes")
    if inflater.unused_data:
        raise ValueError(f"zlib payload has {len(inflater.unused_data)} bytes after the end")
    return out


def encode_segments(
    patches: np.ndarray, ends: list[int], codec: CodecName, quality: int | None = None
) -> list[bytes]:
    """Encode patches (k, p, p) as independently decodable segments.

    Segment j holds patches [ends[j-1], ends[j]) (ends strictly increasing, last == k), each
    encoded on its own with `encode_patches`, so any prefix of whole segments can be decoded.
    """
    if (
        not ends
        or ends[-1] != len(patches)
        or any(b <= a for a, b in zip([0, *ends], ends, strict=False))
    ):
        raise ValueError(
            f"segment ends {ends} must increase strictly from above 0 to the patch count "
            f"{len(patches)}"
        )
    return [
        encode_patches(patches[a:b], codec, quality)
        for a, b in zip([0, *ends[:-1]], ends, strict=False)
    ]


def decode_segments(
    payload: bytes,
    segment_bytes: list[int],
    ends: list[int],
    codec: CodecName,
    patch_size: int,
    quality: int | None = None,
) -> np.ndarray:
    """Inverse of `encode_segments` for the segments in `payload` -> uint8 (ends[-1], p, p).

    Raises:
        ValueError: lengths disagree or a segment does not decode (the message says which).
    """
    if len(segment_bytes) != len(ends) or sum(segment_bytes) != len(payload):
        raise ValueError(
            f"{len(segment_bytes)} segment sizes summing to {sum(segment_bytes)} bytes do not "
            f"describe {len(ends)} segments in a {len(payload)}-byte payload"
        )
    out, offset = [], 0
    for j, (size, a, b) in enumerate(zip(segment_bytes, [0, *ends[:-1]], ends, strict=False)):
        try:
            out.append(
                decode_patches(payload[offset : offset + size], codec, b - a, patch_size, quality)
            )
        except ValueError as e:
            raise ValueError(f"segment {j} (patches {a}..{b - 1}): {e}") from e
        offset += size
    return np.concatenate(out)
