"""Per-device cost predictors: gradient boosting on derived features, an additive model, a blend.

Owns `PredictorSettings`, `CostPredictor` (one device, one target: latency, energy or peak power;
a bootstrap ensemble whose spread is the uncertainty), `cross_validate` (k-fold MAPE and Spearman
rank correlation) and `select_uncertain` (active learning: the candidates the ensemble disagrees
on most). sklearn, scipy and numpy only; never torch.

[Note: predictor design] Targets are learned in log space (errors are relative, costs span 20x).
`gbm`: sklearn GradientBoostingRegressor on `featurize` + log work terms. `additive`: latency as a
non-negative sum of work terms (per-operator projections, token mixing, FFN MACs, counts, weight
bytes and a memory-pressure term), fitted by NNLS on squared relative error; `additive_l1` fits
the same sum on absolute relative error (MAPE itself, a linear program) — both extrapolate along
FLOPs where trees saturate. `stack`: `additive_l1` times a shallow L1 booster on its log ratio.
`trees`: extra-trees on the features plus the log of `additive_l1`. `ensemble`: the geometric
mean of `additive_l1`, `stack` and `trees`; `blend`: of `gbm` and `additive`. `auto` (the
default) picks one of `AUTO_CANDIDATES` per fit by inner 3-fold MAPE on the training rows only,
so cross-validating `auto` is nested CV: no choice ever sees the outer test fold. Each of
`num_members` members is fitted on a bootstrap resample; the member spread (std of log
predictions) is the uncertainty that active learning ranks by. When the training targets sit on a
timer grid (cosearch/quantum.py) and `snap="auto"`, the same inner folds also decide whether
snapping the prediction onto the grid helps (choice `"<method>+grid"`); `predict(...,
as_measured=True)` then snaps (cross-validation against the measurements does), while the default
prediction stays continuous for search and refinement. Without a grid nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import linprog, nnls
from scipy.stats import spearmanr
from sklearn.ensemble import ExtraTreesRegressor, GradientBoostingRegressor
from sklearn.model_selection import KFold

from edgesplit.core.schema import FrozenModel
from edgesplit.cosearch.features import additive_terms, featurize_many
from edgesplit.cosearch.quantum import TimingGrid, detect_grid
from edgesplit.cosearch.space import Architecture
from edgesplit.errors import ConfigError

__all__ = [
    "AUTO_CANDIDATES",
    "METHODS",
    "CostPredictor",
    "CrossValidation",
    "Method",
    "PredictorSettings",
    "compare_methods",
    "cross_validate",
    "mape",
    "out_of_fold",
    "select_uncertain",
    "summarize",
]

Method = Literal["gbm", "additive", "additive_l1", "stack", "trees", "ensemble", "blend", "auto"]
METHODS: tuple[Method, ...] = (
    "gbm",
    "additive",
    "additive_l1",
    "stack",
    "trees",
    "ensemble",
    "blend",
    "auto",
)
# What `auto` chooses among, by inner k-fold MAPE on the training rows only (nested CV).
AUTO_CANDIDATES: tuple[Method, ...] = ("additive", "additive_l1", "stack", "trees", "ensemble")

# Which fitted parts each method averages (geometric mean of their predictions).
_PARTS: dict[str, tuple[str, ...]] = {
    "gbm": ("gbm",),
    "additive": ("additive",),
    "additive_l1": ("additive_l1",),
    "stack": ("stack",),
    "trees": ("trees",),
    "ensemble": ("additive_l1", "stack", "trees"),
    "blend": ("gbm", "additive"),
}


class PredictorSettings(FrozenModel):
    """How a predictor is fitted (defaults are the ones the benchmark reports)."""

    method: Method = "auto"
    num_members: int = 5
    n_estimators: int = 300
    max_depth: int = 3
    learning_rate: float = 0.05
    subsample: float = 0.8
    seed: int = 0
    candidates: tuple[Method, ...] = AUTO_CANDIDATES  # for method="auto"
    inner_folds: int = 3  # for method="auto" and for the snap decision
    # "auto": if the training targets sit on a timer grid, inner CV decides whether to snap
    # predictions onto it; "never": continuous predictions always.
    snap: Literal["auto", "never"] = "auto"


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


def _fit_additive_l1(terms: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimise Σ|(A c)_i / y_i − 1| over c ≥ 0 — MAPE itself — as a linear program (HiGHS)."""
    scale = terms.max(axis=0) + 1e-12
    a = terms / scale / y[:, None]
    n, k = a.shape
    # Variables [c (k), u (n)]: minimise Σu subject to ±(A c − 1) ≤ u.
    eye = np.eye(n)
    result = linprog(
        np.concatenate([np.zeros(k), np.ones(n)]),
        A_ub=np.block([[a, -eye], [-a, -eye]]),
        b_ub=np.concatenate([np.ones(n), -np.ones(n)]),
        bounds=[(0, None)] * (k + n),
        method="highs",
    )
    if not result.success:  # fall back to the least-squares fit (never seen on real data)
        return _fit_additive(terms, y)
    return result.x[:k], scale


