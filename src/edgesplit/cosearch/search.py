"""Multi-objective co-search over configuration x device (EdgeTran, Tuli & Jha 2023, §3.4).

Owns `Constraints`, `Trial`, `SearchResult` (the `edgesplit.cosearch_search` file) and `co_search`:
optuna with TPE (multi-objective TPE) or NSGA-II, or uniform random sampling as the baseline, at
a fixed budget of evaluations. Objectives: maximise accuracy (short real training, cached by
config) and minimise predicted latency, energy and peak power on the chosen device, subject to
memory and latency constraints. Imports optuna and cosearch modules; torch only through the
accuracy cache.

[Note: objective space] Devices differ by 10^4 in latency, so the hypervolume is computed on
(1 - accuracy, log10 latency_s, log10 energy_j, log10 peak_power_w) against a reference that
depends only on the device set and the space (`reference_point`), never on the trials; methods
and seeds are therefore compared on one scale. Infeasible trials count against the budget and
never enter the front.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import ClassVar, Literal

import numpy as np
import optuna

from edgesplit.core.schema import FrozenModel, VersionedFile
from edgesplit.cosearch.accuracy import AccuracyCache
from edgesplit.cosearch.costs import DeviceCostModel
from edgesplit.cosearch.pareto import hypervolume, pareto_mask
from edgesplit.cosearch.space import EncoderConfig, SearchSpace

__all__ = [
    "Constraints",
    "SearchMethod",
    "SearchResult",
    "Trial",
    "co_search",
    "objective_points",
    "reference_point",
]

log = logging.getLogger(__name__)
SearchMethod = Literal["tpe", "nsga2", "random"]


class Constraints(FrozenModel):
    """Feasibility: the model fits the device's memory; optional latency and power budgets."""

    max_latency_s: float | None = None
    max_peak_power_w: float | None = None
    memory_fraction: float = 0.8  # of the device memory a model may use


class Trial(FrozenModel):
    """One evaluated (config, device) point."""

    number: int
    config: EncoderConfig
    device: str
    accuracy: float
    latency_s: float
    energy_j: float
    peak_power_w: float
    memory_bytes: float
    feasible: bool
    violations: tuple[str, ...] = ()


class SearchResult(VersionedFile):
    """A finished search: all trials, the feasible Pareto front and its hypervolume."""

    KIND: ClassVar[str] = "edgesplit.cosearch_search"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: str = KIND
    schema_version: int = SCHEMA_VERSION
    method: SearchMethod
    seed: int
    budget: int
    task: str
    devices: tuple[str, ...]
    constraints: Constraints
    trials: tuple[Trial, ...]
    pareto: tuple[int, ...]  # trial numbers on the feasible front
    reference: tuple[float, ...]
    hypervolume: float
    num_trainings: int  # cache misses during this search

    def pareto_trials(self) -> list[Trial]:
        chosen = set(self.pareto)
        return [t for t in self.trials if t.number in chosen]


def objective_points(trials: list[Trial]) -> np.ndarray:
    """(N, 4) minimisation points: 1 - accuracy, log10 latency, log10 energy, log10 peak power."""
    return np.array(
        [
            [
                1.0 - t.accuracy,
                math.log10(t.latency_s),
                math.log10(max(t.energy_j, 1e-12)),
                math.log10(max(t.peak_power_w, 1e-12)),
            ]
            for t in trials
        ]
    ).reshape(-1, 4)


def reference_point(space: SearchSpace, costs: DeviceCostModel, devices: list[str]) -> np.ndarray:
    """Worst corner over the devices of the space's largest model, plus a 10 % log margin."""
    largest = EncoderConfig(
        modality=space.modality,
        num_layers=max(space.num_layers),
        hidden_size=max(space.hidden_size),
        num_heads=space.heads_for(max(space.hidden_size))[0],
        ffn_size=max(space.ffn_size),
        attention=space.attention[0],
    )
    worst = np.array(
        [
            [
                math.log10(c.latency_s),
                math.log10(max(c.energy_j, 1e-12)),
                math.log10(max(c.peak_power_w, 1e-12)),
            ]
            for c in (costs.predict(largest, d) for d in devices)
        ]
    ).max(axis=0)
    return np.concatenate([[1.0], worst + 0.1 * np.abs(worst) + 0.1])


