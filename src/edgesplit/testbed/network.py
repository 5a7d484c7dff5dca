"""The testbed's network: a bridge on the host, one namespace + veth pair per device, and tc.

Rates are shaped in the kernel: an htb tree on every sender's egress (the namespace's `eth0`, and
the bridge for what the driver sends), one class per destination address with a u32 filter, a
pfifo under each class. Unmatched traffic (Ray's control plane to the head) goes through a
default class at 10 Gbit/s. Propagation delay is not put on the wire (no netem in this kernel;
see layout.LinkClass). Stdlib only; every command through `system.run_tool`.
"""

from __future__ import annotations

import contextlib
import json

from edgesplit.testbed.layout import DRIVER, LinkClass, TestbedLayout
from edgesplit.testbed.system import TestbedCommandError, run_tool

__all__ = [
    "build_network",
    "class_commands",
    "existing_links",
    "existing_namespaces",
    "remove_network",
    "set_link",
]

_DEFAULT_RATE = "10gbit"
_QUEUE_PACKETS = 1000
_MAX_PACKET_BYTES = 65_536 + 1_514  # a GSO super-packet on a veth plus one frame


def _in_ns(namespace: str | None, *command: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *command] if namespace else list(command)


def _burst_bytes(rate_bytes_per_s: float) -> int:
    # htb needs a bucket of at least one (GSO) packet; 1 ms worth at high rates keeps it smooth.
    return max(2 * _MAX_PACKET_BYTES, round(rate_bytes_per_s * 0.001))


def class_commands(device: str, classes: tuple[LinkClass, ...]) -> list[list[str]]:
    """The tc commands that shape `classes` on `device` (an interface name), root first."""
    commands = [
        ["tc", "qdisc", "replace", "dev", device, "root", "handle", "1:", "htb", "default", "1"],
        ["tc", "class", "add", "dev", device, "parent", "1:", "classid", "1:1", "htb",
         "rate", _DEFAULT_RATE, "burst", str(_burst_bytes(1.25e9))],
        ["tc", "qdisc", "add", "dev", device, "parent", "1:1", "pfifo", "limit",
         str(_QUEUE_PACKETS)],
    ]  # fmt: skip
    for number, link in enumerate(classes, start=10):
        classid = f"1:{number:x}"
        rate = f"{round(link.rate_bytes_per_s * 8)}bit"
        burst = str(_burst_bytes(link.rate_bytes_per_s))
        commands += [
            ["tc", "class", "add", "dev", device, "parent", "1:", "classid", classid, "htb",
             "rate", rate, "ceil", rate, "burst", burst, "cburst", burst],
            ["tc", "qdisc", "add", "dev", device, "parent", classid, "pfifo", "limit",
             str(_QUEUE_PACKETS)],
            ["tc", "filter", "add", "dev", device, "parent", "1:", "protocol", "ip", "prio", "1",
             "u32", "match", "ip", "dst", f"{link.dst_ip}/32", "flowid", classid],
        ]  # fmt: skip
    return commands


def build_network(layout: TestbedLayout) -> None:
    """Create the bridge, every namespace and veth pair, addresses, routes and the tc trees."""
    prefix_len = layout.subnet.split("/")[1]
    run_tool(["ip", "link", "add", layout.bridge, "type", "bridge"])
    run_tool(["ip", "link", "set", layout.bridge, "txqueuelen", str(_QUEUE_PACKETS)])
    run_tool(["ip", "addr", "add", f"{layout.head_ip}/{prefix_len}", "dev", layout.bridge])
    run_tool(["ip", "link", "set", layout.bridge, "up"])
    for node in layout.nodes:
        ns = node.namespace
        run_tool(["ip", "netns", "add", ns])
        run_tool(["ip", "link", "add", node.host_veth, "type", "veth", "peer", "name",
                  node.peer_veth])  # fmt: skip
        run_tool(["ip", "link", "set", node.peer_veth, "netns", ns])
        run_tool(_in_ns(ns, "ip", "link", "set", node.peer_veth, "name", "eth0"))
        run_tool(_in_ns(ns, "ip", "addr", "add", f"{node.ip}/{prefix_len}", "dev", "eth0"))
        run_tool(_in_ns(ns, "ip", "link", "set", "eth0", "up"))
        run_tool(_in_ns(ns, "ip", "link", "set", "lo", "up"))
        run_tool(["ip", "link", "set", node.host_veth, "master", layout.bridge])
        run_tool(["ip", "link", "set", node.host_veth, "up"])
        for command in class_commands("eth0", layout.classes_from(node.device)):
            run_tool(_in_ns(ns, *command))
    for command in class_commands(layout.bridge, layout.classes_from(DRIVER)):
        run_tool(command)


def set_link(layout: TestbedLayout, device: str, up: bool) -> None:
    """Cut (`up=False`) or restore a device's link: its veth on the bridge goes down or up."""
    node = layout.node(device)
    run_tool(["ip", "link", "set", node.host_veth, "up" if up else "down"])


def existing_namespaces(prefix: str) -> list[str]:
    done = run_tool(["ip", "-j", "netns", "list"], check=False)
    try:
        entries = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        entries = [{"name": line.split()[0]} for line in done.stdout.splitlines() if line]
    return sorted(str(e["name"]) for e in entries if str(e.get("name", "")).startswith(prefix))


def existing_links(prefix: str) -> list[str]:
    done = run_tool(["ip", "-j", "link", "show"], check=False)
    try:
        entries = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        return []
    return sorted(str(e["ifname"]) for e in entries if str(e.get("ifname", "")).startswith(prefix))


def remove_network(namespace_prefix: str, link_prefix: str) -> list[str]:
    """Delete every namespace and host link with these prefixes; returns what was removed."""
    removed = []
    for ns in existing_namespaces(namespace_prefix):
        with contextlib.suppress(TestbedCommandError):
            run_tool(["ip", "netns", "del", ns])
            removed.append(f"netns {ns}")
    for link in existing_links(link_prefix):  # a veth goes with its namespaced peer; the bridge
        with contextlib.suppress(TestbedCommandError):
            run_tool(["ip", "link", "del", link])
            removed.append(f"link {link}")
    return removed
