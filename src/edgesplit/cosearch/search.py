"""Multi-objective co-search over configuration x device (EdgeTran, Tuli & Jha 2023, §3.4).

Owns `Constraints`, `Trial`, `SearchResult` (the `edgesplit.cosearch_search` file) and `co_search`:
optuna with TPE (multi-objective TPE) or NSGA-II, or uniform random sampling as the baseline, at
a fixed budget of evaluations. Objectives: maximise accuracy (short real training, cached by
config) and minimise predicted latency, energy and peak power on the chosen device, subject to
memory and latency constraints. Imports optuna and cosearch modules; torch only through the
accuracy cache.

[Note: what a trial costs] Before any training, `check_feasible` asks the predictors about every
(config, device) of the space: when none meets the constraints the search fails at once
(`PlanInfeasibleError`, naming the best predicted value of the violated constraint). During the
search a trial the predictors call infeasible is not trained (its accuracy is 0 and `trained` is
false unless the accuracy cache already had it), and a (config, device) the sampler proposes again
is answered from the earlier trial, told to the sampler without costing budget or training, and
never listed twice (`SearchResult.repeats` counts them; optuna's samplers do not avoid repeats,
TPE least of all once it narrows).

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
from pydantic import Field

from edgesplit.core.schema import FrozenModel, VersionedFile
from edgesplit.cosearch.accuracy import AccuracyCache
from edgesplit.cosearch.costs import DeviceCost, DeviceCostModel
from edgesplit.cosearch.pareto import hypervolume, pareto_mask
from edgesplit.cosearch.space import EncoderConfig, SearchSpace
from edgesplit.errors import PlanInfeasibleError

__all__ = [
    "Constraints",
    "SearchMethod",
    "SearchResult",
    "Trial",
    "check_feasible",
    "co_search",
    "objective_points",
    "reference_point",
]

log = logging.getLogger(__name__)
SearchMethod = Literal["tpe", "nsga2", "random"]


class Constraints(FrozenModel):
    """Feasibility: the model fits the device's memory; optional latency and power budgets."""

    max_latency_s: float | None = Field(default=None, gt=0)
    max_peak_power_w: float | None = Field(default=None, gt=0)
    memory_fraction: float = Field(default=0.8, gt=0, le=1)  # of the device memory a model may use


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
    trained: bool = True  # False: infeasible by prediction, not trained (accuracy 0)


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
    repeats: int = 0  # proposals of an already evaluated (config, device), answered for free

    def pareto_trials(self) -> list[Trial]:
        """The front, each (config, device) once (files written before repeats were skipped
        could list one twice)."""
        chosen = set(self.pareto)
        seen: set[tuple[str, str]] = set()
        out = []
        for t in self.trials:
            key = (t.config.key(), t.device)
            if t.number in chosen and key not in seen:
                seen.add(key)
                out.append(t)
        return out


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


_PARAMS = ("hidden_size", "num_heads", "num_layers", "ffn_size", "attention")


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


def _violations(
    cost: DeviceCost, capacity_bytes: float, constraints: Constraints
) -> tuple[list[str], float]:
    """The constraints `cost` breaks (one line each) and the summed relative excess (0: none)."""
    violations = []
    excess = max(0.0, cost.memory_bytes / capacity_bytes - 1.0)
    if excess > 0:
        violations.append(
            f"memory {cost.memory_bytes / 1e6:.0f} MB > {capacity_bytes / 1e6:.0f} MB"
        )
    if constraints.max_latency_s is not None and cost.latency_s > constraints.max_latency_s:
        violations.append(f"latency {cost.latency_s:.3g} s > {constraints.max_latency_s} s")
        excess += cost.latency_s / constraints.max_latency_s - 1.0
    power_budget = constraints.max_peak_power_w
    if power_budget is not None and cost.peak_power_w > power_budget:
        violations.append(f"peak power {cost.peak_power_w:.3g} W > {power_budget} W")
        excess += cost.peak_power_w / power_budget - 1.0
    return violations, excess


