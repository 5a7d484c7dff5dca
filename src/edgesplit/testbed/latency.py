"""Propagation delay on a kernel without netem: the runtime adds it at the sender.

The testbed shapes rate in the kernel (htb) but cannot delay packets there (this kernel lacks
netem; see docs/testbed.md). The runtime's sender-side link shaper adds `latency` per frame, so a
run on the testbed gets a cluster whose links carry the file's latencies and a bandwidth so high
that the runtime's token bucket never holds a frame back: the kernel alone paces the bytes.
Pure (core only).
"""

from __future__ import annotations

from edgesplit.core.cluster import Cluster, LinkDefaults, LinkSpec

__all__ = ["UNSHAPED_MBPS", "planning_cluster", "sender_delay_cluster"]

UNSHAPED_MBPS = 1e9  # 1 Pbit/s: a 10 MB frame "takes" 80 ns in the sender's bucket


def _pairs(cluster: Cluster) -> list[tuple[str, str]]:
    names = cluster.device_names
    return [(a, b) for a in names for b in names if a != b]


def sender_delay_cluster(cluster: Cluster, delays: Cluster | None = None) -> Cluster:
    """`cluster` (its devices and kinds) with every link's bandwidth unshaped and the latency of
    the same pair in `delays` (default: `cluster` itself): what `run_plan` gets on a testbed."""
    source = delays or cluster
    links = tuple(
        LinkSpec(
            a=a, b=b, bandwidth_mbps=UNSHAPED_MBPS, latency_ms=source.link(a, b)[1] * 1e3,
            one_way=True,
        )
        for a, b in _pairs(cluster)
    )  # fmt: skip
    data = cluster.model_dump()
    data.update(
        defaults=LinkDefaults(
            bandwidth_mbps=UNSHAPED_MBPS, latency_ms=source.defaults.latency_ms
        ).model_dump(),
        links=[link.model_dump() for link in links],
    )
    return Cluster.model_validate(data)


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
