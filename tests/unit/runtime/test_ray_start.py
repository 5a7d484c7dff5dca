"""`cluster_up_command`: the one `ray start` command line (real machines and testbed nodes)."""

from __future__ import annotations

import json

import pytest

from edgesplit.errors import ConfigError
from edgesplit.runtime.cluster import cluster_up_command
from edgesplit.runtime.config import RuntimeConfig


def _value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_head_carries_the_runtime_system_config_and_pinned_service_ports() -> None:
    config = RuntimeConfig()
    command = cluster_up_command(
        head=True,
        address=None,
        devices=(),
        port=6400,
        node_ip="10.99.0.1",
        num_cpus=0,
        object_store_bytes=80 << 20,
        temp_dir="/tmp/tb",
        service_ports=[11, 12, 13, 14, 15],
    )
    assert command[1:3] == ["start", "--num-cpus"]
    assert _value(command, "--num-cpus") == "0"
    system = json.loads(_value(command, "--system-config"))
    assert system["worker_niceness"] == config.worker_niceness == 0
    assert system["health_check_period_ms"] == config.health_check_period_ms
    assert _value(command, "--port") == "6400"
    assert _value(command, "--node-ip-address") == "10.99.0.1"
    assert _value(command, "--object-store-memory") == str(80 << 20)
    assert _value(command, "--temp-dir") == "/tmp/tb"
    assert _value(command, "--dashboard-agent-listen-port") == "11"
    assert _value(command, "--ray-client-server-port") == "15"
    assert "--resources" not in command
    assert "--address" not in command


def test_device_node_joins_with_one_resource_per_device() -> None:
    command = cluster_up_command(head=False, address="10.99.0.1:6400", devices=["cam", "pi"])
    assert json.loads(_value(command, "--resources")) == {"cam": 1, "pi": 1}
    assert _value(command, "--address") == "10.99.0.1:6400"
    assert "--head" not in command
    assert "--system-config" not in command
    assert "--dashboard-agent-listen-port" not in command


def test_device_node_without_head_address_is_refused() -> None:
    with pytest.raises(ConfigError, match="--address HEAD_IP:PORT"):
        cluster_up_command(head=False, address=None, devices=["cam"])
