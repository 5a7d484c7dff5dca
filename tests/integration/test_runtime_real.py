"""Real compute through the pipeline: outputs equal the unsplit model's, in order.

Three stages, each actor holding only its units' weights (edgesplit.models.build_stage), ≥64
micro-batches; and a checkpoint missing one unit's weights fails before any request is sent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_plan, toy_cluster
from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.errors import ConfigError
from edgesplit.models import (
    build_model,
    example_input,
    model_spec_from_name,
    save_checkpoint,
    unit_names,
    unsplit_output,
)
from edgesplit.runtime import RuntimeConfig, run_plan
from edgesplit.runtime.config import ScheduledFault

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH = 2
NUM_REQUESTS = 64


def _profile(model: str, names: list[str]) -> ModelProfile:
    units = tuple(
        UnitProfile(name=n, param_bytes=1.0, output_bytes=1.0, time_s={"k": 0.001}) for n in names
    )
    return ModelProfile(model=model, batch_size=BATCH, input_bytes=1.0, units=units)


def _three_stages(num_units: int) -> list[tuple[str, int, int]]:
    a, b = num_units // 3, 2 * num_units // 3
    return [("r0", 0, a), ("r1", a, b), ("r2", b, num_units)]


@pytest.mark.parametrize("preset", ["vit-tiny", "gpt2-tiny"])
def test_real_run_equals_the_unsplit_model(ray_cluster: object, preset: str) -> None:
    spec = model_spec_from_name(preset)
    names = unit_names(spec)
    profile, cluster = _profile(preset, names), toy_cluster(["r0", "r1", "r2"])
    plan = make_plan(profile, cluster, _three_stages(len(names)))
    outputs: dict[int, dict[str, np.ndarray]] = {}
    order: list[int] = []

    def keep(rid: int, out: dict[str, np.ndarray]) -> None:
        order.append(rid)
        outputs[rid] = out

    config = RuntimeConfig(compute="real", placement="local", seed=100)
    report = run_plan(plan, cluster, profile, spec, config, requests=NUM_REQUESTS, on_result=keep)
    assert order == list(range(NUM_REQUESTS))
    assert (report.requests.lost, report.requests.duplicated) == (0, 0)
    model = build_model(spec)
    worst = 0.0
    for rid in range(NUM_REQUESTS):
        reference = unsplit_output(model, example_input(spec, BATCH, seed=100 + rid))
        got = torch.from_numpy(outputs[rid]["logits"])
        worst = max(worst, float((reference - got).abs().max()))
    assert worst <= 1e-5, worst


def test_real_run_through_a_kill_equals_the_unsplit_model(ray_cluster: object) -> None:
    """A warm standby (imports and kernels measured for the run's model while it waited) takes
    the killed middle stage over; every answer still equals the unsplit model's, in order."""
    spec = model_spec_from_name("vit-tiny")
    names = unit_names(spec)
    profile, cluster = _profile("vit-tiny", names), toy_cluster(["r0", "r1", "r2", "r3"])
    plan = make_plan(profile, cluster, _three_stages(len(names)))
    count = 160
    inputs = [example_input(spec, BATCH, seed=rid) for rid in range(count)]

    def paced() -> Iterator[dict[str, torch.Tensor]]:
        for tensors in inputs:
            time.sleep(0.01)  # ~2 s of requests: the kill at 0.6 s lands mid-run
            yield tensors

    outputs: dict[int, np.ndarray] = {}
    config = RuntimeConfig(compute="real", placement="local", standby_devices=("r3",))
    report = run_plan(
        plan,
        cluster,
        profile,
        spec,
        config,
        requests=paced(),
        faults=[ScheduledFault("r1", 0.6, "kill")],
        on_result=lambda rid, out: outputs.__setitem__(rid, out["logits"]),
    )
    (failure,) = report.failures
    assert (failure.device, failure.action) == ("r1", "standby")
    assert list(outputs) == list(range(count))
    assert (report.requests.lost, report.requests.duplicated) == (0, 0)
    model = build_model(spec)
    worst = max(
        float((unsplit_output(model, inputs[rid]) - torch.from_numpy(outputs[rid])).abs().max())
        for rid in range(count)
    )
    assert worst <= 1e-5, worst


def test_checkpoint_missing_a_units_weights_fails_before_requests(
    ray_cluster: object, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    directory = save_checkpoint(model_spec_from_name("vit-tiny"), tmp_path / "ckpt")
    weights = load_file(str(directory / "model.safetensors"))
    dropped = sorted(k for k in weights if ".1." in k)[0]  # a tensor of block 1
    del weights[dropped]
    save_file(weights, str(directory / "model.safetensors"))
    spec = model_spec_from_name(str(directory))
    names = unit_names(spec)
    profile, cluster = _profile(str(directory), names), toy_cluster(["r0", "r1", "r2"])
    plan = make_plan(profile, cluster, _three_stages(len(names)))
    answered: list[int] = []
    with pytest.raises(ConfigError, match="missing tensor"):
        run_plan(
            plan,
            cluster,
            profile,
            spec,
            RuntimeConfig(compute="real", placement="local"),
            requests=4,
            on_result=lambda rid, out: answered.append(rid),
        )
    assert answered == []