def _linear(coef: np.ndarray, scale: np.ndarray, terms: np.ndarray) -> np.ndarray:
    return np.log(np.maximum((terms / scale) @ coef, 1e-12))


@dataclass(frozen=True, slots=True)
class _Member:
    """One fitted model: the parts its method averages (log space)."""

    parts: tuple[str, ...]
    gbm: GradientBoostingRegressor | None = None
    coef: np.ndarray | None = None  # least-squares additive
    scale: np.ndarray | None = None
    coef_l1: np.ndarray | None = None  # L1 additive (also the base of stack and trees)
    scale_l1: np.ndarray | None = None
    residual: GradientBoostingRegressor | None = None  # stack: log(y / additive_l1)
    trees: ExtraTreesRegressor | None = None  # log y from features + log additive_l1

    def predict_parts(self, x: np.ndarray, terms: np.ndarray) -> dict[str, np.ndarray]:
        """Log predictions of every fitted part."""
        out: dict[str, np.ndarray] = {}
        if self.gbm is not None:
            out["gbm"] = self.gbm.predict(x)
        if self.coef is not None and self.scale is not None:
            out["additive"] = _linear(self.coef, self.scale, terms)
        if self.coef_l1 is not None and self.scale_l1 is not None:
            base = _linear(self.coef_l1, self.scale_l1, terms)
            out["additive_l1"] = base
            xs = np.hstack([x, base[:, None]])
            if self.residual is not None:
                out["stack"] = base + self.residual.predict(xs)
            if self.trees is not None:
                out["trees"] = self.trees.predict(xs)
        return out

    def predict_log(self, x: np.ndarray, terms: np.ndarray) -> np.ndarray:
        parts = self.predict_parts(x, terms)
        return np.mean([parts[p] for p in self.parts], axis=0)


