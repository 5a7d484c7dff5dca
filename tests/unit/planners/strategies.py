"""Hypothesis strategies and seeded generators of small random planning instances."""

from __future__ import annotations

import numpy as np

from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults, LinkSpec
from edgesplit.core.profile import ModelProfile, UnitProfile


def random_instance(
    rng: np.random.Generator,
    num_devices: int,
    num_units: int,
    *,
    same_kind: bool = False,
    stage_overhead: bool = False,
) -> tuple[ModelProfile, Cluster]:
    """Distinct kinds (unless same_kind), random memory caps, random asymmetric links; with
    `stage_overhead`, a random per-stage runtime cost on some devices (DeviceSpec, as surveyed)."""
    kinds = ["k0"] * num_devices if same_kind else [f"k{i}" for i in range(num_devices)]
    params = rng.uniform(1e6, 10e6, num_units)
    total = float(params.sum())
    units = tuple(
        UnitProfile(
            name=f"u{u}",
            param_bytes=float(params[u]),
            output_bytes=float(rng.choice([1e4, 1e5, 1e6, 4e6])),
            time_s={k: float(rng.uniform(0.01, 1.0)) for k in sorted(set(kinds))},
        )
        for u in range(num_units)
    )
    profile = ModelProfile(model="random", batch_size=1, input_bytes=2e5, units=units)
    devices = tuple(
        DeviceSpec(
            name=f"d{i}",
            kind=kinds[i],
            # Between a third of the model and all of it (plus buffers): some plans don't fit.
            memory_mb=float(rng.uniform(0.35, 1.3)) * total / 1e6 + 20,
        )
        for i in range(num_devices)
    )
    links = []
    for i in range(num_devices):
        for j in range(num_devices):
            if i != j and rng.random() < 0.5:
                links.append(
                    LinkSpec(
                        a=f"d{i}",
                        b=f"d{j}",
                        bandwidth_mbps=float(rng.choice([10, 50, 100, 1000])),
                        latency_ms=float(rng.choice([0, 1, 5, 20])),
                        one_way=True,
                    )
                )
    if stage_overhead:  # drawn last, so the rest of the instance is the one without it
        costs = rng.choice([0.0, 0.0, 5.0, 50.0, 300.0], size=num_devices)
        devices = tuple(
            d.model_copy(update={"stage_overhead_ms": float(c) if c else None})
            for d, c in zip(devices, costs, strict=True)
        )
    cluster = Cluster(
        source=f"d{int(rng.integers(num_devices))}",
        defaults=LinkDefaults(bandwidth_mbps=float(rng.choice([20, 100, 1000])), latency_ms=2.0),
        devices=devices,
        links=tuple(links),
    )
    return profile, cluster
