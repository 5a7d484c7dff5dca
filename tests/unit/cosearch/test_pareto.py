"""Pareto mask and exact hypervolume against brute force on small integer sets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgesplit.cosearch.pareto import hypervolume, pareto_mask


def _brute_mask(points: np.ndarray) -> np.ndarray:
    return np.array([not any(np.all(q <= p) and np.any(q < p) for q in points) for p in points])


def _brute_hv(points: np.ndarray, reference: np.ndarray) -> float:
    # Count unit cells [c, c+1)^d of the integer grid that some point dominates.
    count = 0
    for cell in itertools.product(*(range(int(r)) for r in reference)):
        if any(np.all(p <= np.array(cell)) for p in points):
            count += 1
    return float(count)


@pytest.mark.parametrize("dims", [2, 3, 4])
@pytest.mark.parametrize("seed", range(6))
def test_against_brute_force(dims: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 5, size=(int(rng.integers(1, 9)), dims)).astype(float)
    reference = np.full(dims, 5.0)
    np.testing.assert_array_equal(pareto_mask(points), _brute_mask(points))
    assert hypervolume(points, reference) == pytest.approx(_brute_hv(points, reference))


def test_worked_example_and_edges() -> None:
    assert hypervolume(np.array([[1, 3], [2, 1]]), np.array([4, 4])) == pytest.approx(7.0)
    assert hypervolume(np.zeros((0, 3)), np.ones(3)) == 0.0
    # A point outside the reference box contributes nothing.
    assert hypervolume(np.array([[5.0, 0.0]]), np.array([4.0, 4.0])) == 0.0
    # Adding a dominated point never changes the hypervolume.
    base = np.array([[1.0, 2.0, 1.0], [2.0, 1.0, 2.0]])
    more = np.vstack([base, [[2.0, 2.0, 2.0]]])
    ref = np.array([3.0, 3.0, 3.0])
    assert hypervolume(more, ref) == pytest.approx(hypervolume(base, ref))