def _fit_member(
    method: Method | tuple[Method, ...],
    x: np.ndarray,
    terms: np.ndarray,
    y: np.ndarray,
    settings: PredictorSettings,
    seed: int,
) -> _Member:
    """Fit one method's parts (or several methods' at once, sharing common parts)."""
    methods = (method,) if isinstance(method, str) else method
    parts = tuple(dict.fromkeys(p for m in methods for p in _PARTS[m]))
    fields: dict[str, object] = {}
    if "gbm" in parts:
        fields["gbm"] = GradientBoostingRegressor(
            n_estimators=settings.n_estimators,
            max_depth=settings.max_depth,
            learning_rate=settings.learning_rate,
            subsample=settings.subsample,
            random_state=seed,
        ).fit(x, np.log(y))
    if "additive" in parts:
        fields["coef"], fields["scale"] = _fit_additive(terms, y)
    if {"additive_l1", "stack", "trees"} & set(parts):
        coef, scale = _fit_additive_l1(terms, y)
        fields["coef_l1"], fields["scale_l1"] = coef, scale
        base = _linear(coef, scale, terms)
        xs = np.hstack([x, base[:, None]])
        if "stack" in parts:
            # A shallow, slow, L1 booster on the additive model's log ratio: corrections for
            # what the sum of work terms misses, robust to the noisy rows MAPE would punish.
            fields["residual"] = GradientBoostingRegressor(
                loss="absolute_error",
                n_estimators=max(1, 2 * settings.n_estimators // 3),
                max_depth=2,
                learning_rate=0.03,
                subsample=settings.subsample,
                random_state=seed,
            ).fit(xs, np.log(y) - base)
        if "trees" in parts:
            fields["trees"] = ExtraTreesRegressor(
                n_estimators=settings.n_estimators,
                min_samples_leaf=2,
                max_features=0.5,
                random_state=seed,
                n_jobs=1,
            ).fit(xs, np.log(y))
    return _Member(parts=parts, **fields)  # type: ignore[arg-type]  # fields match _Member


def _method_logs(
    methods: tuple[Method, ...],
    x: np.ndarray,
    terms: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    terms_test: np.ndarray,
    settings: PredictorSettings,
) -> dict[str, np.ndarray]:
    """Log predictions of several fixed methods, each part fitted once (same as separate fits)."""
    member = _fit_member(methods, x, terms, y, settings, settings.seed)
    parts = member.predict_parts(x_test, terms_test)
    return {m: np.mean([parts[p] for p in _PARTS[m]], axis=0) for m in methods}


def compare_methods(
    train: list[Architecture],
    y: np.ndarray,
    test: list[Architecture],
    methods: tuple[Method, ...],
    settings: PredictorSettings | None = None,
) -> dict[str, np.ndarray]:
    """Predictions on `test` of each fixed method (one member, fitted on all of `train`)."""
    if "auto" in methods:
        raise ConfigError("compare_methods takes fixed methods, not auto")
    settings = settings or PredictorSettings()
    x, terms = _design(train)
    x_test, terms_test = _design(test)
    y = np.asarray(y, dtype=np.float64)
    logs = _method_logs(methods, x, terms, y, x_test, terms_test, settings)
    return {m: np.exp(v) for m, v in logs.items()}


def _choose(
    x: np.ndarray,
    terms: np.ndarray,
    y: np.ndarray,
    settings: PredictorSettings,
    candidates: tuple[Method, ...],
    snap: bool,
) -> tuple[Method, bool, dict[str, float]]:
    """Inner k-fold MAPE of every candidate (and, with `snap`, of it snapped onto the grid
    detected on each inner training part) on these rows only; the best candidate (ties: first
    listed), and whether snapping it lowers its inner MAPE."""
    folds = min(settings.inner_folds, len(y) // 2)
    errors: dict[tuple[Method, bool], list[float]] = {}
    splitter = KFold(folds, shuffle=True, random_state=settings.seed + 1)
    for train, test in splitter.split(y):
        predicted = _method_logs(
            candidates, x[train], terms[train], y[train], x[test], terms[test], settings
        )
        grid = detect_grid(y[train]) if snap else None
        for method in candidates:
            values = np.exp(predicted[method])
            errors.setdefault((method, False), []).append(mape(values, y[test]))
            if snap:
                snapped = grid.snap(values) if grid is not None else values
                errors.setdefault((method, True), []).append(mape(snapped, y[test]))
    means = {key: float(np.mean(v)) for key, v in errors.items()}
    # Two stages, so that the grid adds one decision, not a second copy of every candidate:
    # the family as without a grid, then snap it if that lowers its inner MAPE.
    method = min(candidates, key=lambda m: means[(m, False)])
    snapped = snap and means[(method, True)] < means[(method, False)]
    return method, snapped, {_label(m, g): v for (m, g), v in means.items()}


def _label(method: Method, snapped: bool) -> str:
    return f"{method}+grid" if snapped else method


class CostPredictor:
    """A bootstrap ensemble predicting one positive cost (e.g. latency in s) of architectures.

    With `method="auto"` the model family is chosen per fit by inner k-fold MAPE on the
    training rows (`chosen`, `inner_mape`), so an outer cross-validation of `auto` is nested.

    Example:
        >>> p = CostPredictor(PredictorSettings(num_members=2)).fit(archs, latency_s)
        >>> mean_s, std_log = p.predict(candidates)
    """

    def __init__(self, settings: PredictorSettings | None = None) -> None:
        self.settings = settings or PredictorSettings()
        self._members: list[_Member] = []
        self.chosen: Method | None = None
        self.grid: TimingGrid | None = None  # set when predictions are snapped onto it
        self.inner_mape: dict[str, float] = {}

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
        method: Method = s.method
        if method == "auto" and (not s.candidates or "auto" in s.candidates):
            raise ConfigError("method auto needs candidates, and not auto itself")
        grid = detect_grid(y) if s.snap == "auto" else None
        snapped = False
        if method == "auto" or grid is not None:
            candidates = s.candidates if method == "auto" else (method,)
            method, snapped, self.inner_mape = _choose(
                x, terms, y, s, candidates, snap=grid is not None
            )
        self.chosen = method
        self.grid = grid if snapped else None
        rng = np.random.default_rng(s.seed)
        members = []
        for index in range(s.num_members):
            rows = np.arange(len(y)) if index == 0 else rng.integers(0, len(y), len(y))
            members.append(_fit_member(method, x[rows], terms[rows], y[rows], s, s.seed + index))
        self._members = members
        return self

    def predict(
        self, archs: list[Architecture], *, as_measured: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std_log): geometric-mean prediction over members and the spread of log values.

        as_measured: snap the mean onto the timer grid the training targets were read on (when
        inner CV chose to), to compare with measurements from the same harness. The default is
        the continuous cost, which is what search and grow-and-prune need: on a grid, a smaller
        model often "costs" the same tick and every pruning step would look useless.
        """
        if not self._members:
            raise ConfigError(
                "predictor is not fitted; call fit() or `edgesplit cosearch fit` first"
            )
        x, terms = _design(archs)
        logs = np.stack([m.predict_log(x, terms) for m in self._members])  # (M, N)
        mean = np.exp(logs.mean(axis=0))
        if as_measured and self.grid is not None:
            mean = self.grid.snap(mean)
        return mean, logs.std(axis=0)

    @property
    def choice(self) -> str:
        """What was fitted: the method, with "+grid" when predictions are snapped."""
        if self.chosen is None:
            return "unfitted"
        return _label(self.chosen, self.grid is not None)


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
        predicted[test] = model.predict([archs[i] for i in test], as_measured=True)[0]
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
