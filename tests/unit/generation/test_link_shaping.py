"""Links follow `RuntimeConfig.link_shaping` through `RuntimeConfig.shaped`, which the batch,
shard and decode drivers all call (the decode driver with its `cluster`)."""

from __future__ import annotations

import pytest

from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
from edgesplit.runtime.config import RuntimeConfig


def _cluster() -> Cluster:
    return Cluster(
        source="a",
        defaults=LinkDefaults(bandwidth_mbps=80, latency_ms=5.0),
        devices=(
            DeviceSpec(name="a", kind="k", memory_mb=100),
            DeviceSpec(name="b", kind="k", memory_mb=100),
        ),
    )


@pytest.mark.parametrize(
    ("shaping", "expected"),
    [("full", (10e6, 0.005)), ("latency", (None, 0.005)), ("off", None)],
)
def test_decode_links_follow_link_shaping(
    shaping: str, expected: tuple[float | None, float] | None
) -> None:
    # On the testbed the kernel shapes bandwidth: "latency" must not shape it a second time.
    runtime = RuntimeConfig(compute="real", link_shaping=shaping)  # type: ignore[arg-type]
    got = runtime.shaped(_cluster(), "a", "b")
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert got[0] == (pytest.approx(expected[0]) if expected[0] else None)
        assert got[1] == pytest.approx(expected[1])
    assert runtime.shaped(_cluster(), "a", "a") is None  # one device: no link
