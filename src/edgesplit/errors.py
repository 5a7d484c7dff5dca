"""The edgesplit exception hierarchy.

Every error a user can see derives from `EdgesplitError`; messages follow the recipe
"what failed, the values, the likely cause, the next step". Imports nothing from edgesplit.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeviceUnavailableError",
    "EdgesplitError",
    "PlanInfeasibleError",
    "ProfileMissingError",
    "ProtocolVersionError",
    "RetryableError",
    "TransportError",
]


class EdgesplitError(Exception):
    """Base class of every error edgesplit raises on purpose."""

    exit_code: int = 4


class ConfigError(EdgesplitError):
    """A user-written or generated file, or an argument, is invalid."""

    exit_code = 2


class ProfileMissingError(ConfigError):
    """A device kind or unit has no measured time in the model profile."""


class PlanInfeasibleError(EdgesplitError):
    """No placement satisfies the constraints; carries the numbers that show why."""

    exit_code = 3

    def __init__(self, message: str, *, shortfall_bytes: float | None = None) -> None:
        super().__init__(message)
        self.shortfall_bytes = shortfall_bytes


class DeviceUnavailableError(EdgesplitError):
    """A device named by a plan is not reachable (no Ray node, dead, banned)."""


class TransportError(EdgesplitError):
    """Moving data between processes or machines failed."""


class RetryableError(TransportError):
    """A transient failure; callers may retry with capped backoff."""


class ProtocolVersionError(TransportError):
    """The peer speaks a different protocol version."""
