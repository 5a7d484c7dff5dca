"""Typed identifiers. Imports nothing from edgesplit."""

from __future__ import annotations

from typing import NewType

__all__ = ["DeviceId", "DeviceKind", "ModelId"]

DeviceId = NewType("DeviceId", str)
DeviceKind = NewType("DeviceKind", str)
ModelId = NewType("ModelId", str)
