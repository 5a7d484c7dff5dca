"""Progress reports of long plan searches (best value so far, certified lower bound).

Owns `SolveProgress` and `ProgressFn`. Imports nothing from edgesplit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ProgressFn", "SolveProgress"]


@dataclass(frozen=True, slots=True)
class SolveProgress:
    """One report: seconds since the search began, best value found, certified lower bound."""

    elapsed_s: float
    best: float
    bound: float

    @property
    def gap(self) -> float:
        """best / bound - 1 (inf while no plan or no positive bound is known)."""
        if not math.isfinite(self.best) or self.bound <= 0:
            return math.inf
        return max(0.0, self.best / self.bound - 1.0)


ProgressFn = Callable[[SolveProgress], None]