def _suggest(
    trial: optuna.Trial, space: SearchSpace, devices: list[str]
) -> tuple[EncoderConfig, str]:
    hidden = trial.suggest_categorical("hidden_size", list(space.hidden_size))
    heads_wanted = trial.suggest_categorical("num_heads", list(space.num_heads))
    valid = space.heads_for(hidden)
    # Static distributions (TPE needs them): an invalid head count maps to the nearest valid one.
    heads = min(valid, key=lambda h: (abs(h - heads_wanted), h))
    config = EncoderConfig(
        modality=space.modality,
        num_layers=trial.suggest_categorical("num_layers", list(space.num_layers)),
        hidden_size=hidden,
        num_heads=heads,
        ffn_size=trial.suggest_categorical("ffn_size", list(space.ffn_size)),
        attention=trial.suggest_categorical("attention", list(space.attention)),
    )
    device = trial.suggest_categorical("device", devices)
    return config, device


def _sampler(method: SearchMethod, seed: int, budget: int) -> optuna.samplers.BaseSampler:
    if method == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(4, budget // 4), multivariate=True
        )
    if method == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, budget // 4))
    return optuna.samplers.RandomSampler(seed=seed)


def co_search(
    space: SearchSpace,
    costs: DeviceCostModel,
    accuracy: AccuracyCache,
    *,
    devices: list[str] | None = None,
    method: SearchMethod = "tpe",
    budget: int = 32,
    seed: int = 0,
    constraints: Constraints | None = None,
    reference: np.ndarray | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> SearchResult:
    """Run one search of `budget` evaluations and return every trial with the feasible front.

    Example:
        >>> result = co_search(space, costs, AccuracyCache(None, load_task("digits")), budget=16)
        >>> [t.device for t in result.pareto_trials()]
    """
    devices = devices or costs.device_names
    constraints = constraints or Constraints()
    trials: list[Trial] = []
    trained_before = accuracy.num_trained

    def objective(trial: optuna.Trial) -> tuple[float, float, float, float]:
        config, device = _suggest(trial, space, devices)
        cost = costs.predict(config, device)
        violations = []
        capacity = costs.devices[device].memory_bytes * constraints.memory_fraction
        excess = [max(0.0, cost.memory_bytes / capacity - 1.0)]
        if excess[0] > 0:
            violations.append(f"memory {cost.memory_bytes / 1e6:.0f} MB > {capacity / 1e6:.0f} MB")
        if constraints.max_latency_s is not None and cost.latency_s > constraints.max_latency_s:
            violations.append(f"latency {cost.latency_s:.3g} s > {constraints.max_latency_s} s")
            excess.append(cost.latency_s / constraints.max_latency_s - 1.0)
        if (
            constraints.max_peak_power_w is not None
            and cost.peak_power_w > constraints.max_peak_power_w
        ):
            violations.append(
                f"peak power {cost.peak_power_w:.3g} W > {constraints.max_peak_power_w} W"
            )
            excess.append(cost.peak_power_w / constraints.max_peak_power_w - 1.0)
        # optuna >= 5: samplers read constraints set on the trial (<= 0 means feasible).
        trial.set_constraint("violation", float(sum(excess)))
        record = accuracy.get(config)
        result = Trial(
            number=trial.number,
            config=config,
            device=device,
            accuracy=record.accuracy,
            latency_s=cost.latency_s,
            energy_j=cost.energy_j,
            peak_power_w=cost.peak_power_w,
            memory_bytes=cost.memory_bytes,
            feasible=not violations,
            violations=tuple(violations),
        )
        trials.append(result)
        if on_trial is not None:
            on_trial(result)
        point = objective_points([result])[0]
        return (float(point[0]), float(point[1]), float(point[2]), float(point[3]))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize"] * 4, sampler=_sampler(method, seed, budget))
    study.optimize(objective, n_trials=budget)
    ref = reference if reference is not None else reference_point(space, costs, devices)
    feasible = [t for t in trials if t.feasible]
    points = objective_points(feasible)
    front = (
        [t.number for t, keep in zip(feasible, pareto_mask(points), strict=True) if keep]
        if feasible
        else []
    )
    return SearchResult(
        method=method,
        seed=seed,
        budget=budget,
        task=accuracy.task.name,
        devices=tuple(devices),
        constraints=constraints,
        trials=tuple(trials),
        pareto=tuple(front),
        reference=tuple(float(r) for r in ref),
        hypervolume=hypervolume(points, ref) if feasible else 0.0,
        num_trainings=accuracy.num_trained - trained_before,
    )
