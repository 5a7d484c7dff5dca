"""The edgesplit exception hierarchy.

Every error a user can see derives from `EdgesplitError`; messages follow the recipe
"what failed, the values, the likely cause, the next step". Imports nothing from edgesplit.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "DeviceUnavailableError",
    "EdgesplitError",
    "PlanInfeasibleError",
    "ProfileMissingError",
    "ProtocolVersionError",
    "RetryableError",
    "TransportError",
    "did_you_mean",
]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """ "did you mean 'x'? " for the nearest of `choices`, or "" when none is close: the hint an
    error message puts before its list of valid names."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


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
