"""Synthetic planning scenarios shared by planner benchmarks (no torch; pure data).

`vit_huge_profile()` stretches PipeEdge's measured ViT-Large sublayer pattern (4 sublayers per
block) to ViT-Huge's 32 blocks and scales sizes and times by width (1280/1024), giving a
ViT-Huge-sized profile of 128 units. Device kinds are derived from the two measured boards with a
per-kind slowdown and seeded per-unit variation (so kinds differ in shape, not just scale).
"""

from __future__ import annotations

import numpy as np

from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults, LinkSpec
from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.profile.pipeedge import import_pipeedge

WIDTH_RATIO = 1280 / 1024  # ViT-Huge / ViT-Large hidden size
NUM_BLOCKS = 32


def vit_huge_profile(num_kinds: int, seed: int = 0) -> ModelProfile:
    """128 units; kinds 'kind0'..; kind0 = RCC-VE speed, others slower with per-unit jitter."""
    large = import_pipeedge("google/vit-large-patch16-224", 8)
    rng = np.random.default_rng(seed)
    base = large.units[4:8]  # one middle block's 4 sublayers
    slowdowns = [1.0, 1.6, 2.3, 3.1, 4.2, 0.6, 5.5, 1.3, 2.0, 0.8, 2.7, 3.6][:num_kinds]
    if num_kinds > len(slowdowns):
        slowdowns += list(rng.uniform(0.5, 6.0, num_kinds - len(slowdowns)))
    shape = rng.uniform(0.8, 1.25, (num_kinds, 4))  # kinds differ per sublayer type
    units = []
    for block in range(NUM_BLOCKS):
        for index, unit in enumerate(base):
            rcc = unit.time_s["RCC-VE-C2000"] * WIDTH_RATIO**2
            units.append(
                UnitProfile(
                    name=f"block{block}.sub{index}",
                    param_bytes=unit.param_bytes * WIDTH_RATIO**2,
                    output_bytes=unit.output_bytes * WIDTH_RATIO,
                    time_s={
                        f"kind{k}": rcc * slowdowns[k] * float(shape[k, index])
                        for k in range(num_kinds)
                    },
                )
            )
    return ModelProfile(
        model="vit-huge-sized (PipeEdge ViT-Large sublayers, scaled)",
        batch_size=8,
        input_bytes=large.input_bytes,
        units=tuple(units),
        source="benchmarks/scenarios.py",
    )


def cluster_of(
    counts: list[int], *, distinct_links: bool = False, seed: int = 0, bandwidth_mbps: float = 1000
) -> Cluster:
    """counts[k] devices of kind k; memory per kind; optionally distinct random links per pair."""
    rng = np.random.default_rng(seed)
    memories = [8192, 2048, 4096, 3072, 6144, 16384, 1536, 12288, 2560, 5120, 3584, 7168]
    devices = []
    for kind, count in enumerate(counts):
        for index in range(count):
            memory = memories[kind % len(memories)]
            if distinct_links:
                memory = float(memory * rng.uniform(0.8, 1.2))
            devices.append(
                DeviceSpec(name=f"k{kind}-{index}", kind=f"kind{kind}", memory_mb=memory)
            )
    links = []
    if distinct_links:
        for i, a in enumerate(devices):
            for b in devices[i + 1 :]:
                links.append(
                    LinkSpec(
                        a=a.name,
                        b=b.name,
                        bandwidth_mbps=float(rng.choice([100, 300, 500, 1000])),
                        latency_ms=float(rng.uniform(0.1, 3.0)),
                    )
                )
    return Cluster(
        source=devices[0].name,
        defaults=LinkDefaults(bandwidth_mbps=bandwidth_mbps, latency_ms=0.5),
        devices=tuple(devices),
        links=tuple(links),
    )
