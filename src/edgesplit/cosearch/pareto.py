"""Pareto fronts and exact hypervolume for minimisation problems. Pure numpy.

`pareto_mask(points)` marks the non-dominated rows; `hypervolume(points, reference)` is the
Lebesgue measure of the region dominated by the points and bounded by `reference`, computed
exactly by slicing (HSO, While et al. 2006): sort by the last objective, and for each slab between
consecutive values add slab height x the (d-1)-dimensional hypervolume of the points below it.
d = 2 is a sweep. Cost O(n^(d-1) log n); fine for the few hundred points a search produces.

Worked example (2-D): points (1, 3), (2, 1), reference (4, 4): slabs on y are [1, 3) with the
front {(2, 1)} -> width 4-2 = 2, height 2 -> 4; [3, 4) with {(1, 3), (2, 1)} -> width 3,
height 1 -> 3; total 7.
"""

from __future__ import annotations

import numpy as np

__all__ = ["hypervolume", "pareto_mask"]


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Boolean mask of rows that no other row dominates (<= everywhere, < somewhere).

    Duplicated points are all kept.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        if not mask[i]:
            continue
        dominated_by = np.all(points <= points[i], axis=1) & np.any(points < points[i], axis=1)
        if dominated_by.any():
            mask[i] = False
    return mask


def _hv2(points: np.ndarray, reference: np.ndarray) -> float:
    order = np.argsort(points[:, 0], kind="stable")
    volume, best_y = 0.0, reference[1]
    for x, y in points[order]:
        if y < best_y:
            volume += (reference[0] - x) * (best_y - y)
            best_y = y
    return volume


def _hv(points: np.ndarray, reference: np.ndarray) -> float:
    if len(points) == 0:
        return 0.0
    d = points.shape[1]
    if d == 1:
        return float(reference[0] - points[:, 0].min())
    if d == 2:
        return _hv2(points, reference)
    order = np.argsort(points[:, -1], kind="stable")
    points = points[order]
    volume = 0.0
    for i in range(len(points)):
        upper = points[i + 1, -1] if i + 1 < len(points) else reference[-1]
        height = upper - points[i, -1]
        if height <= 0:
            continue
        below = points[: i + 1, :-1]
        volume += height * _hv(below[pareto_mask(below)], reference[:-1])
    return volume


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume dominated by `points` (N, d) up to `reference` (d,), minimisation.

    Points not strictly better than the reference in every objective contribute nothing.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, len(reference))
    reference = np.asarray(reference, dtype=np.float64)
    inside = points[np.all(points < reference, axis=1)]
    if len(inside) == 0:
        return 0.0
    return _hv(inside[pareto_mask(inside)], reference)
