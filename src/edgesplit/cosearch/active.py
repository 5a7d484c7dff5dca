"""Active learning for the host predictor: profile where the ensemble is least certain.

Owns `ActiveRound` and `active_learning`: start from a few random profiled configs, then each
round fit the predictor on what is measured, score a candidate pool by ensemble spread
(`select_uncertain`), profile the top ones and record the error on a fixed held-out set. The same
loop with `strategy="random"` is the baseline. Imports the profiler (torch) and the predictor.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from edgesplit.core.schema import FrozenModel
from edgesplit.cosearch.predictor import CostPredictor, PredictorSettings, mape, select_uncertain
from edgesplit.cosearch.profiler import (
    HostMeasurement,
    ProfileSettings,
    host_architecture,
    profile_configs,
)
from edgesplit.cosearch.space import EncoderConfig

__all__ = ["ActiveRound", "active_learning"]

Strategy = Literal["uncertainty", "random"]


class ActiveRound(FrozenModel):
    """State after one round: how many configs were profiled and the held-out error."""

    strategy: Strategy
    num_profiled: int
    held_out_mape: float


def active_learning(
    pool: list[EncoderConfig],
    held_out: list[HostMeasurement],
    results_path: Path,
    *,
    strategy: Strategy = "uncertainty",
    initial: int = 8,
    per_round: int = 8,
    rounds: int = 4,
    seed: int = 0,
    predictor_settings: PredictorSettings | None = None,
    profile_settings: ProfileSettings | None = None,
    on_progress: Callable[[int, int, HostMeasurement | None], None] | None = None,
) -> tuple[list[ActiveRound], list[HostMeasurement]]:
    """Run the loop; measurements are shared through `results_path` (resumable, no re-profiling).

    Returns the per-round held-out errors and the measurements the predictor ended with.
    """
    rng = np.random.default_rng(seed)
    settings = predictor_settings or PredictorSettings(num_members=5)
    remaining = list(pool)
    chosen = [
        remaining.pop(int(i))
        for i in sorted(rng.choice(len(remaining), initial, replace=False), reverse=True)
    ]
    measured = profile_configs(chosen, results_path, profile_settings, on_progress=on_progress)
    held_archs = [m.architecture() for m in held_out]
    held_y = np.array([m.cpu_s for m in held_out])
    history: list[ActiveRound] = []
    for round_index in range(rounds + 1):
        predictor = CostPredictor(settings).fit(
            [m.architecture() for m in measured], np.array([m.cpu_s for m in measured])
        )
        history.append(
            ActiveRound(
                strategy=strategy,
                num_profiled=len(measured),
                held_out_mape=mape(predictor.predict(held_archs, as_measured=True)[0], held_y),
            )
        )
        if round_index == rounds or not remaining:
            break
        if strategy == "uncertainty":
            host = measured[0].settings
            candidates = [host_architecture(c, host) for c in remaining]
            picks = select_uncertain(predictor, candidates, per_round)
        else:
            picks = [
                int(i)
                for i in rng.choice(len(remaining), min(per_round, len(remaining)), replace=False)
            ]
        batch = [remaining[i] for i in picks]
        for i in sorted(picks, reverse=True):
            remaining.pop(i)
        measured += profile_configs(batch, results_path, profile_settings, on_progress=on_progress)
    return history, measured
