"""Where every piece of a testbed goes: names, addresses, cgroups and the tc classes of each link.

Pure: turns a `Cluster` and a testbed name into a `TestbedLayout` (no commands run). Imports core
only. The kernel objects a layout names all start with the testbed's prefix, which is how `down`
finds leftovers after a crash (see lifecycle.py).
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from dataclasses import dataclass

from edgesplit.core.cluster import Cluster
from edgesplit.errors import ConfigError

__all__ = [
    "CGROUP_ROOT_PREFIX",
    "DRIVER",
    "LinkClass",
    "NodeLayout",
    "TestbedLayout",
    "check_name",
    "default_subnet",
    "plan_layout",
]

DRIVER = "driver"  # the host end: the Ray head and the driver, standing in for the source device
CGROUP_ROOT_PREFIX = "edgesplit-testbed-"
_NAME = re.compile(r"^[a-z0-9]{1,5}$")  # interface names must fit 15 characters with the prefix
_MAX_DEVICES = 200


@dataclass(frozen=True, slots=True)
class LinkClass:
    """One shaped direction: traffic leaving `src` for `dst_ip` at `rate_bytes_per_s`.

    `latency_s` is recorded, not put on the wire: this kernel has no netem, so the propagation
    delay is added at the sender by the runtime (see docs/testbed.md).
    """

    src: str
    dst: str
    dst_ip: str
    rate_bytes_per_s: float
    latency_s: float


@dataclass(frozen=True, slots=True)
class NodeLayout:
    """One device: its namespace, veth pair, address and CPU cgroup."""

    device: str
    index: int
    namespace: str
    host_veth: str  # the end on the bridge, in the host namespace
    peer_veth: str  # created under this name, moved into the namespace and renamed `eth0`
    ip: str
    cgroup: str  # relative to the cpu controller's mount
    cpu_quota: float | None
    memory_mb: float


@dataclass(frozen=True, slots=True)
class TestbedLayout:
    name: str
    prefix: str  # every namespace starts with `es-{name}-`, every link with `es{name}`
    bridge: str
    subnet: str  # e.g. 10.213.40.0/24
    head_ip: str  # the bridge's address: the Ray head and the driver live here
    cgroup_root: str
    head_cgroup: str
    nodes: tuple[NodeLayout, ...]
    classes: tuple[LinkClass, ...]

    @property
    def namespace_prefix(self) -> str:
        return f"es-{self.name}-"

    @property
    def ray_temp_dir(self) -> str:
        """Ray's session directory of the testbed's nodes (`down` removes it)."""
        return f"/tmp/es-{self.name}"

    def node(self, device: str) -> NodeLayout:
        for node in self.nodes:
            if node.device == device:
                return node
        raise ConfigError(
            f"the testbed has no device '{device}'; devices: {[n.device for n in self.nodes]}"
        )

    def classes_from(self, src: str) -> tuple[LinkClass, ...]:
        return tuple(c for c in self.classes if c.src == src)


def check_name(name: str) -> None:
    """Raise ConfigError unless `name` is a testbed name (1-5 lower-case letters or digits)."""
    if not _NAME.match(name):
        raise ConfigError(
            f"testbed name {name!r} must be 1-5 lower-case letters or digits (it prefixes "
            "interface names, which Linux caps at 15 characters)"
        )


def default_subnet(name: str) -> str:
    """A /24 under 10.213.0.0/16 picked from the name, so two testbeds rarely collide."""
    return f"10.213.{20 + zlib.crc32(name.encode()) % 220}.0/24"


def plan_layout(cluster: Cluster, name: str = "tb", subnet: str | None = None) -> TestbedLayout:
    """Names, addresses and shaped classes for `cluster` as testbed `name`.

    Every device gets namespace `es-{name}-{i}`, a veth pair `es{name}h{i}` (bridge side) /
    `eth0` (namespace side) and the address `.{i + 2}` of the subnet; the bridge `es{name}br`
    holds `.1`, where the Ray head and the driver run. Each direction a->b between devices is a
    class on a's egress with the cluster's `link(a, b)` rate; the host's egress to b carries
    `link(source, b)` (the driver stands in for the source device) and nothing to the source
    itself, which is the driver's own device.

    Raises:
        ConfigError: a bad name or subnet (not a private IPv4 /24 or smaller), or more devices
            than the subnet holds.
    """
    check_name(name)
    try:
        network = ipaddress.ip_network(subnet or default_subnet(name))
    except ValueError as e:
        raise ConfigError(f"subnet {subnet!r} is not an IPv4 network like 10.213.40.0/24") from e
    if not isinstance(network, ipaddress.IPv4Network) or not network.is_private:
        raise ConfigError(f"subnet {network} must be a private IPv4 network (10/8, 192.168/16)")
    if network.prefixlen < 24:
        # A /24 holds the head and the most devices a testbed takes; a wider route on the
        # bridge would capture more of the host's own networks than the testbed needs.
        raise ConfigError(
            f"subnet {network} is wider than a /24; give a private /24 (or smaller), e.g. "
            f"{network.network_address}/24"
        )
    hosts = list(network.hosts())
    num_devices = len(cluster.devices)
    if num_devices > min(_MAX_DEVICES, len(hosts) - 1):
        raise ConfigError(
            f"{num_devices} devices do not fit subnet {network} ({len(hosts) - 1} addresses)"
        )
    cgroup_root = f"{CGROUP_ROOT_PREFIX}{name}"
    nodes = tuple(
        NodeLayout(
            device=device.name,
            index=index,
            namespace=f"es-{name}-{index}",
            host_veth=f"es{name}h{index}",
            peer_veth=f"es{name}n{index}",
            ip=str(hosts[index + 1]),
            cgroup=f"{cgroup_root}/node{index}",
            cpu_quota=device.cpu_quota,
            memory_mb=device.memory_mb,
        )
        for index, device in enumerate(cluster.devices)
    )
    head_ip = str(hosts[0])
    classes: list[LinkClass] = []
    for a in nodes:
        for b in nodes:
            if a is not b:
                rate, latency = cluster.link(a.device, b.device)
                classes.append(LinkClass(a.device, b.device, b.ip, rate, latency))
        # Answers go back to the driver: the device's link to the source device.
        if a.device != cluster.source:
            rate, latency = cluster.link(a.device, cluster.source)
            classes.append(LinkClass(a.device, DRIVER, head_ip, rate, latency))
    for b in nodes:
        if b.device != cluster.source:
            rate, latency = cluster.link(cluster.source, b.device)
            classes.append(LinkClass(DRIVER, b.device, b.ip, rate, latency))
    return TestbedLayout(
        name=name,
        prefix=f"es{name}",
        bridge=f"es{name}br",
        subnet=str(network),
        head_ip=head_ip,
        cgroup_root=cgroup_root,
        head_cgroup=f"{cgroup_root}/head",
        nodes=nodes,
        classes=tuple(classes),
    )
