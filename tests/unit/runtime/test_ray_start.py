"""`cluster_up_command`: the one `ray start` command line (real machines and testbed nodes),
and joining a running cluster (`join_cluster`: its address and its errors)."""

from __future__ import annotations

import json

import pytest

from edgesplit.errors import ConfigError, DeviceUnavailableError
from edgesplit.runtime import cluster as cluster_module
from edgesplit.runtime.cluster import check_address, cluster_up_command, join_cluster
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


@pytest.mark.parametrize(
    ("head", "address", "port", "match"),
    [
        (True, "1.2.3.4:6379", 6379, "give one of them"),
        (False, "192.168.1.10:abc", 6379, "HEAD_IP:PORT .*'192.168.1.10:abc'"),
        (False, "192.168.1.10", 6379, "HEAD_IP:PORT"),
        (False, ":6379", 6379, "HEAD_IP:PORT"),
        (False, "10.0.0.1:70000", 6379, "HEAD_IP:PORT"),
        (True, None, 99999, "--port must be 1..65535, got 99999"),
    ],
)
def test_contradictory_or_malformed_input_is_refused(
    head: bool, address: str | None, port: int, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        cluster_up_command(head=head, address=address, devices=["pi0"], port=port)


def test_check_address_accepts_what_ray_accepts() -> None:
    assert check_address("192.168.1.10:6379") == ("192.168.1.10", 6379)
    assert check_address("ray://head:10001") == ("head", 10001)
    assert check_address("[::1]:6379") == ("::1", 6379)
    assert check_address("auto") is None
    assert check_address("local") is None


def test_a_head_that_wants_a_token_is_named_with_what_to_export(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray's own words (its constant) mean a head is there, not that none is."""
    from ray._private.authentication import authentication_constants

    ray_words = authentication_constants.TOKEN_AUTH_ENABLED_BUT_NO_TOKEN_FOUND_ERROR_MESSAGE

    def refuse(**_: object) -> None:
        raise ConnectionError(f"{ray_words}. Ensure that the token ...")

    monkeypatch.setattr(cluster_module.ray, "init", refuse)
    monkeypatch.setattr(cluster_module, "check_reachable", lambda address: None)
    with pytest.raises(DeviceUnavailableError, match="wants its token .*RAY_AUTH_TOKEN") as e:
        join_cluster("10.0.0.1:6379")
    assert "no Ray cluster" not in str(e.value)


def test_no_cluster_message_has_rays_first_line_without_a_stray_full_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(**_: object) -> None:
        raise ConnectionError("Could not find any running Ray instance. Set RAY_ADDRESS.\nmore")

    monkeypatch.setattr(cluster_module.ray, "init", refuse)
    with pytest.raises(DeviceUnavailableError) as e:
        join_cluster("auto")
    message = str(e.value)
    assert message.startswith("no Ray cluster at this machine (auto): Could not find any")
    assert "RAY_ADDRESS;" in message
    assert ".;" not in message
    assert "more" not in message
