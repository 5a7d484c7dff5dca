"""Round-2 reuse costs (offload.reuse_cost) on the tiny pipeline: the bytes are exact, CPU > 0."""

from __future__ import annotations

import numpy as np

from edgesplit.offload.pipeline import tiny_pipeline
from edgesplit.offload.reuse_cost import reuse_costs


def test_reuse_resends_fewer_bytes_and_reports_per_image_costs() -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 64)).astype(np.uint8)
    costs = reuse_costs(tiny_pipeline(), images, k1=8, k2=8, batch=2)
    assert costs["batch"] == 2
    # from scratch the device resends round 1's 8 patches too
    assert costs["payload_bytes_scratch"] > costs["payload_bytes_reuse"] > 0
    assert costs["cpu_per_image_s_reuse"] > 0
    assert costs["cpu_per_image_s_scratch"] > 0
    assert costs["compute_saved_fraction"] < 1
    again = reuse_costs(tiny_pipeline(), images, k1=8, k2=8, batch=2)
    assert again["payload_bytes_reuse"] == costs["payload_bytes_reuse"]  # seeded sampling
