"""A tiny co-search (every method), constraints, and a one-step grow-and-prune, on real training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgesplit.cosearch.accuracy import AccuracyCache, TrainSettings
from edgesplit.cosearch.costs import DeviceCostModel
from edgesplit.cosearch.pareto import hypervolume
from edgesplit.cosearch.predictor import PredictorSettings
from edgesplit.cosearch.protran import Measurement
from edgesplit.cosearch.refine import RefineSettings, grow_and_prune
from edgesplit.cosearch.search import Constraints, co_search, objective_points
from edgesplit.cosearch.space import SearchSpace
from edgesplit.cosearch.tasks import load_task
from edgesplit.cosearch.workflow import choose_trial
from edgesplit.errors import ConfigError, PlanInfeasibleError

pytestmark = pytest.mark.slow  # real (tiny) trainings: ~1 min on a loaded 2-core box

SPACE = SearchSpace(
    modality="image",
    num_layers=(1, 2),
    hidden_size=(128, 256),
    num_heads=(2, 4),
    ffn_size=(256, 512),
)


@pytest.fixture(scope="module")
def costs(synthetic_protran: list[Measurement]) -> DeviceCostModel:
    return DeviceCostModel.fit(
        synthetic_protran, None, PredictorSettings(num_members=2, n_estimators=40)
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> AccuracyCache:
    path = tmp_path_factory.mktemp("cosearch") / "acc.json"
    return AccuracyCache(path, load_task("digits"), TrainSettings(epochs=1))


@pytest.mark.parametrize("method", ["random", "tpe", "nsga2"])
def test_tiny_search(costs: DeviceCostModel, cache: AccuracyCache, method: str) -> None:
    result = co_search(SPACE, costs, cache, method=method, budget=6, seed=0)  # type: ignore[arg-type]
    assert len(result.trials) == 6
    assert {t.device for t in result.trials} <= {"rpi-cpu", "a100-gpu"}
    front = result.pareto_trials()
    assert front
    assert all(t.feasible for t in front)
    feasible = [t for t in result.trials if t.feasible]
    # The front alone has the hypervolume of all feasible trials.
    ref = np.array(result.reference)
    assert result.hypervolume == pytest.approx(hypervolume(objective_points(feasible), ref))
    assert result.hypervolume == pytest.approx(hypervolume(objective_points(front), ref))
    again = co_search(SPACE, costs, cache, method=method, budget=6, seed=0)  # type: ignore[arg-type]
    assert [(t.config, t.device) for t in again.trials] == [
        (t.config, t.device) for t in result.trials
    ]
    assert again.num_trainings == 0  # everything came from the cache


def test_constraints_mark_infeasible(costs: DeviceCostModel, cache: AccuracyCache) -> None:
    # A latency only the smallest configs meet: the rest are marked and not trained.
    smallest = min(costs.predict(c, "rpi-cpu").latency_s for c in SPACE.homogeneous_configs())
    tight = Constraints(max_latency_s=smallest * 1.0001)
    result = co_search(
        SPACE,
        costs,
        cache,
        method="random",
        budget=4,
        seed=1,
        constraints=tight,
        devices=["rpi-cpu"],
    )
    infeasible = [t for t in result.trials if not t.feasible]
    assert infeasible
    assert all("latency" in t.violations[0] for t in infeasible)
    assert set(result.pareto) <= {t.number for t in result.trials if t.feasible}
    with pytest.raises(PlanInfeasibleError, match="no config meets --max-latency-s"):
        co_search(SPACE, costs, cache, budget=4, constraints=Constraints(max_latency_s=1e-9))


def test_choose_trial_names_the_devices_on_the_front(
    costs: DeviceCostModel, cache: AccuracyCache
) -> None:
    front = co_search(SPACE, costs, cache, method="random", budget=4, seed=2).pareto_trials()
    device = front[0].device
    assert choose_trial(front, device=device).device == device
    with pytest.raises(ConfigError, match=f"did you mean '{device}'"):
        choose_trial(front, device=device + "x")


def test_grow_and_prune_accepts_by_accuracy_and_cost(
    costs: DeviceCostModel, cache: AccuracyCache
) -> None:
    result = co_search(SPACE, costs, cache, method="random", budget=4, seed=2)
    chosen = choose_trial(result.pareto_trials(), prefer="accuracy")
    refined = grow_and_prune(
        chosen.config,
        cache.task,
        costs,
        RefineSettings(device=chosen.device, num_steps=1, max_accuracy_drop=1.0),
        TrainSettings(epochs=1),
    )
    assert refined.steps[0].action == "start"
    accepted = [s for s in refined.steps[1:] if s.accepted]
    # With an unlimited accuracy allowance the first prune must be kept (it lowers latency).
    assert accepted
    assert accepted[0].action.startswith("prune")
    assert refined.final.latency_s < refined.start.latency_s
    assert refined.final.config.num_layers == chosen.config.num_layers
    # One step, and it was kept: the step limit stopped it while it still improved.
    assert refined.stopped == "steps"
    assert refined.still_improving


def test_report_page(tmp_path: Path, costs: DeviceCostModel, cache: AccuracyCache) -> None:
    from edgesplit.core.schema import write_json_file
    from edgesplit.cosearch.report import write_report

    result = co_search(SPACE, costs, cache, method="random", budget=3, seed=3)
    path = write_json_file(result, tmp_path / "search.json")
    page = write_report(path, None, tmp_path / "report.md").read_text()
    assert "Front per device" in page
    assert result.pareto_trials()[0].device in page
