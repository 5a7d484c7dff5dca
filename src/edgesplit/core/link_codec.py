"""Compressed activations at a cut: pure encode/decode of named numpy arrays.

Owns `encode_tensors` / `decode_tensors` for the `LinkEncoding`s of `core.precision`: float32
(as is), float16, and symmetric int8 with one scale per tensor or per token (per row of the last
dimension). Only floating arrays are encoded; ids, positions and masks pass unchanged. The
result is self-describing (dtypes plus a `<name>#scale` sibling), so a receiver decodes without
being told the encoding. Imports numpy and core only: the runtime calls it on frame tensors.

[Note: int8 link scale] q = round(x / s) clipped to [-127, 127] with s = max|x| / 127 over the
tensor or over each row; the reconstruction error is at most s / 2 per element. A row of zeros
gets s = 1 (decodes to zeros). Non-finite values are refused: they would poison the scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import numpy as np

from edgesplit.core.precision import LINK_ENCODINGS, LinkEncoding
from edgesplit.errors import ConfigError

__all__ = [
    "SCALE_SUFFIX",
    "decode_tensors",
    "encode_tensors",
    "encoded_nbytes",
    "parse_link_encoding",
]

SCALE_SUFFIX: Final = "#scale"
_INT8_MAX: Final = 127.0


def parse_link_encoding(name: str) -> LinkEncoding:
    """`name` as a LinkEncoding, or a ConfigError listing the valid names."""
    for encoding in LINK_ENCODINGS:
        if name == encoding:
            return encoding
    raise ConfigError(f"unknown link encoding '{name}'; choose one of {', '.join(LINK_ENCODINGS)}")


def encode_tensors(
    tensors: Mapping[str, np.ndarray], encoding: LinkEncoding
) -> dict[str, np.ndarray]:
    """The arrays to put on the wire for `tensors` under `encoding`.

    Floating arrays become float16 or int8 (+ a float32 `<name>#scale`: shape (1,) per tensor,
    or `shape[:-1] + (1,)` per token); every other array is passed through.

    Raises:
        ConfigError: a name already ends in `#scale`, or a floating array has NaN/inf under int8.
    """
    out: dict[str, np.ndarray] = {}
    for name, array in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            raise ConfigError(f"tensor name '{name}' is reserved for link scales")
        if not np.issubdtype(array.dtype, np.floating) or encoding == "float32":
            out[name] = array
        elif encoding == "float16":
            out[name] = array.astype(np.float16)
        else:
            values, scale = _quantize(name, array, per_token=encoding == "int8-token")
            out[name] = values
            out[name + SCALE_SUFFIX] = scale
    return out


def _quantize(name: str, array: np.ndarray, per_token: bool) -> tuple[np.ndarray, np.ndarray]:
    x = array.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ConfigError(f"tensor '{name}' has NaN or inf values; it cannot be sent as int8")
    if per_token and x.ndim >= 1:
        shape = (*x.shape[:-1], 1)
        peak = np.abs(x).max(axis=-1, keepdims=True) if x.size else np.zeros(shape)
    else:
        peak = np.array([np.abs(x).max() if x.size else 0.0])
    scale = np.where(peak > 0, peak / _INT8_MAX, 1.0).astype(np.float32)
    values = np.clip(np.rint(x / scale), -_INT8_MAX, _INT8_MAX).astype(np.int8)
    return values, scale


def decode_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float32 arrays back from `encode_tensors`' output (whatever the encoding was).

    Raises:
        ConfigError: a `#scale` array has no int8 partner or a shape that does not broadcast.
    """
    out: dict[str, np.ndarray] = {}
    for name, array in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            if name[: -len(SCALE_SUFFIX)] not in tensors:
                raise ConfigError(f"link scale '{name}' arrived without its tensor")
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is not None:
            if array.dtype != np.int8 or not _broadcasts(scale.shape, array.shape):
                raise ConfigError(
                    f"tensor '{name}' ({array.dtype}{list(array.shape)}) does not match its "
                    f"scale {list(scale.shape)}; the sender's encoding is not one of ours"
                )
            out[name] = array.astype(np.float32) * scale.astype(np.float32)
        elif array.dtype == np.float16:
            out[name] = array.astype(np.float32)
        else:
            out[name] = array
    return out


def _broadcasts(scale: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    if scale == (1,):
        return True
    return len(scale) == len(shape) and scale[:-1] == shape[:-1] and scale[-1] == 1


def encoded_nbytes(tensors: Mapping[str, np.ndarray]) -> int:
    """Payload bytes of a dict of arrays (what a frame's tensor section carries)."""
    return sum(int(a.nbytes) for a in tensors.values())
