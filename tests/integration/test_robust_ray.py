"""Robust plan on Ray with real killed shard actors reproduces the masked evaluation (1e-5)."""

from __future__ import annotations

import pytest
import torch
from test_robust_width import reference, synthetic_problem, tiny_model

from edgesplit.models.width import WidthModel
from edgesplit.planners.robust import StrategySpec, place
from edgesplit.runtime.robust import RobustCoordinator, shard_payloads

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("family", ["llama"])
def test_killed_actors_reproduce_masked_evaluation(family: str) -> None:
    from edgesplit.runtime.robust_ray import RayShardBackend

    model, inputs = tiny_model(family)
    wm = WidthModel(model, num_ffn_groups=4)
    replicas = place(
        StrategySpec(name="tiered", vital_fraction=0.5), synthetic_problem(wm), 4, [0.1] * 4
    )
    devices = [f"dev{i}" for i in range(4)]
    backend = RayShardBackend(devices, shard_payloads(wm, replicas, 4))
    try:
        coordinator = RobustCoordinator(wm, devices, replicas, backend, deadline_s=30.0)
        out, report = coordinator.forward(inputs)
        assert not report.failed_devices
        ref = reference(model, family, inputs)
        if family == "bert":
            mask = inputs["attention_mask"].bool()
            torch.testing.assert_close(out[mask], ref[mask], atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)

        backend.kill("dev1")
        backend.kill("dev2")
        out, report = coordinator.forward(inputs)
        lost = {u for u, r in enumerate(replicas) if set(r) <= {1, 2}}
        assert set(report.failed_devices) == {"dev1", "dev2"}
        assert report.lost_units == lost
        assert lost, "the test needs at least one unit held only by the killed devices"
        with torch.no_grad():
            masked = wm(inputs, wm.keep_from_lost(lost))
        torch.testing.assert_close(out, masked, atol=1e-5, rtol=0)

        # the next request goes straight to live replicas: no new failures, same output
        again, report2 = coordinator.forward(inputs)
        assert report2.failed_devices == []
        assert report2.failovers == 0
        torch.testing.assert_close(again, out, atol=1e-6, rtol=0)
    finally:
        backend.close()
