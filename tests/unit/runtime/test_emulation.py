"""Sender-side link shaping: token bucket serialization plus latency (pure arithmetic)."""

from __future__ import annotations

import pytest

from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
from edgesplit.errors import ConfigError
from edgesplit.runtime.config import RuntimeConfig, parse_kill
from edgesplit.runtime.emulation import LinkShaper, TokenBucket
from edgesplit.runtime.report import steady_period_s


def test_lone_frame_sees_the_cost_model_transfer_time() -> None:
    shaper = LinkShaper(bandwidth_bytes_per_s=1e6, latency_s=0.01)
    assert shaper.due_s(500_000, now=10.0) == pytest.approx(10.0 + 0.5 + 0.01)


def test_back_to_back_frames_queue_on_bandwidth_but_overlap_latency() -> None:
    shaper = LinkShaper(bandwidth_bytes_per_s=1e6, latency_s=0.2)
    first = shaper.due_s(100_000, now=0.0)
    second = shaper.due_s(100_000, now=0.0)
    assert first == pytest.approx(0.3)
    assert second == pytest.approx(0.4)  # serialized after the first, latency overlapped


def test_link_shaping_modes_full_latency_off() -> None:
    cluster = Cluster(  # 1 MB/s (8 Mbps), 10 ms, as cluster.toml describes it
        source="a",
        defaults=LinkDefaults(bandwidth_mbps=8, latency_ms=10),
        devices=tuple(DeviceSpec(name=n, kind="k", memory_mb=1) for n in "ab"),
    )
    full = RuntimeConfig(link_shaping="full", time_scale=0.5).shaped(cluster, "a", "b")
    assert full == pytest.approx((2e6, 0.005))  # time-scaled both ways
    latency_only = RuntimeConfig(link_shaping="latency").shaped(cluster, "a", "b")
    assert latency_only == pytest.approx((None, 0.01))
    assert RuntimeConfig(link_shaping="off").shaped(cluster, "a", "b") is None
    assert RuntimeConfig().shaped(cluster, "b", "b") is None  # one device: no link
    shaper = LinkShaper.of(latency_only)
    assert shaper is not None
    # The bandwidth is someone else's (the kernel's htb): 500 kB waits only the latency, and
    # back-to-back frames do not queue behind each other.
    assert shaper.due_s(500_000, now=10.0) == pytest.approx(10.01)
    assert shaper.due_s(500_000, now=10.0) == pytest.approx(10.01)
    assert LinkShaper.of(None) is None


def test_idle_link_refills_up_to_the_burst() -> None:
    bucket = TokenBucket(rate_bytes_per_s=1000.0, burst_bytes=500.0)
    assert bucket.reserve(500, now=0.0) == pytest.approx(0.0)  # the burst goes at once
    assert bucket.reserve(1000, now=0.0) == pytest.approx(1.0)
    assert bucket.reserve(100, now=5.0) == pytest.approx(5.0)  # refilled meanwhile


def test_steady_period_skips_the_pipeline_fill() -> None:
    times = [0.0, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert steady_period_s(times, warmup=1) == pytest.approx(0.5)


def test_parse_kill() -> None:
    fault = parse_kill("pi0@3.5")
    assert (fault.device, fault.at_s, fault.action) == ("pi0", 3.5, "kill")
    with pytest.raises(ConfigError, match="DEVICE@SECONDS"):
        parse_kill("pi0")
