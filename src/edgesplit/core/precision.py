"""Numeric precision choices and their sizes: a stage's weight dtype, a cut's link encoding.

Owns the `StageDtype` and `LinkEncoding` vocabularies and the byte arithmetic planners need
(`param_bytes_for`, `encoded_bytes`) without torch. The encoders themselves live in
`core.link_codec` (numpy); stages are converted by `models.precision` (torch).
Imports stdlib only.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = [
    "LINK_ENCODINGS",
    "STAGE_DTYPES",
    "LinkEncoding",
    "StageDtype",
    "encoded_bytes",
    "param_bytes_for",
]

StageDtype = Literal["float32", "bfloat16", "int8"]
"""How a stage holds its units' weights. int8: Linear weights int8 (per output channel scale),
activations quantized on the fly (dynamic quantization); embeddings int8 per row."""

LinkEncoding = Literal["float32", "float16", "int8-tensor", "int8-token"]
"""How floating activations cross a cut: as is, half precision, or int8 with one scale per
tensor or one scale per token (per row of the last dimension)."""

STAGE_DTYPES: Final[tuple[StageDtype, ...]] = get_args(StageDtype)
LINK_ENCODINGS: Final[tuple[LinkEncoding, ...]] = get_args(LinkEncoding)

_WEIGHT_BYTES: Final[dict[StageDtype, float]] = {"float32": 4.0, "bfloat16": 2.0, "int8": 1.0}
_ELEMENT_BYTES: Final[dict[LinkEncoding, float]] = {
    "float32": 4.0,
    "float16": 2.0,
    "int8-tensor": 1.0,
    "int8-token": 1.0,
}
SCALE_BYTES: Final = 4  # one float32 scale


def param_bytes_for(float32_param_bytes: float, dtype: StageDtype) -> float:
    """A first estimate of weight bytes in `dtype` from the float32 figure (scales ignored).

    Profiles measured with `--dtype` carry the real figure (scales, unquantized norms and
    biases included); use this only when a profile has no figure for `dtype`.
    """
    return float32_param_bytes * _WEIGHT_BYTES[dtype] / 4.0


def encoded_bytes(float32_bytes: float, encoding: LinkEncoding, num_rows: int = 1) -> float:
    """Bytes on the wire for activations that take `float32_bytes` as float32.

    `num_rows` is the number of tokens (rows of the last dimension) for per-token scales;
    headers are not counted (they are the same for every encoding).
    """
    payload = float32_bytes / 4.0 * _ELEMENT_BYTES[encoding]
    if encoding == "int8-tensor":
        return payload + SCALE_BYTES
    if encoding == "int8-token":
        return payload + SCALE_BYTES * max(1, num_rows)
    return payload
