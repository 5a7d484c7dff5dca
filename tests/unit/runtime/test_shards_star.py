"""A width plan's star of shard stages: every device streams back to one sink."""

from __future__ import annotations

import pytest

from edgesplit.runtime.config import RuntimeConfig
from edgesplit.runtime.shards import star_config


@pytest.mark.parametrize("devices", [1, 3, 5, 9])
def test_the_sink_admits_every_shard_device_and_a_replacement(devices: int) -> None:
    # The default cap (4) refused the fifth device of a 5-device plan at start-up.
    config = star_config(RuntimeConfig(compute="emulated", placement="local"), devices)
    assert config.max_connections >= devices + 1


def test_a_larger_configured_cap_is_kept() -> None:
    config = RuntimeConfig(compute="emulated", placement="local", max_connections=32)
    assert star_config(config, 5).max_connections == 32
