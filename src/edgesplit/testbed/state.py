"""The testbed's state file: what `up` created, so that `status` and `down` need no cluster file.

Written before anything is created (a crash part-way leaves a file `down` can follow; names
carry a prefix besides, so `down` also sweeps without it). JSON, `kind: edgesplit.testbed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from edgesplit.core.cluster import Cluster
from edgesplit.core.schema import FrozenModel, VersionedFile, read_json_file, write_json_file

__all__ = [
    "DEFAULT_STATE_DIR",
    "LatencyMode",
    "TestbedDevice",
    "TestbedLink",
    "TestbedState",
    "load_state",
    "save_state",
    "state_path",
    "token_path",
]

DEFAULT_STATE_DIR = Path("/run/edgesplit/testbed")
# How propagation delay reaches the data: `netem` on the wire where the kernel has it, else the
# runtime's sender-side delay (this kernel: CONFIG_NET_SCH_NETEM unset).
LatencyMode = Literal["netem", "runtime-sender-delay"]


class TestbedDevice(FrozenModel):
    __test__: ClassVar[bool] = False

    name: str
    namespace: str
    ip: str
    cpu_quota: float | None
    cgroup: str
    host_veth: str
    memory_mb: float


class TestbedLink(FrozenModel):
    """One shaped direction as configured: rate in the kernel, latency by `latency_mode`."""

    __test__: ClassVar[bool] = False

    src: str
    dst: str
    bandwidth_mbps: float
    latency_ms: float


class TestbedState(VersionedFile):
    __test__: ClassVar[bool] = False
    KIND: ClassVar[str] = "edgesplit.testbed"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: str = KIND
    schema_version: int = SCHEMA_VERSION
    name: str
    phase: Literal["starting", "up"]
    cluster_file: str
    cluster: Cluster
    subnet: str
    bridge: str
    head_ip: str
    port: int
    temp_dir: str
    token_path: str
    latency_mode: LatencyMode
    devices: tuple[TestbedDevice, ...]
    links: tuple[TestbedLink, ...]
    created_unix_s: float

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.port}"


def state_path(name: str, state_dir: Path = DEFAULT_STATE_DIR) -> Path:
    return state_dir / f"{name}.json"


def token_path(name: str, state_dir: Path = DEFAULT_STATE_DIR) -> Path:
    return state_dir / f"{name}.token"


def save_state(state: TestbedState, state_dir: Path = DEFAULT_STATE_DIR) -> Path:
    return write_json_file(state, state_path(state.name, state_dir))


def load_state(name: str, state_dir: Path = DEFAULT_STATE_DIR) -> TestbedState | None:
    path = state_path(name, state_dir)
    if not path.is_file():
        return None
    return read_json_file(TestbedState, path)
