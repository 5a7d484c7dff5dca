"""The co-search workflow as four file-to-file steps: profile, fit, search, refine.

Owns the functions the CLI (and `api.cosearch`) call; each reads and writes the files of the
previous step, so any step can be re-run alone. Imports every cosearch module (torch included).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from edgesplit.core.schema import read_json_file, write_json_file
from edgesplit.cosearch.accuracy import AccuracyCache, TrainSettings
from edgesplit.cosearch.costs import DeviceCostModel, PredictorRecipe, cross_validate_devices
from edgesplit.cosearch.predictor import Method, PredictorSettings, cross_validate
from edgesplit.cosearch.profiler import (
    HostMeasurement,
    ProfileSettings,
    drift_by_round,
    load_host_results,
    load_host_rounds,
    profile_configs,
)
from edgesplit.cosearch.protran import HOST_DEVICE, load_protran
from edgesplit.cosearch.refine import RefineResult, RefineSettings, grow_and_prune
from edgesplit.cosearch.search import Constraints, SearchMethod, SearchResult, Trial, co_search
from edgesplit.cosearch.space import Modality, SearchSpace
from edgesplit.cosearch.tasks import load_task
from edgesplit.errors import ConfigError, did_you_mean

__all__ = [
    "choose_trial",
    "cosearch",
    "cosearch_fit",
    "cosearch_profile",
    "cosearch_refine",
    "cosearch_search",
    "fit_predictors",
    "load_cost_model",
    "profile_host",
    "refine_model",
    "round_drift",
    "run_search",
]

Choice = Literal["accuracy", "latency", "balanced"]


def profile_host(
    results_path: Path,
    *,
    modality: Modality = "text",
    count: int = 40,
    seed: int = 0,
    settings: ProfileSettings | None = None,
    on_progress: Callable[[int, int, HostMeasurement | None], None] | None = None,
) -> list[HostMeasurement]:
    """Profile `count` random configs of the default space here (resumes from `results_path`)."""
    space = SearchSpace(modality=modality)
    configs = space.sample_unique(np.random.default_rng(seed), count)
    return profile_configs(configs, results_path, settings, on_progress=on_progress)


def fit_predictors(
    out_path: Path,
    *,
    protran_dir: Path | None,
    host_results: Path | None,
    settings: PredictorSettings | None = None,
    num_folds: int = 5,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> PredictorRecipe:
    """Cross-validate predictors per device and write the recipe file (`cosearch fit`).

    Both data sources are read before any fit. `on_progress(done, total, "device target")` is
    called before each (device, target) cross-validation and with done == total at the end.
    """
    settings = settings or PredictorSettings()
    measurements = load_protran(protran_dir) if protran_dir is not None else []
    host = load_host_results(host_results) if host_results is not None else []
    host_fits = 1 if len(host) >= 2 * num_folds else 0
    protran_fits = 0  # known once cross_validate_devices reports

    def progress(done: int, total: int, label: str) -> None:
        nonlocal protran_fits
        protran_fits = total
        if on_progress is not None and done < total:
            on_progress(done, total + host_fits, label)

    cv = {}
    devices: list[str] = []
    if protran_dir is not None:
        cv = cross_validate_devices(
            measurements,
            settings.model_copy(update={"num_members": 1}),
            num_folds=num_folds,
            on_progress=progress,
        )
        devices += sorted({m.device for m in measurements})
    total = protran_fits + host_fits
    if host_fits:
        if on_progress is not None:
            on_progress(protran_fits, total, f"{HOST_DEVICE} latency_s")
        y = np.array([m.cpu_s for m in host])
        cv[HOST_DEVICE] = {
            "latency_s": cross_validate(
                [m.architecture() for m in host],
                y,
                settings.model_copy(update={"num_members": 1}),
                num_folds=num_folds,
            )
        }
    if host:
        devices.append(HOST_DEVICE)
    if on_progress is not None:
        on_progress(total, total, "")
    if not devices:
        raise ConfigError("nothing to fit: give --protran and/or --host-results with measurements")
    recipe = PredictorRecipe(
        protran_dir=None if protran_dir is None else str(Path(protran_dir).resolve()),
        host_results=None if host_results is None else str(Path(host_results).resolve()),
        settings=settings,
        devices=tuple(devices),
        cross_validation=cv,
    )
    write_json_file(recipe, out_path)
    return recipe


def load_cost_model(recipe_path: Path) -> DeviceCostModel:
    """Refit the predictors a recipe describes (seconds; no estimator is ever unpickled)."""
    recipe = read_json_file(PredictorRecipe, recipe_path)
    protran = load_protran(Path(recipe.protran_dir)) if recipe.protran_dir else []
    host = load_host_results(Path(recipe.host_results)) if recipe.host_results else []
    return DeviceCostModel.fit(protran, host or None, recipe.settings, devices=list(recipe.devices))


def run_search(
    recipe_path: Path,
    out_path: Path,
    *,
    task_name: str = "digits",
    method: SearchMethod = "tpe",
    budget: int = 32,
    seed: int = 0,
    devices: list[str] | None = None,
    constraints: Constraints | None = None,
    train_settings: TrainSettings | None = None,
    cache_path: Path | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> SearchResult:
    """Search config x device and write the result file (`cosearch search`)."""
    costs = load_cost_model(recipe_path)
    task = load_task(task_name, seed=seed)
    cache = AccuracyCache(cache_path, task, train_settings)
    result = co_search(
        SearchSpace(modality=task.modality),
        costs,
        cache,
        devices=devices,
        method=method,
        budget=budget,
        seed=seed,
        constraints=constraints,
        on_trial=on_trial,
    )
    write_json_file(result, out_path)
    return result


def choose_trial(
    front: list[Trial], *, device: str | None = None, prefer: Choice = "balanced"
) -> Trial:
    """Pick one front member: best accuracy, lowest latency, or the best accuracy-per-log-latency
    knee ("balanced": highest accuracy among front members within 1 point of the best accuracy,
    then the fastest)."""
    on_front = sorted({t.device for t in front})
    if device is not None and front and device not in on_front:
        hint = did_you_mean(device, on_front)
        search = (
            ""  # a typo: the did-you-mean is the advice
            if hint
            else f"; to refine for {device}, search it first: `edgesplit cosearch search "
            f"--device {device}` (then refine with the same -o/-s file)"
        )
        raise ConfigError(
            f"no front member on device '{device}'; {hint}the front has {', '.join(on_front)}"
            + search
        )
    front = [t for t in front if device is None or t.device == device]
    if not front:
        raise ConfigError(
            f"the search has no feasible front member{' on ' + device if device else ''}; "
            "relax the constraints or raise the budget"
        )
    if prefer == "accuracy":
        return max(front, key=lambda t: (t.accuracy, -t.latency_s))
    if prefer == "latency":
        return min(front, key=lambda t: (t.latency_s, -t.accuracy))
    best = max(t.accuracy for t in front)
    return min((t for t in front if t.accuracy >= best - 0.01), key=lambda t: t.latency_s)


def refine_model(
    search_path: Path,
    recipe_path: Path,
    out_path: Path,
    *,
    device: str | None = None,
    prefer: Choice = "balanced",
    settings: RefineSettings | None = None,
    train_settings: TrainSettings | None = None,
) -> RefineResult:
    """Grow-and-prune the chosen front member and write the result (`cosearch refine`).

    Raises:
        ConfigError: a missing search or predictors file (the message says which command
            writes it), no front member on `device`.
    """
    if not Path(search_path).is_file():
        raise ConfigError(
            f"search result not found: {search_path} (cwd is {Path.cwd()}); write it with "
            f"`edgesplit cosearch search -o {search_path}`"
        )
    if not Path(recipe_path).is_file():
        raise ConfigError(
            f"predictors file not found: {recipe_path} (cwd is {Path.cwd()}); write it with "
            f"`edgesplit cosearch fit -o {recipe_path}`"
        )
    result = read_json_file(SearchResult, search_path)
    chosen = choose_trial(result.pareto_trials(), device=device, prefer=prefer)
    settings = settings or RefineSettings(device=chosen.device)
    if settings.device != chosen.device:
        settings = settings.model_copy(update={"device": chosen.device})
    costs = load_cost_model(recipe_path)
    task = load_task(result.task, seed=result.seed)
    refined = grow_and_prune(chosen.config, task, costs, settings, train_settings)
    write_json_file(refined, out_path)
    return refined


def cosearch(
    output_dir: Path,
    *,
    protran_dir: Path | None,
    host_results: Path | None = None,
    task_name: str = "digits",
    method: SearchMethod = "tpe",
    budget: int = 32,
    seed: int = 0,
    devices: list[str] | None = None,
    constraints: Constraints | None = None,
    refine_device: str | None = None,
    train_settings: TrainSettings | None = None,
) -> tuple[SearchResult, RefineResult]:
    """All four steps but profiling: fit, search, refine, report, into `output_dir`.

    Writes predictors.json, search.json (+ search.png, one Pareto panel per device),
    accuracy_cache.json, refine.json and refine.md (the report page).
    """
    from edgesplit.cosearch.plots import plot_pareto_per_device
    from edgesplit.cosearch.report import write_report

    output_dir = Path(output_dir)
    recipe = output_dir / "predictors.json"
    fit_predictors(recipe, protran_dir=protran_dir, host_results=host_results)
    result = run_search(
        recipe,
        output_dir / "search.json",
        task_name=task_name,
        method=method,
        budget=budget,
        seed=seed,
        devices=devices,
        constraints=constraints,
        train_settings=train_settings,
        cache_path=output_dir / "accuracy_cache.json",
    )
    plot_pareto_per_device(list(result.trials), output_dir / "search.png")
    refined = refine_model(
        output_dir / "search.json",
        recipe,
        output_dir / "refine.json",
        device=refine_device,
        train_settings=train_settings,
    )
    write_report(output_dir / "search.json", output_dir / "refine.json", output_dir / "refine.md")
    return result, refined


# --- plain-argument entry points: what `api` re-exports and the CLI calls ------------------------


def cosearch_profile(
    output: Path,
    *,
    modality: Modality = "text",
    count: int = 40,
    seed: int = 0,
    seq_len: int = 128,
    repeats: int = 3,
    rounds: int = 1,
    on_progress: Callable[[int, int, HostMeasurement | None], None] | None = None,
) -> list[HostMeasurement]:
    """`cosearch profile`: measure `count` sampled configs here (resumes from `output`)."""
    settings = ProfileSettings(seq_len=seq_len, repeats=repeats, rounds=rounds)
    return profile_host(
        output,
        modality=modality,
        count=count,
        seed=seed,
        settings=settings,
        on_progress=on_progress,
    )


def round_drift(output: Path, measured: list[HostMeasurement]) -> list[float]:
    """How much slower each round of `measured` ran than the configs' medians (see profiler)."""
    wanted = {(m.config_key, m.settings) for m in measured}
    return drift_by_round(
        [m for m in load_host_rounds(output) if (m.config_key, m.settings) in wanted]
    )


