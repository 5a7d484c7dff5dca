"""Unit conversions (bytes, bits, seconds), in one place.

SI throughout: 1 MB = 1e6 bytes, 1 Mbps = 1e6 bit/s. Imports nothing from edgesplit.
"""

from __future__ import annotations

__all__ = [
    "BITS_PER_BYTE",
    "bytes_to_mb",
    "mb_to_bytes",
    "mbps_to_bytes_per_s",
    "ms_to_s",
    "s_to_ms",
]

BITS_PER_BYTE = 8


def mb_to_bytes(megabytes: float) -> float:
    """SI megabytes (1e6 bytes) to bytes."""
    return megabytes * 1e6


def bytes_to_mb(num_bytes: float) -> float:
    """Bytes to SI megabytes."""
    return num_bytes / 1e6


def mbps_to_bytes_per_s(megabits_per_s: float) -> float:
    """Link rate in Mbps (1e6 bit/s) to bytes per second."""
    return megabits_per_s * 1e6 / BITS_PER_BYTE


def ms_to_s(milliseconds: float) -> float:
    return milliseconds / 1e3


def s_to_ms(seconds: float) -> float:
    return seconds * 1e3
