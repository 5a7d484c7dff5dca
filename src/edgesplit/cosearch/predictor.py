"""Per-device cost predictors: gradient boosting on derived features, an additive model, a blend.

Owns `PredictorSettings`, `CostPredictor` (one device, one target: latency, energy or peak power;
a bootstrap ensemble whose spread is the uncertainty), `cross_validate` (k-fold MAPE and Spearman
rank correlation) and `select_uncertain` (active learning: the candidates the ensemble disagrees
on most). sklearn, scipy and numpy only; never torch.

[Note: predictor design] Targets are learned in log space (errors are relative, costs span 20x).
`gbm`: sklearn GradientBoostingRegressor on `featurize` + log work terms. `additive`: latency as a
non-negative sum of work terms (per-operator projections, token mixing, FFN MACs, counts), fitted
by NNLS on relative error — it extrapolates along FLOPs where trees saturate. `blend`: the
geometric mean of both (the default; measured best or near-best on every ProTran device, see
docs/cosearch.md). Each of `num_members` members is fitted on a bootstrap resample; the member
spread (std of log predictions) is the uncertainty that active learning ranks by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import nnls
from scipy.stats import spearmanr
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.model_selection import KFold

from edgesplit.core.schema import FrozenModel
from edgesplit.cosearch.features import additive_terms, featurize_many
from edgesplit.cosearch.space import Architecture
from edgesplit.errors import ConfigError

__all__ = [
    "CostPredictor",
    "CrossValidation",
    "Method",
    "PredictorSettings",
    "cross_validate",
    "mape",
    "out_of_fold",
    "select_uncertain",
    "summarize",
]

Method = Literal["gbm", "additive", "blend"]


class PredictorSettings(FrozenModel):
    """How a predictor is fitted (defaults are the ones the benchmark reports)."""

    method: Method = "blend"
    num_members: int = 5
    n_estimators: int = 300
    max_depth: int = 3
    learning_rate: float = 0.05
    subsample: float = 0.8
    seed: int = 0


class CrossValidation(FrozenModel):
    """k-fold out-of-fold errors of one predictor on one device/target."""

    num_samples: int
    num_folds: int
    mape: float  # mean |pred - true| / true, as a fraction
    median_ape: float
    spearman: float  # rank correlation of out-of-fold predictions with the truth


def _design(archs: list[Architecture]) -> tuple[np.ndarray, np.ndarray]:
    terms = additive_terms(archs)
    return np.hstack([featurize_many(archs), np.log1p(terms)]), terms


def _fit_additive(terms: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Relative-error NNLS: minimise Σ((A c)_i / y_i − 1)² over c ≥ 0, on scaled columns.
    scale = terms.max(axis=0) + 1e-12
    coef, _ = nnls(terms / scale / y[:, None], np.ones(len(y)))
    return coef, scale


@dataclass(frozen=True, slots=True)
class _Member:
    gbm: GradientBoostingRegressor | None
    coef: np.ndarray | None
    scale: np.ndarray | None

    def predict_log(self, x: np.ndarray, terms: np.ndarray) -> np.ndarray:
        parts = []
        if self.gbm is not None:
            parts.append(self.gbm.predict(x))
        if self.coef is not None and self.scale is not None:
            linear = (terms / self.scale) @ self.coef
            parts.append(np.log(np.maximum(linear, 1e-12)))
        return np.mean(parts, axis=0)


class CostPredictor:
    """A bootstrap ensemble predicting one positive cost (e.g. latency in s) of architectures.

    Example:
        >>> p = CostPredictor(PredictorSettings(num_members=2)).fit(archs, latency_s)
        >>> mean_s, std_log = p.predict(candidates)
    """

    def __init__(self, settings: PredictorSettings | None = None) -> None:
        self.settings = settings or PredictorSettings()
        self._members: list[_Member] = []

    def fit(self, archs: list[Architecture], y: np.ndarray) -> CostPredictor:
        """Fit every member on a bootstrap resample (member 0 on all rows). Returns self."""
        y = np.asarray(y, dtype=np.float64)
        if len(archs) != len(y):
            raise ConfigError(f"{len(archs)} architectures but {len(y)} targets")
        if len(y) < 4 or np.any(y <= 0):
            raise ConfigError(
                f"need at least 4 positive targets to fit a predictor, got {len(y)} "
                f"(min {y.min() if len(y) else 'n/a'}); profile more configs"
            )
        s = self.settings
        x, terms = _design(archs)
        rng = np.random.default_rng(s.seed)
        members = []
        for index in range(s.num_members):
            rows = np.arange(len(y)) if index == 0 else rng.integers(0, len(y), len(y))
            gbm = coef = scale = None
            if s.method in ("gbm", "blend"):
                gbm = GradientBoostingRegressor(
                    n_estimators=s.n_estimators,
                    max_depth=s.max_depth,
                    learning_rate=s.learning_rate,
                    subsample=s.subsample,
                    random_state=s.seed + index,
                ).fit(x[rows], np.log(y[rows]))
            if s.method in ("additive", "blend"):
                coef, scale = _fit_additive(terms[rows], y[rows])
            members.append(_Member(gbm=gbm, coef=coef, scale=scale))
        self._members = members
        return self

    def predict(self, archs: list[Architecture]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std_log): geometric-mean prediction over members and the spread of log values."""
        if not self._members:
            raise ConfigError(
                "predictor is not fitted; call fit() or `edgesplit cosearch fit` first"
            )
        x, terms = _design(archs)
        logs = np.stack([m.predict_log(x, terms) for m in self._members])  # (M, N)
        return np.exp(logs.mean(axis=0)), logs.std(axis=0)


def mape(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute percentage error as a fraction."""
    return float(np.mean(np.abs(predicted - truth) / truth))


def out_of_fold(
    archs: list[Architecture],
    y: np.ndarray,
    settings: PredictorSettings | None = None,
    *,
    num_folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold predictions from shuffled k-fold (each row predicted by a model without it)."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) < num_folds * 2:
        raise ConfigError(f"{len(y)} samples are too few for {num_folds}-fold cross-validation")
    predicted = np.zeros_like(y)
    for train, test in KFold(num_folds, shuffle=True, random_state=seed).split(y):
        model = CostPredictor(settings).fit([archs[i] for i in train], y[train])
        predicted[test] = model.predict([archs[i] for i in test])[0]
    return predicted


def summarize(predicted: np.ndarray, y: np.ndarray, num_folds: int) -> CrossValidation:
    """MAPE, median APE and Spearman rank correlation of predictions against the truth."""
    ape = np.abs(predicted - y) / y
    return CrossValidation(
        num_samples=len(y),
        num_folds=num_folds,
        mape=float(ape.mean()),
        median_ape=float(np.median(ape)),
        spearman=float(spearmanr(predicted, y).statistic),
    )


def cross_validate(
    archs: list[Architecture],
    y: np.ndarray,
    settings: PredictorSettings | None = None,
    *,
    num_folds: int = 5,
    seed: int = 0,
) -> CrossValidation:
    """Out-of-fold MAPE, median APE and Spearman rank correlation with shuffled k-fold."""
    y = np.asarray(y, dtype=np.float64)
    return summarize(out_of_fold(archs, y, settings, num_folds=num_folds, seed=seed), y, num_folds)


def select_uncertain(
    predictor: CostPredictor, candidates: list[Architecture], count: int
) -> list[int]:
    """Indices of the `count` candidates with the largest ensemble spread (ties: lower index)."""
    _, spread = predictor.predict(candidates)
    order = np.argsort(-spread, kind="stable")
    return [int(i) for i in order[:count]]