def cosearch_fit(
    output: Path,
    *,
    protran_dir: Path | None,
    host_results: Path | None = None,
    method: Method = "auto",
    num_folds: int = 5,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> PredictorRecipe:
    """`cosearch fit`: cross-validate per-device predictors, write the recipe.

    `on_progress(done, total, "device target")`: see `fit_predictors`.
    """
    return fit_predictors(
        output,
        protran_dir=protran_dir,
        host_results=host_results,
        settings=PredictorSettings(method=method),
        num_folds=num_folds,
        on_progress=on_progress,
    )


def cosearch_search(
    predictors: Path,
    output: Path,
    *,
    task: str = "digits",
    method: SearchMethod = "tpe",
    budget: int = 32,
    seed: int = 0,
    devices: list[str] | None = None,
    max_latency_s: float | None = None,
    max_peak_power_w: float | None = None,
    memory_fraction: float = 0.8,
    width_divisor: int = 8,
    epochs: int = 3,
    on_trial: Callable[[Trial], None] | None = None,
) -> tuple[SearchResult, Path]:
    """`cosearch search`: search, write the result and a Pareto plot per device (returned)."""
    from edgesplit.cosearch.plots import plot_pareto_per_device

    result = run_search(
        predictors,
        output,
        task_name=task,
        method=method,
        budget=budget,
        seed=seed,
        devices=devices,
        constraints=Constraints(
            max_latency_s=max_latency_s,
            max_peak_power_w=max_peak_power_w,
            memory_fraction=memory_fraction,
        ),
        train_settings=TrainSettings(width_divisor=width_divisor, epochs=epochs, seed=seed),
        cache_path=Path(output).with_name("accuracy_cache.json"),
        on_trial=on_trial,
    )
    return result, plot_pareto_per_device(list(result.trials), Path(output).with_suffix(".png"))


def cosearch_refine(
    search: Path,
    predictors: Path,
    output: Path,
    *,
    device: str | None = None,
    prefer: Choice = "balanced",
    steps: int = 6,
    max_accuracy_drop: float = 0.01,
    width_divisor: int = 8,
) -> tuple[RefineResult, Path]:
    """`cosearch refine`: grow-and-prune the chosen member; write the result and report page."""
    from edgesplit.cosearch.report import write_report

    result = refine_model(
        search,
        predictors,
        output,
        device=device,
        prefer=prefer,
        settings=RefineSettings(
            device=device or "", num_steps=steps, max_accuracy_drop=max_accuracy_drop
        ),
        train_settings=TrainSettings(width_divisor=width_divisor),
    )
    return result, write_report(search, output, Path(output).with_suffix(".md"))
