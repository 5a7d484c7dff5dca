"""Scoring width placements under device failures: surrogate, enumeration, Monte Carlo.

Owns `Surrogate` (a per-unit loss-contribution model: metric = f(Σ importance of lost units), f
monotone and fitted to real masked evaluations), `lost_matrix` (which units a failed-device set
loses, for all 2^N sets at once), `failure_table` (per failed set: probability weights, size,
surrogate metric) and the summaries planners optimise: expected metric at p, mean/worst over k
failures. Pure numpy; imports core only.

[Note: surrogate] Evaluating a placement exactly needs one masked forward per failed-device set
(2^N of them). The surrogate replaces the forward by s(F) = Σ_{u lost under F} importance_u (the
single-unit ablation Δloss) and a monotone map f(s) fitted by isotonic regression to (s, metric)
pairs measured on real masked evaluations (random unit sets and device-failure sets of candidate
placements). It is only used to search; chosen plans are re-scored with real evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgesplit.core.schema import FrozenModel

__all__ = [
    "FailureTable",
    "Surrogate",
    "SurrogateCalibration",
    "enumerate_failures",
    "expected_from_k",
    "failure_table",
    "holder_masks",
    "isotonic_fit",
    "lost_matrix",
    "subset_probabilities",
]

MAX_EXACT_DEVICES = 12


class SurrogateCalibration(FrozenModel):
    """(lost importance, measured metric) pairs from real masked evaluations of one model."""

    metric_name: str
    higher_is_better: bool
    intact_metric: float
    chance_metric: float
    lost_importance: tuple[float, ...]
    measured_metric: tuple[float, ...]


def isotonic_fit(x: np.ndarray, y: np.ndarray, increasing: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: the monotone step fit of y on x; returns (knots_x, knots_y)."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    sign = 1.0 if increasing else -1.0
    values: list[float] = []
    weights: list[float] = []
    starts: list[int] = []
    for i, v in enumerate(sign * ys):
        values.append(float(v))
        weights.append(1.0)
        starts.append(i)
        while len(values) > 1 and values[-2] > values[-1]:
            w = weights[-2] + weights[-1]
            merged = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            values[-2:], weights[-2:], starts[-2:] = [merged], [w], [starts[-2]]
    fitted = np.empty_like(ys)
    for j, start in enumerate(starts):
        end = starts[j + 1] if j + 1 < len(starts) else len(ys)
        fitted[start:end] = sign * values[j]
    # knots: mean x of each block, so interpolation is piecewise linear between blocks
    knots_x = np.array(
        [
            xs[s : (starts[j + 1] if j + 1 < len(starts) else len(xs))].mean()
            for j, s in enumerate(starts)
        ]
    )
    knots_y = np.array([fitted[s] for s in starts])
    return knots_x, knots_y


@dataclass(frozen=True, slots=True)
class Surrogate:
    """metric ≈ f(Σ importance of lost units), f monotone (non-increasing in the good sense)."""

    importance: np.ndarray  # (U,) ≥ 0
    knots_x: np.ndarray
    knots_y: np.ndarray
    intact_metric: float
    higher_is_better: bool

    @classmethod
    def fit(cls, importance: np.ndarray, calibration: SurrogateCalibration) -> Surrogate:
        imp = np.clip(np.asarray(importance, float), 0.0, None)
        x = np.concatenate([[0.0], np.asarray(calibration.lost_importance, float)])
        y = np.concatenate([[calibration.intact_metric], calibration.measured_metric])
        # higher-is-better metrics fall as more importance is lost; perplexity rises
        kx, ky = isotonic_fit(x, y, increasing=not calibration.higher_is_better)
        kx = np.concatenate([[0.0], kx]) if kx[0] > 0 else kx
        ky = np.concatenate([[calibration.intact_metric], ky]) if len(ky) < len(kx) else ky
        return cls(imp, kx, ky, calibration.intact_metric, calibration.higher_is_better)

    def predict(self, lost_importance: np.ndarray) -> np.ndarray:
        s = np.asarray(lost_importance, float)
        out = np.interp(s, self.knots_x, self.knots_y)
        # losing units never predicts better than intact (pooled noise could say so)
        out = (
            np.minimum(out, self.intact_metric)
            if self.higher_is_better
            else np.maximum(out, self.intact_metric)
        )
        result: np.ndarray = np.where(s <= 0.0, self.intact_metric, out)
        return result

    def predict_lost(self, lost: np.ndarray) -> np.ndarray:
        """lost: (F, U) bool -> (F,) predicted metric."""
        return self.predict(lost.astype(float) @ self.importance)


def holder_masks(replicas: Sequence[Sequence[int]]) -> np.ndarray:
    """Per unit the bitmask of device indices holding it (int64, N ≤ 62)."""
    out = np.zeros(len(replicas), dtype=np.int64)
    for u, devices in enumerate(replicas):
        for d in devices:
            out[u] |= np.int64(1) << np.int64(d)
    return out


def enumerate_failures(num_devices: int) -> np.ndarray:
    """All 2^N failed-device bitmasks, N ≤ 12 (exact enumeration)."""
    if num_devices > MAX_EXACT_DEVICES:
        raise ValueError(f"exact enumeration is for ≤ {MAX_EXACT_DEVICES} devices")
    return np.arange(1 << num_devices, dtype=np.int64)


def lost_matrix(holders: np.ndarray, failed: np.ndarray) -> np.ndarray:
    """(F, U) bool: unit u is lost under failed set F when every holder of u is in F."""
    out: np.ndarray = (holders[None, :] & ~failed[:, None]) == 0
    return out


def _popcount(masks: np.ndarray) -> np.ndarray:
    counts = np.zeros(masks.shape, dtype=np.int64)
    m = masks.copy()
    while np.any(m):
        counts += m & 1
        m >>= 1
    return counts


def subset_probabilities(failed: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """P(exactly the devices in F fail) under independent failures with per-device p."""
    out = np.ones(len(failed))
    for d, p in enumerate(probabilities):
        bit = (failed >> d) & 1
        out *= np.where(bit == 1, p, 1.0 - p)
    return out


@dataclass(frozen=True, slots=True)
class FailureTable:
    """Every (or sampled) failed-device set with its size and the surrogate metric."""

    failed: np.ndarray  # (F,) bitmasks
    num_failed: np.ndarray  # (F,)
    metric: np.ndarray  # (F,)
    exact: bool
    num_devices: int

    def expected(self, probabilities: np.ndarray) -> float:
        """E[metric] under independent failures (exact: weighted sum; MC: sample mean)."""
        if self.exact:
            return float(subset_probabilities(self.failed, probabilities) @ self.metric)
        raise ValueError("a Monte Carlo table is drawn for one p; use expected_mc")

    def by_k(self, higher_is_better: bool) -> tuple[list[float], list[float]]:
        """(mean, worst) metric over failed sets of each size k = 0..N−1 (exact tables)."""
        means, worst = [], []
        for k in range(self.num_devices):
            sel = self.metric[self.num_failed == k]
            if len(sel) == 0:
                means.append(float("nan"))
                worst.append(float("nan"))
                continue
            means.append(float(sel.mean()))
            worst.append(float(sel.min() if higher_is_better else sel.max()))
        return means, worst


def failure_table(
    replicas: Sequence[Sequence[int]],
    num_devices: int,
    surrogate: Surrogate,
    *,
    rng: np.random.Generator | None = None,
    probability: float = 0.1,
    num_samples: int = 4096,
) -> FailureTable:
    """Score every failed set (N ≤ 12) or a Monte Carlo sample of sets at `probability`."""
    holders = holder_masks(replicas)
    if num_devices <= MAX_EXACT_DEVICES:
        failed = enumerate_failures(num_devices)
        exact = True
    else:
        rng = rng or np.random.default_rng(0)
        draws = rng.random((num_samples, num_devices)) < probability
        failed = (draws * (np.int64(1) << np.arange(num_devices, dtype=np.int64))).sum(1)
        exact = False
    metric = surrogate.predict_lost(lost_matrix(holders, failed))
    return FailureTable(failed, _popcount(failed), metric, exact, num_devices)


def expected_from_k(mean_by_k: Sequence[float], num_devices: int, p: float) -> float:
    """E[metric] with i.i.d. p from the per-k means (all-failed set counted at chance elsewhere)."""
    total = 0.0
    for k, value in enumerate(mean_by_k):
        weight = math.comb(num_devices, k) * p**k * (1 - p) ** (num_devices - k)
        total += weight * value
    return total
