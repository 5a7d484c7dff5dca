"""Timer quantisation of measured costs: find the grid of levels, snap predictions onto it.

Owns `TimingGrid` and `detect_grid`. Pure numpy.

[Note: timing grid] Some measurement harnesses report latency in whole ticks of a coarse clock:
ProTran's rpi-cpu latencies sit on multiples of 0.80 s (4.01, 4.81, 5.61 s, ...), m1-pro-cpu's on
≈ 92 ms and m1-pro-gpu's on ≈ 2.22 ms steps. A continuous predictor pays the distance to the
nearest level on every such row (up to half a step: 17 % at m1-pro-gpu's 3-tick rows).
`detect_grid` looks for the largest step for which the values sit close to whole multiples
(mean distance below `tolerance` of a step, at least `min_levels` levels occupied, at least
`min_values` values — random values sit a quarter step away on average, many standard errors
above the tolerance), then fits offset and step by least squares on the level numbers. The
predictor decides by inner cross-validation whether snapping helps (cosearch/predictor.py).
"""

from __future__ import annotations

import numpy as np

from edgesplit.core.schema import FrozenModel

__all__ = ["TimingGrid", "detect_grid"]


class TimingGrid(FrozenModel):
    """Levels `offset + n * step` (n ≥ 1) that a device's measurements fall on."""

    offset: float
    step: float

    def levels(self, values: np.ndarray) -> np.ndarray:
        """The level number (≥ 1) nearest to each value."""
        n = np.rint((np.asarray(values, dtype=np.float64) - self.offset) / self.step)
        return np.maximum(n, 1.0)

    def snap(self, values: np.ndarray) -> np.ndarray:
        """Each value moved to its nearest level."""
        return self.offset + self.levels(values) * self.step


def _mean_distance(values: np.ndarray, step: float) -> float:
    ratio = values / step
    return float(np.mean(np.abs(ratio - np.rint(ratio))))


def detect_grid(
    values: np.ndarray,
    *,
    tolerance: float = 0.06,
    min_levels: int = 3,
    min_values: int = 20,
    finest: float = 50.0,
    num_steps: int = 4000,
) -> TimingGrid | None:
    """The coarsest grid the positive `values` sit on, or None when they do not.

    Scans steps from min(values) down to min(values)/`finest` (geometric, `num_steps` points) and
    keeps the first whose mean distance to whole multiples is below `tolerance` of a step with at
    least `min_levels` distinct levels occupied; offset and step are then refitted by least squares.
    """
    y = np.sort(np.asarray(values, dtype=np.float64))
    if len(y) < min_values or y[0] <= 0:
        return None
    for step in np.geomspace(y[0], y[0] / finest, num_steps):
        if _mean_distance(y, step) >= tolerance:
            continue
        n = np.rint(y / step)
        if len(np.unique(n)) < min_levels:
            continue
        design = np.column_stack([np.ones_like(n), n])
        offset, fitted = np.linalg.lstsq(design, y, rcond=None)[0]
        if fitted <= 0:
            return None
        grid = TimingGrid(offset=float(offset), step=float(fitted))
        residual = (y - grid.snap(y)) / grid.step
        return grid if float(np.mean(np.abs(residual))) < tolerance else None
    return None
