"""Testbed layout, shaping commands, quotas, sender delays and the state file: pure checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults, LinkSpec
from edgesplit.errors import ConfigError
from edgesplit.testbed import cgroups, plan_layout
from edgesplit.testbed.latency import planning_cluster
from edgesplit.testbed.layout import DRIVER, default_subnet
from edgesplit.testbed.network import class_commands
from edgesplit.testbed.state import TestbedDevice, TestbedState, load_state, save_state


def _cluster() -> Cluster:
    return Cluster(
        source="cam",
        defaults=LinkDefaults(bandwidth_mbps=100, latency_ms=5),
        devices=(
            DeviceSpec(name="cam", kind="k", memory_mb=512, cpu_quota=0.1),
            DeviceSpec(name="pi", kind="k", memory_mb=1024, cpu_quota=0.15),
            DeviceSpec(name="pc", kind="k", memory_mb=4096),
        ),
        links=(LinkSpec(a="cam", b="pc", bandwidth_mbps=20, latency_ms=20, one_way=True),),
    )


def test_layout_names_addresses_and_cgroups() -> None:
    layout = plan_layout(_cluster(), "t1", "10.99.1.0/24")
    assert layout.head_ip == "10.99.1.1"
    assert [n.ip for n in layout.nodes] == ["10.99.1.2", "10.99.1.3", "10.99.1.4"]
    assert [n.namespace for n in layout.nodes] == ["es-t1-0", "es-t1-1", "es-t1-2"]
    assert all(len(n.host_veth) <= 15 and len(n.peer_veth) <= 15 for n in layout.nodes)
    assert layout.bridge == "est1br"
    assert [n.cpu_quota for n in layout.nodes] == [0.1, 0.15, None]
    assert {n.cgroup.split("/")[0] for n in layout.nodes} == {"edgesplit-testbed-t1"}


def test_every_direction_is_a_class_with_its_pair_rate() -> None:
    layout = plan_layout(_cluster(), "t1", "10.99.1.0/24")
    rates = {(c.src, c.dst): c.rate_bytes_per_s * 8 / 1e6 for c in layout.classes}
    assert rates[("cam", "pc")] == pytest.approx(20)  # the one-way override
    assert rates[("pc", "cam")] == pytest.approx(100)  # ... not the way back
    assert rates[("pi", "pc")] == pytest.approx(100)
    # The driver stands in for the source: it sends as cam does, and nothing to cam itself.
    assert rates[(DRIVER, "pc")] == pytest.approx(20)
    assert (DRIVER, "cam") not in rates
    # Answers reach the driver over each device's link to the source.
    assert rates[("pc", DRIVER)] == pytest.approx(100)
    assert ("cam", DRIVER) not in rates
    assert len(layout.classes) == 3 * 2 + 2 + 2


def test_class_commands_filter_each_destination_into_its_class() -> None:
    layout = plan_layout(_cluster(), "t1", "10.99.1.0/24")
    commands = [" ".join(c) for c in class_commands("eth0", layout.classes_from("cam"))]
    assert commands[0].startswith("tc qdisc replace dev eth0 root handle 1: htb default 1")
    assert any("rate 20000000bit ceil 20000000bit" in c for c in commands)
    assert any("match ip dst 10.99.1.4/32 flowid 1:b" in c for c in commands)
    assert sum(c.startswith("tc filter") for c in commands) == 2


@pytest.mark.parametrize(
    ("name", "subnet"),
    [("Bad", None), ("toolong", None), ("ok", "8.8.8.0/24"), ("ok", "nonsense")],
)
def test_bad_names_and_subnets_are_config_errors(name: str, subnet: str | None) -> None:
    with pytest.raises(ConfigError):
        plan_layout(_cluster(), name, subnet)


def test_default_subnet_is_private_and_stable() -> None:
    assert default_subnet("tb") == default_subnet("tb")
    assert default_subnet("tb").startswith("10.213.")


def test_quota_is_a_fraction_of_the_period() -> None:
    assert cgroups.quota_us(0.1) == 10_000
    assert cgroups.quota_us(None) == -1
    assert cgroups.quota_us(0.001) == 1000  # the kernel's minimum


def test_planning_cluster_adds_the_sender_delay_to_measured_links() -> None:
    surveyed = Cluster(
        source="cam",
        devices=tuple(
            DeviceSpec(name=n, kind=f"measured-{n}", memory_mb=1) for n in ("cam", "pi", "pc")
        ),
        defaults=LinkDefaults(bandwidth_mbps=95, latency_ms=0.05),
    )
    planned = planning_cluster(surveyed, _cluster())
    assert planned.link("cam", "pc")[0] * 8 / 1e6 == pytest.approx(95)
    assert planned.link("cam", "pc")[1] == pytest.approx(0.020 + 0.00005)
    assert planned.link("pc", "cam")[1] == pytest.approx(0.005 + 0.00005)
    assert planned.device("pi").kind == "measured-pi"  # the survey's kinds, for the profile


def test_cpu_quota_is_optional_and_leaves_old_hashes_alone() -> None:
    plain = DeviceSpec(name="a", kind="k", memory_mb=1)
    assert "cpu_quota" not in plain.model_dump()
    assert (
        DeviceSpec(name="a", kind="k", memory_mb=1, cpu_quota=0.2).model_dump()["cpu_quota"] == 0.2
    )
    with pytest.raises(ValueError, match="cpu_quota"):
        DeviceSpec(name="a", kind="k", memory_mb=1, cpu_quota=0)


def test_state_file_round_trip(tmp_path: Path) -> None:
    state = TestbedState(
        name="t1",
        phase="up",
        cluster_file="x.toml",
        cluster=_cluster(),
        subnet="10.99.1.0/24",
        bridge="est1br",
        head_ip="10.99.1.1",
        port=6379,
        temp_dir="/tmp/es-t1",
        token_path=str(tmp_path / "t1.token"),
        latency_mode="runtime-sender-delay",
        devices=(
            TestbedDevice(
                name="cam",
                namespace="es-t1-0",
                ip="10.99.1.2",
                cpu_quota=0.1,
                cgroup="edgesplit-testbed-t1/node0",
                host_veth="est1h0",
                memory_mb=512,
            ),
        ),
        links=(),
        created_unix_s=0.0,
    )
    save_state(state, tmp_path)
    assert load_state("t1", tmp_path) == state
    assert load_state("other", tmp_path) is None
    assert state.address == "10.99.1.1:6379"
