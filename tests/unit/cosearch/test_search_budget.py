"""What a co-search spends its budget and training on: no training for trials the predictors
rule out, an immediate infeasible error when nothing can meet the constraints, and no (config,
device) evaluated or listed twice. Accuracy is faked (no training), so these run in seconds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgesplit.cosearch.accuracy import AccuracyCache, AccuracyRecord
from edgesplit.cosearch.costs import DeviceCostModel
from edgesplit.cosearch.predictor import PredictorSettings
from edgesplit.cosearch.protran import Measurement
from edgesplit.cosearch.search import Constraints, SearchResult, Trial, co_search
from edgesplit.cosearch.space import EncoderConfig, SearchSpace
from edgesplit.cosearch.tasks import load_task
from edgesplit.errors import PlanInfeasibleError

SPACE = SearchSpace(
    modality="image",
    num_layers=(1, 2),
    hidden_size=(128, 256),
    num_heads=(2, 4),
    ffn_size=(256, 512),
)  # 32 configs; x 2 devices = 64 distinct trials


class FakeAccuracy(AccuracyCache):
    """Accuracy from a formula instead of a training; remembers what it 'trained'."""

    def __init__(self) -> None:
        super().__init__(None, load_task("digits"))
        self.trained: list[EncoderConfig] = []

    def get(self, config: EncoderConfig) -> AccuracyRecord:
        config = config.normalized()
        if self._key(config) in self._records:
            return self._records[self._key(config)]
        record = AccuracyRecord(
            config_key=config.key(),
            config=config,
            trained_config=config,
            task=self.task.name,
            accuracy=0.5 + 0.1 * config.num_layers + config.ffn_size / 1e4,
            train_cpu_s=0.0,
            num_params_trained=0,
        )
        self._records[self._key(config)] = record
        self.num_trained += 1
        self.trained.append(config)
        return record


@pytest.fixture(scope="module")
def costs(synthetic_protran: list[Measurement]) -> DeviceCostModel:
    return DeviceCostModel.fit(
        synthetic_protran, None, PredictorSettings(num_members=1, n_estimators=20)
    )


def _keys(trials: list[Trial]) -> list[tuple[str, str]]:
    return [(t.config.key(), t.device) for t in trials]


def test_unreachable_latency_fails_before_any_training(costs: DeviceCostModel) -> None:
    fake = FakeAccuracy()
    with pytest.raises(PlanInfeasibleError) as raised:
        co_search(SPACE, costs, fake, budget=3, seed=0, constraints=Constraints(max_latency_s=1e-9))
    message = str(raised.value)
    assert "no config meets --max-latency-s 1e-09 on any device" in message
    fastest = min(
        costs.predict(c, d).latency_s
        for c in SPACE.homogeneous_configs()
        for d in costs.device_names
    )
    assert f"the fastest predicted is {fastest:.2g} s (" in message
    assert fake.trained == []


def test_unreachable_memory_names_the_smallest_model(costs: DeviceCostModel) -> None:
    with pytest.raises(PlanInfeasibleError, match=r"--memory-fraction 1e-09 .*smallest needs"):
        co_search(
            SPACE, costs, FakeAccuracy(), budget=3, constraints=Constraints(memory_fraction=1e-9)
        )


def test_memory_fraction_must_be_a_share() -> None:
    for bad in (0.0, 2.0):
        with pytest.raises(ValidationError):
            Constraints(memory_fraction=bad)
    with pytest.raises(ValidationError):
        Constraints(max_latency_s=0.0)


def test_trials_ruled_out_by_the_predictors_are_not_trained(costs: DeviceCostModel) -> None:
    latencies = sorted(
        costs.predict(c, d).latency_s
        for c in SPACE.homogeneous_configs()
        for d in costs.device_names
    )
    budget_s = latencies[len(latencies) // 3]  # about a third of the pairs are feasible
    fake = FakeAccuracy()
    result = co_search(
        SPACE,
        costs,
        fake,
        method="random",
        budget=16,
        seed=0,
        constraints=Constraints(max_latency_s=budget_s),
    )
    infeasible = [t for t in result.trials if not t.feasible]
    assert infeasible, "the test needs some infeasible trials"
    assert all(not t.trained and t.accuracy == 0.0 for t in infeasible)
    feasible_keys = {t.config.normalized().key() for t in result.trials if t.feasible}
    assert {c.key() for c in fake.trained} <= feasible_keys
    assert result.num_trainings == len(fake.trained)


@pytest.mark.parametrize("method", ["tpe", "nsga2", "random"])
def test_no_config_device_pair_is_evaluated_twice(costs: DeviceCostModel, method: str) -> None:
    result = co_search(SPACE, costs, FakeAccuracy(), method=method, budget=40, seed=0)  # type: ignore[arg-type]
    keys = _keys(list(result.trials))
    assert len(keys) == 40
    assert len(set(keys)) == 40
    front = _keys(result.pareto_trials())
    assert len(front) == len(set(front))
    assert [t.number for t in result.trials] == list(range(40))


def test_tpe_repeats_are_counted_and_free(costs: DeviceCostModel) -> None:
    fake = FakeAccuracy()
    result = co_search(SPACE, costs, fake, method="tpe", budget=40, seed=0)
    assert result.repeats > 0  # TPE narrows onto the front in a 64-pair space
    # one training per distinct config (eager and sdpa share one: same maths)
    same_maths = {t.config.model_copy(update={"attention": "sdpa"}).key() for t in result.trials}
    assert fake.num_trained == len(same_maths)


def test_a_budget_past_the_space_stops_when_every_pair_is_tried(costs: DeviceCostModel) -> None:
    result = co_search(SPACE, costs, FakeAccuracy(), method="tpe", budget=100, seed=0)
    assert len(result.trials) == SPACE.size() * 2 == 64
    assert len(set(_keys(list(result.trials)))) == 64


def test_front_of_an_old_file_lists_a_repeat_once(costs: DeviceCostModel) -> None:
    result = co_search(SPACE, costs, FakeAccuracy(), method="random", budget=4, seed=0)
    first = result.pareto_trials()[0]
    twin = first.model_copy(update={"number": 99})
    old = result.model_copy(
        update={"trials": (*result.trials, twin), "pareto": (*result.pareto, 99)}
    )
    assert isinstance(old, SearchResult)
    assert _keys(old.pareto_trials()) == _keys(result.pareto_trials())
