"""Predictors: fitting on a small subset, cross-validation, uncertainty, the real data subset."""

from __future__ import annotations

import numpy as np
import pytest

from edgesplit.cosearch.costs import DeviceCostModel, cross_validate_devices
from edgesplit.cosearch.predictor import (
    CostPredictor,
    PredictorSettings,
    _fit_additive,
    _fit_additive_l1,
    cross_validate,
    mape,
    select_uncertain,
)
from edgesplit.cosearch.protran import Measurement, load_protran
from edgesplit.cosearch.space import EncoderConfig
from edgesplit.data import PROTRAN_DIR
from edgesplit.errors import ConfigError

FAST = PredictorSettings(num_members=2, n_estimators=60)


@pytest.mark.parametrize(
    "method", ["gbm", "additive", "additive_l1", "stack", "trees", "ensemble", "blend", "auto"]
)
def test_methods_fit_synthetic(synthetic_protran: list[Measurement], method: str) -> None:
    rows = [m for m in synthetic_protran if m.device == "rpi-cpu"]
    archs, y = [m.architecture for m in rows], np.array([m.latency_s for m in rows])
    settings = FAST.model_copy(update={"method": method})
    cv = cross_validate(archs, y, settings, num_folds=4)
    # Latency is ~linear in work terms: the additive model is near-exact, trees are coarser.
    assert cv.mape < (0.35 if method in ("gbm", "trees") else 0.08)
    assert cv.spearman > 0.8
    mean, spread = CostPredictor(settings).fit(archs, y).predict(archs[:3])
    assert mean.shape == (3,)
    assert np.all(spread >= 0)


def test_additive_l1_minimises_absolute_relative_error() -> None:
    # One work term, y = 2·x except one corrupted row: L1 ignores it, least squares is pulled.
    x = np.arange(1.0, 11.0)[:, None]
    y = 2.0 * x[:, 0]
    y[-1] *= 3.0
    coef_l1, scale_l1 = _fit_additive_l1(x, y)
    coef_l2, scale_l2 = _fit_additive(x, y)
    assert coef_l1[0] / scale_l1[0] == pytest.approx(2.0, rel=1e-6)
    assert coef_l2[0] / scale_l2[0] > 2.02


def test_auto_chooses_inside_the_training_rows(synthetic_protran: list[Measurement]) -> None:
    rows = [m for m in synthetic_protran if m.device == "rpi-cpu"]
    archs, y = [m.architecture for m in rows], np.array([m.latency_s for m in rows])
    settings = FAST.model_copy(update={"candidates": ("additive_l1", "trees")})
    predictor = CostPredictor(settings).fit(archs, y)
    assert set(predictor.inner_mape) == {"additive_l1", "trees"}
    # Synthetic latency is a sum of work terms: the additive model wins the inner folds.
    assert predictor.chosen == "additive_l1"
    with pytest.raises(ConfigError, match="candidates"):
        CostPredictor(settings.model_copy(update={"candidates": ()})).fit(archs, y)


def test_uncertainty_ranks_out_of_distribution_first(synthetic_protran: list[Measurement]) -> None:
    rows = [m for m in synthetic_protran if m.device == "rpi-cpu"]
    small = [m for m in rows if m.architecture.layers[0].hidden_size <= 256]
    predictor = CostPredictor(PredictorSettings(method="gbm", num_members=4, n_estimators=60))
    predictor.fit([m.architecture for m in small], np.array([m.latency_s for m in small]))
    candidates = [m.architecture for m in rows]
    picked = select_uncertain(predictor, candidates, 5)
    assert len(set(picked)) == 5
    assert all(0 <= i < len(candidates) for i in picked)


def test_fit_rejects_bad_targets(synthetic_protran: list[Measurement]) -> None:
    archs = [m.architecture for m in synthetic_protran[:5]]
    with pytest.raises(ConfigError, match="positive"):
        CostPredictor(FAST).fit(archs, np.array([1.0, 2.0, 0.0, 1.0, 1.0]))


def test_cost_model_predicts_every_device(synthetic_protran: list[Measurement]) -> None:
    costs = DeviceCostModel.fit(synthetic_protran, None, FAST)
    assert sorted(costs.device_names) == ["a100-gpu", "rpi-cpu"]
    config = EncoderConfig(
        modality="image", num_layers=4, hidden_size=256, num_heads=4, ffn_size=1024
    )
    for device in costs.device_names:
        cost = costs.predict(config, device)
        assert cost.latency_s > 0
        assert cost.energy_j > 0
        assert cost.peak_power_w > 0
        assert cost.memory_bytes > 4 * 3e6  # at least the weights
    cv = cross_validate_devices(synthetic_protran, FAST, targets=("latency_s",), num_folds=4)
    assert set(cv) == {"a100-gpu", "rpi-cpu"}


def test_real_subset_beats_mean_predictor() -> None:
    rows = [m for m in load_protran(PROTRAN_DIR) if m.device == "a100-gpu"][:80]
    archs, y = [m.architecture for m in rows], np.array([m.latency_s for m in rows])
    cv = cross_validate(archs, y, FAST, num_folds=4)
    constant = mape(np.full_like(y, np.median(y)), y)
    assert cv.mape < 0.7 * constant
    assert cv.spearman > 0.6


def test_snaps_onto_a_timer_grid_only_when_inner_folds_say_so(
    synthetic_protran: list[Measurement],
) -> None:
    rows = [m for m in synthetic_protran if m.device == "rpi-cpu"]
    archs, y = [m.architecture for m in rows], np.array([m.latency_s for m in rows])
    settings = FAST.model_copy(update={"candidates": ("additive_l1",)})
    smooth = CostPredictor(settings).fit(archs, y)
    assert smooth.grid is None
    assert smooth.choice == "additive_l1"
    # The same latencies read off a coarse clock (ticks of a third of the smallest latency).
    step = float(y.min()) / 3
    ticked = step * np.maximum(np.rint(y / step), 1)
    snapped = CostPredictor(settings).fit(archs, ticked)
    assert snapped.grid is not None
    assert snapped.grid.step == pytest.approx(step, rel=1e-3)
    assert snapped.choice == "additive_l1+grid"
    assert snapped.inner_mape["additive_l1+grid"] < snapped.inner_mape["additive_l1"]
    measured, _ = snapped.predict(archs, as_measured=True)
    np.testing.assert_allclose(measured, snapped.grid.snap(measured))  # on the grid
    continuous, _ = snapped.predict(archs)  # what search and refinement rank by
    assert not np.allclose(continuous, snapped.grid.snap(continuous))
    never = CostPredictor(settings.model_copy(update={"snap": "never"})).fit(archs, ticked)
    assert never.grid is None
    assert never.choice == "additive_l1"
