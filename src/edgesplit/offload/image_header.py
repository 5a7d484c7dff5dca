"""What an encoded PNG, JPEG or WebP says about itself, read from its container, never decoded.

Owns the pre-decode check of issue 19: the server knows from the protocol how large the mosaic
must be, so a payload whose header declares anything else (a decompression bomb declares
20000x20000) is refused before Pillow allocates a pixel. Also refused: what our encoder never
writes and what would make Pillow inflate or hold more than the pixels (compressed PNG text and
ICC chunks, animation). Pure stdlib; no Pillow, no numpy.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

__all__ = ["ImageFormat", "ImageHeader", "read_image_header"]

ImageFormat = Literal["PNG", "JPEG", "WEBP"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Critical chunks and small fixed-size ancillary ones. Everything else (tEXt, zTXt, iTXt, iCCP,
# eXIf, APNG's acTL/fcTL/fdAT) is refused: zTXt/iTXt/iCCP make Pillow inflate up to 1 MB each.
_PNG_CHUNKS = frozenset(
    {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs"}
    | {b"bKGD", b"tIME", b"hIST"}
)
# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman/arithmetic).
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE})
_JPEG_SOS = 0xDA
_WEBP_ANIMATION_FLAG = 0x02


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """The size an image declares, in pixels."""

    width: int
    height: int


def read_image_header(data: bytes, image_format: ImageFormat) -> ImageHeader:
    """The width and height `data` declares, from its container headers alone.

    Raises:
        ValueError: the bytes are not a well-formed container of that format, or hold parts the
            offload protocol never sends (the message names the part).
    """
    if image_format == "PNG":
        return _png(data)
    if image_format == "JPEG":
        return _jpeg(data)
    return _webp(data)


def _png(data: bytes) -> ImageHeader:
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG (bad signature)")
    offset, header = len(_PNG_SIGNATURE), None
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        end = offset + 12 + length  # length, type, data, crc
        if end > len(data):
            raise ValueError(f"PNG chunk {kind!r} of {length} bytes runs past the payload")
        if header is None and kind != b"IHDR":
            raise ValueError(f"PNG starts with chunk {kind!r}, not IHDR")
        if kind not in _PNG_CHUNKS:
            raise ValueError(f"PNG chunk {kind!r} is not accepted (pixels only)")
        if kind == b"IHDR":
            if header is not None or length != 13:
                raise ValueError("PNG has a repeated or malformed IHDR")
            header = ImageHeader(*struct.unpack_from(">II", data, offset + 8))
        offset = end
        if kind == b"IEND":
            break
    if header is None:
        raise ValueError("PNG has no IHDR")
    return header


def _jpeg(data: bytes) -> ImageHeader:
    """Walk the marker segments up to the first scan; exactly one start-of-frame allowed."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG (no SOI marker)")
    offset, frames = 2, []
    while True:
        if offset + 2 > len(data) or data[offset] != 0xFF:
            raise ValueError("JPEG ends or breaks before its first scan")
        marker = data[offset + 1]
        if marker == 0xFF:  # a fill byte before the marker
            offset += 1
            continue
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # stand-alone markers have no length
            offset += 2
            continue
        if offset + 4 > len(data):
            raise ValueError("JPEG ends inside a segment header")
        (length,) = struct.unpack_from(">H", data, offset + 2)
        if length < 2 or offset + 2 + length > len(data):
            raise ValueError(f"JPEG segment 0xFF{marker:02X} of {length} bytes is malformed")
        if marker in _JPEG_SOF:
            if length < 8:
                raise ValueError("JPEG start-of-frame segment is too short")
            height, width = struct.unpack_from(">HH", data, offset + 5)
            frames.append(ImageHeader(width, height))
        if marker == _JPEG_SOS:
            break
        offset += 2 + length
    if len(frames) != 1:
        raise ValueError(f"JPEG has {len(frames)} start-of-frame segments, expected 1")
    return frames[0]


def _webp(data: bytes) -> ImageHeader:
    if len(data) < 20 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP (no RIFF/WEBP header)")
    offset, canvas, image = 12, None, None
    while offset + 8 <= len(data):
        kind = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body = data[offset + 8 : offset + 8 + size]
        if len(body) != size:
            raise ValueError(f"WebP chunk {kind!r} of {size} bytes runs past the payload")
        if kind == b"VP8X":
            if offset != 12 or size < 10:
                raise ValueError("WebP VP8X chunk is misplaced or too short")
            if body[0] & _WEBP_ANIMATION_FLAG:
                raise ValueError("animated WebP is not accepted")
            canvas = ImageHeader(
                int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1
            )
        elif kind in (b"ANIM", b"ANMF"):
            raise ValueError("animated WebP is not accepted")
        elif kind in (b"VP8 ", b"VP8L") and image is None:
            image = _webp_bitstream(kind, body)
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    if image is None:
        raise ValueError("WebP has no VP8/VP8L image chunk")
    if canvas is not None and canvas != image:
        raise ValueError(
            f"WebP canvas {canvas.width}x{canvas.height} differs from its image "
            f"{image.width}x{image.height}"
        )
    return image


def _webp_bitstream(kind: bytes, body: bytes) -> ImageHeader:
    if kind == b"VP8L":  # lossless: signature 0x2F, then 14-bit width-1 and height-1
        if len(body) < 5 or body[0] != 0x2F:
            raise ValueError("WebP VP8L chunk has a bad signature")
        bits = int.from_bytes(body[1:5], "little")
        return ImageHeader((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    # lossy: 3-byte frame tag, start code 9D 01 2A, then 14-bit width and height (+2-bit scale)
    if len(body) < 10 or body[3:6] != b"\x9d\x01\x2a":
        raise ValueError("WebP VP8 chunk has no key-frame start code")
    width, height = struct.unpack_from("<HH", body, 6)
    return ImageHeader(width & 0x3FFF, height & 0x3FFF)