def check_feasible(
    space: SearchSpace, costs: DeviceCostModel, devices: list[str], constraints: Constraints
) -> None:
    """Fail before any training when no (config, device) of the space meets `constraints` by
    the predictors (the search proposes only the space's homogeneous configs).

    Raises:
        PlanInfeasibleError: nothing meets the constraints; the message names the violated
            constraint and the best predicted value for it, with its device and config.
    """
    configs = space.homogeneous_configs()
    targets = ["memory_bytes"]
    if constraints.max_latency_s is not None:
        targets.append("latency_s")
    if constraints.max_peak_power_w is not None:
        targets.append("peak_power_w")
    # (device, config index) -> value per target; ok per constraint
    rows: list[tuple[str, int, dict[str, float]]] = []
    for device in devices:
        predicted = costs.predict_batch(configs, device, targets)
        capacity = costs.devices[device].memory_bytes * constraints.memory_fraction
        for index in range(len(configs)):
            values = {t: float(predicted[t][index]) for t in targets}
            values["memory_share"] = values["memory_bytes"] / capacity
            rows.append((device, index, values))
    limits = {"memory_share": 1.0}
    if constraints.max_latency_s is not None:
        limits["latency_s"] = constraints.max_latency_s
    if constraints.max_peak_power_w is not None:
        limits["peak_power_w"] = constraints.max_peak_power_w

    def meets(values: dict[str, float], skip: str = "") -> bool:
        return all(values[k] <= v for k, v in limits.items() if k != skip)

    if any(meets(values) for _, _, values in rows):
        return
    flag = {
        "memory_share": f"--memory-fraction {constraints.memory_fraction:g}",
        "latency_s": f"--max-latency-s {constraints.max_latency_s:g}"
        if constraints.max_latency_s is not None
        else "",
        "peak_power_w": f"--max-peak-power-w {constraints.max_peak_power_w:g}"
        if constraints.max_peak_power_w is not None
        else "",
    }

    def best(key: str, among: list[tuple[str, int, dict[str, float]]]) -> str:
        device, index, values = min(among, key=lambda r: r[2][key])
        where = f"({device}, {configs[index].describe()})"
        if key == "latency_s":
            return f"the fastest predicted is {values[key]:.2g} s {where}"
        if key == "peak_power_w":
            return f"the lowest predicted peak power is {values[key]:.3g} W {where}"
        return (
            f"the smallest needs {values['memory_bytes'] / 1e6:.0f} MB, "
            f"{values[key] * constraints.memory_fraction:.2g} of the device's memory {where}"
        )

    alone = [k for k in limits if not any(values[k] <= limits[k] for _, _, values in rows)]
    if alone:
        lines = [f"no config meets {flag[k]} on any device; {best(k, rows)}" for k in alone]
    else:  # each constraint can be met, but not all of them together
        lines = [f"no config meets {', '.join(flag[k] for k in limits)} together on any device"] + [
            f"within the other budgets {best(k, [r for r in rows if meets(r[2], skip=k)])}"
            for k in limits
            if any(meets(r[2], skip=k) for r in rows)
        ]
    raise PlanInfeasibleError(
        "; ".join(lines)
        + f" (predicted over {len(configs)} configs x {len(devices)} device(s)); relax the "
        "constraint or search other devices"
    )


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
    check_feasible(space, costs, devices, constraints)
    trials: list[Trial] = []
    trained_before = accuracy.num_trained
    # (config key, device) -> (objective values, summed violation): what a repeat is told
    seen: dict[tuple[str, str], tuple[tuple[float, ...], float]] = {}
    distinct = space.size() * len(devices)
    rng = np.random.default_rng(seed)
    repeats = in_a_row = 0

    def evaluate(config: EncoderConfig, device: str) -> tuple[Trial, tuple[float, ...], float]:
        cost = costs.predict(config, device)
        capacity = costs.devices[device].memory_bytes * constraints.memory_fraction
        violations, excess = _violations(cost, capacity, constraints)
        # Infeasible by prediction: no training unless the cache already has the accuracy.
        record = accuracy.get(config) if not violations else accuracy.cached(config)
        result = Trial(
            number=len(trials),
            config=config,
            device=device,
            accuracy=record.accuracy if record is not None else 0.0,
            latency_s=cost.latency_s,
            energy_j=cost.energy_j,
            peak_power_w=cost.peak_power_w,
            memory_bytes=cost.memory_bytes,
            feasible=not violations,
            violations=tuple(violations),
            trained=record is not None,
        )
        point = objective_points([result])[0]
        return result, tuple(float(v) for v in point), excess

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize"] * 4, sampler=_sampler(method, seed, budget))
    while len(trials) < min(budget, distinct):
        if in_a_row >= 8:  # the sampler keeps repeating itself: give it an unseen point
            study.enqueue_trial(_unseen(space, devices, seen, rng))
            in_a_row = 0
        trial = study.ask()
        config, device = _suggest(trial, space, devices)
        key = (config.key(), device)
        earlier = seen.get(key)
        if earlier is None:
            result, values, excess = evaluate(config, device)
            seen[key] = (values, excess)
            trials.append(result)
            in_a_row = 0
            if on_trial is not None:
                on_trial(result)
        else:  # a repeat: the sampler learns the known outcome; no budget, no training
            values, excess = earlier
            repeats += 1
            in_a_row += 1
        # optuna >= 5: samplers read constraints set on the trial (<= 0 means feasible).
        trial.set_constraint("violation", excess)
        study.tell(trial, list(values))
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
        repeats=repeats,
    )


def _unseen(
    space: SearchSpace,
    devices: list[str],
    seen: dict[tuple[str, str], tuple[tuple[float, ...], float]],
    rng: np.random.Generator,
) -> dict[str, object]:
    """Optuna parameters of a uniformly drawn (config, device) not evaluated yet."""
    pool = [
        (config, device)
        for config in space.homogeneous_configs()
        for device in devices
        if (config.key(), device) not in seen
    ]
    config, device = pool[int(rng.integers(len(pool)))]
    return {**{name: getattr(config, name) for name in _PARAMS}, "device": device}
