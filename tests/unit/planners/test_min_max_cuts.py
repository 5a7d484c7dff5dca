"""`min_max_cuts`: contiguous groups minimizing the largest sum, against brute force."""

from __future__ import annotations

import itertools
import random

import pytest

from edgesplit.planners.baselines import min_max_cuts


def _brute(costs: list[float], parts: int) -> float:
    n = len(costs)
    best = float("inf")
    for inner in itertools.combinations(range(1, n), parts - 1):
        bounds = [0, *inner, n]
        best = min(best, max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_min_max_cuts_equal_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    costs = [float(rng.choice([0, rng.randint(1, 50)])) for _ in range(n)]
    for parts in range(1, n + 1):
        bounds = min_max_cuts(costs, parts)
        assert bounds[0] == 0
        assert bounds[-1] == n
        assert len(bounds) == parts + 1
        assert all(b > a for a, b in itertools.pairwise(bounds))  # no empty group
        worst = max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds))
        assert worst == _brute(costs, parts)


def test_min_max_cuts_refuse_more_groups_than_units() -> None:
    with pytest.raises(ValueError, match="cannot cut 2 units into 3"):
        min_max_cuts([1.0, 2.0], 3)
