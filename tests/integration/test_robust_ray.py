"""A robust plan on shard stages (the one stage worker, over the authenticated channel) with
real killed processes reproduces the masked evaluation (1e-5); emulated shards on shaped links
meet the link's latency."""

from __future__ import annotations

import time

import pytest
import torch
from test_robust_width import reference, synthetic_problem, tiny_model

from edgesplit.models.width import WidthModel
from edgesplit.planners.robust import StrategySpec, place
from edgesplit.runtime.config import RuntimeConfig
from edgesplit.runtime.robust import RobustCoordinator, shard_payloads

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("family", ["llama"])
def test_killed_actors_reproduce_masked_evaluation(ray_cluster: object, family: str) -> None:
    from edgesplit.runtime.shards import ChannelShardBackend

    model, inputs = tiny_model(family)
    wm = WidthModel(model, num_ffn_groups=4)
    replicas = place(
        StrategySpec(name="tiered", vital_fraction=0.5), synthetic_problem(wm), 4, [0.1] * 4
    )
    devices = [f"dev{i}" for i in range(4)]
    backend = ChannelShardBackend(
        devices, shard_payloads(wm, replicas, 4), RuntimeConfig(compute="real", placement="local")
    )
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
        started = time.perf_counter()
        out, report = coordinator.forward(inputs)
        assert time.perf_counter() - started < 10.0  # dead shards answer at once, not at 30 s
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


def test_emulated_shards_on_shaped_links(ray_cluster: object) -> None:
    """compute=emulated: shards sleep per unit; every round trip pays both shaped links."""
    from conftest import toy_cluster
    from edgesplit.runtime.shards import ChannelShardBackend

    model, inputs = tiny_model("llama")
    wm = WidthModel(model, num_ffn_groups=4)
    devices = ["coord", "e1", "e2"]
    replicas = [[1 + u % 2] for u in range(wm.num_units)]  # units alternate over e1, e2
    cluster = toy_cluster(devices, bandwidth_mbps=100)  # 1 ms latency each way
    config = RuntimeConfig(compute="emulated", placement="local", time_scale=20.0)
    backend = ChannelShardBackend(
        devices, shard_payloads(wm, replicas, 3), config, cluster=cluster, unit_s=0.001
    )
    try:
        coordinator = RobustCoordinator(wm, devices, replicas, backend, deadline_s=30.0)
        started = time.perf_counter()
        out, report = coordinator.forward(inputs)
        wall_s = time.perf_counter() - started
        assert not report.failed_devices
        assert out.shape[:2] == inputs["input_ids"].shape  # (B, T, V) logits of zero sums
        parts = 2 * len(wm.layers)
        # each layer part: 20 ms each way (1 ms x time_scale 20), units sleep in parallel
        assert wall_s >= parts * 2 * 0.02, wall_s
    finally:
        backend.close()
