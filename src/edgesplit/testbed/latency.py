"""Propagation delay on a kernel without netem: the runtime adds it at the sender.

The testbed shapes rate in the kernel (htb) but cannot delay packets there (this kernel lacks
netem; see docs/testbed.md). A run on the testbed uses `RuntimeConfig.link_shaping = "latency"`
(`edgesplit run --link-shaping latency`): the runtime adds each link's latency per frame and
leaves the rate to the kernel. The survey sees only the wire's microseconds, so the planning
cluster carries measured + the testbed file's latency. Pure (core only).
"""

from __future__ import annotations

from edgesplit.core.cluster import Cluster, LinkSpec

__all__ = ["planning_cluster"]


def _pairs(cluster: Cluster) -> list[tuple[str, str]]:
    names = cluster.device_names
    return [(a, b) for a in names for b in names if a != b]


def planning_cluster(surveyed: Cluster, testbed: Cluster) -> Cluster:
    """The surveyed cluster with each link's latency = measured + the testbed's sender delay.

    The survey measures what is on the wire (kernel rate, microseconds of latency); the delay
    the runtime will add at the sender is invisible to it, so the plan must be told.
    """
    links = []
    for a, b in _pairs(surveyed):
        bandwidth_bytes_per_s, measured_s = surveyed.link(a, b)
        delay_s = testbed.link(a, b)[1] if b in testbed.device_names else 0.0
        links.append(
            LinkSpec(
                a=a, b=b, bandwidth_mbps=bandwidth_bytes_per_s * 8 / 1e6,
                latency_ms=(measured_s + delay_s) * 1e3, one_way=True,
            )
        )  # fmt: skip
    data = surveyed.model_dump()
    data.update(links=[link.model_dump() for link in links])
    return Cluster.model_validate(data)
