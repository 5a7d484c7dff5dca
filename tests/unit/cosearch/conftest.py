"""Shared fixtures for co-search unit tests: a synthetic ProTran-like data set (no shared data)."""

from __future__ import annotations

import numpy as np
import pytest

from edgesplit.cosearch.features import count_flops
from edgesplit.cosearch.protran import PROTRAN_SEQ_LEN, Measurement
from edgesplit.cosearch.space import SearchSpace

PROTRAN_DIR_NAME = "protran"


def synthetic_measurements(device: str, count: int, seed: int = 0) -> list[Measurement]:
    """Measurements whose latency is a noisy linear function of FLOPs plus a per-layer floor."""
    rng = np.random.default_rng(seed)
    space = SearchSpace()
    out = []
    for index, config in enumerate(space.sample_unique(rng, count)):
        arch = config.architecture(PROTRAN_SEQ_LEN, vocab_size=100)
        latency = 1e-10 * count_flops(arch) + 2e-3 * config.num_layers
        latency *= float(rng.lognormal(0.0, 0.02))
        out.append(
            Measurement(
                device=device,
                model_hash=f"m{index}",
                model_type="synthetic",
                architecture=arch,
                latency_s=latency,
                energy_j=latency * 5.0,
                peak_power_w=5.0 + config.hidden_size / 768,
            )
        )
    return out


@pytest.fixture(scope="session")
def synthetic_protran() -> list[Measurement]:
    return synthetic_measurements("rpi-cpu", 40, 0) + synthetic_measurements("a100-gpu", 40, 1)
