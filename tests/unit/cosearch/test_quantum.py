"""Timer grids: detection on quantised values, no grid on continuous ones, snapping."""

from __future__ import annotations

import numpy as np
import pytest

from edgesplit.cosearch.quantum import TimingGrid, detect_grid


def test_detects_the_coarsest_grid_of_noisy_ticks() -> None:
    rng = np.random.default_rng(0)
    ticks = rng.integers(3, 18, 90)
    values = 2.2e-3 * ticks - 2e-5 + rng.normal(0, 2e-5, 90)  # m1-pro-gpu-like
    grid = detect_grid(values)
    assert grid is not None
    # The coarsest step, not a half or a third of it (those fit equally well).
    assert grid.step == pytest.approx(2.2e-3, rel=2e-3)
    assert np.array_equal(grid.levels(values), ticks)


@pytest.mark.parametrize("seed", range(5))
def test_continuous_values_have_no_grid(seed: int) -> None:
    rng = np.random.default_rng(seed)
    assert detect_grid(np.exp(rng.uniform(np.log(0.003), np.log(0.04), 90))) is None


def test_needs_enough_values_and_levels() -> None:
    assert detect_grid(np.array([1.0, 2.0, 3.0, 4.0])) is None  # too few to tell
    # One occupied level (a narrow band) is not a grid, however well it "fits".
    assert detect_grid(np.linspace(1.0, 1.05, 40)) is None


def test_snap_moves_to_the_nearest_level_at_least_the_first() -> None:
    grid = TimingGrid(offset=0.0, step=0.8)
    np.testing.assert_allclose(grid.snap(np.array([0.1, 1.3, 4.05, 4.5])), [0.8, 1.6, 4.0, 4.8])
