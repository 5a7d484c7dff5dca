"""`up`, `status` and `down` of a testbed: every device of a cluster file a real Ray node.

`up` creates the network (network.py), a CPU cgroup per device with its quota (cgroups.py), a
Ray head on the bridge's address (where the driver runs) and one `ray start` per device inside
its namespace and cgroup, token auth on; it waits until every device's resource is visible.
`down` kills every process of the testbed's cgroups and namespaces, deletes namespaces, links,
cgroups, the Ray temp dir and the state, and works from the name prefix alone after a crash.
Ray is reached through runtime/cluster.py only: the join check, and `cluster_up_command`, the one
`ray start` command line (the runtime's health checks and worker niceness on the head).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgesplit.core.cluster import Cluster, load_cluster
from edgesplit.errors import ConfigError, DeviceUnavailableError
from edgesplit.testbed import cgroups, network
from edgesplit.testbed.layout import TestbedLayout, plan_layout
from edgesplit.testbed.state import (
    DEFAULT_STATE_DIR,
    TestbedDevice,
    TestbedLink,
    TestbedState,
    load_state,
    save_state,
    state_path,
    token_path,
)
from edgesplit.testbed.system import CPU_CGROUP_MOUNT, TestbedCommandError, check_host, run_tool

__all__ = ["DeviceStatus", "TestbedStatus", "down", "ray_env", "restart_node", "status", "up"]

logger = logging.getLogger(__name__)
_OBJECT_STORE_BYTES = 80 * 1024 * 1024  # Ray's minimum is 75 MiB; 16 nodes fit in 1.3 GB of shm
Progress = Callable[[str], None]
_START_ATTEMPTS = 3
_PARALLEL_STARTS = 2  # concurrent `ray start`s: each needs its raylet registered within 30 s


def _free_port(ip: str) -> int:
    with socket.socket() as sock:
        sock.bind((ip, 0))
        return int(sock.getsockname()[1])


def ray_env(token: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every testbed Ray process: token auth, no usage stats, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        # A worker starting under a 0.1-core quota imports for tens of seconds.
        RAY_worker_register_timeout_seconds="600",
    )
    env.update(extra or {})
    return env


def _start_ray(
    command: list[str], env: dict[str, str], cgroup: str, log: Path, timeout_s: float
) -> None:
    """Run one `ray start` in `cgroup` (joined in the child before exec, from the host side)."""

    def enter_cgroup() -> None:
        cgroups.join_group(cgroup)

    with log.open("ab") as out:
        try:
            done = subprocess.run(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=enter_cgroup,
                start_new_session=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise DeviceUnavailableError(
                f"`ray start` did not return within {timeout_s:g} s (log: {log})"
            ) from e
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise DeviceUnavailableError(f"`{' '.join(command[:3])}` failed; {log}:\n{tail}")


_ALIVE_PROBE = (
    "import json, sys\n"
    "from edgesplit.runtime.cluster import ray_status\n"
    "print(json.dumps(ray_status(sys.argv[1])))\n"
)


def _alive_devices(address: str, token: str) -> set[str]:
    """Devices with a live node, asked from a fresh interpreter.

    Ray reads its auth mode and token once per process, when first imported: a caller that has
    already used Ray (a test session, a notebook) could not authenticate with this testbed's
    token in-process, so the probe runs in its own process. An unreachable head -> empty set.
    """
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _ALIVE_PROBE, address],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return set()
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return set()
    nodes = json.loads(lines[-1])["nodes"]
    return {d for n in nodes if n["alive"] for d in n["devices"]}


def _wait_for_devices(address: str, token: str, devices: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        alive = _alive_devices(address, token)
        missing = [d for d in devices if d not in alive]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise DeviceUnavailableError(
                f"devices {missing} did not join the testbed's Ray cluster within "
                f"{timeout_s:g} s; see the logs under the testbed's temp dir"
            )
        time.sleep(1.0)


def _state(
    layout: TestbedLayout, cluster: Cluster, cluster_file: Path, port: int, token_file: Path
) -> TestbedState:
    return TestbedState(
        name=layout.name,
        phase="starting",
        cluster_file=str(cluster_file),
        cluster=cluster,
        subnet=layout.subnet,
        bridge=layout.bridge,
        head_ip=layout.head_ip,
        port=port,
        temp_dir=layout.ray_temp_dir,
        token_path=str(token_file),
        latency_mode="runtime-sender-delay",
        devices=tuple(
            TestbedDevice(
                name=n.device,
                namespace=n.namespace,
                ip=n.ip,
                cpu_quota=n.cpu_quota,
                cgroup=n.cgroup,
                host_veth=n.host_veth,
                memory_mb=n.memory_mb,
            )
            for n in layout.nodes
        ),
        links=tuple(
            TestbedLink(
                src=c.src,
                dst=c.dst,
                bandwidth_mbps=c.rate_bytes_per_s * 8 / 1e6,
                latency_ms=c.latency_s * 1e3,
            )
            for c in layout.classes
        ),
        created_unix_s=time.time(),
    )


def _check_free(layout: TestbedLayout, state_dir: Path) -> None:
    leftovers = network.existing_namespaces(layout.namespace_prefix) + network.existing_links(
        layout.prefix
    )
    if state_path(layout.name, state_dir).exists() or leftovers:
        raise ConfigError(
            f"testbed '{layout.name}' is already up or left over ({leftovers or 'state file'}); "
            f"run `edgesplit testbed down --name {layout.name}` first"
        )
    routes = run_tool(["ip", "-j", "route", "show", "table", "main"], check=False).stdout
    taken = [r.get("dst") for r in json.loads(routes or "[]") if r.get("dst") == layout.subnet]
    if taken:
        raise ConfigError(
            f"subnet {layout.subnet} is already routed on this host; pass --subnet with another "
            "private /24"
        )


def up(
    cluster_file: Path,
    *,
    name: str = "tb",
    subnet: str | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
    timeout_s: float = 300.0,
    cpu_shares: int = 1024,
    cfs_period_us: int = cgroups.CFS_PERIOD_US,
    progress: Progress | None = None,
) -> TestbedState:
    """Stand the cluster up (see the module docstring); on any failure, tear down what was made.

    `cpu_shares` is the CFS weight of the whole testbed against the host's other processes
    (each weighs 1024); raise it on a busy host so that every device gets its full quota.
    `cfs_period_us` is the quota's period: a throttled device stalls for up to
    period x (1 - quota) at a time, so a shorter period (20 ms) makes it smoother.

    Raises:
        ConfigError: not root, a tool or the cpu cgroup controller missing, a bad cluster file,
            or a testbed of that name already up.
        DeviceUnavailableError: a Ray node did not start or join within `timeout_s`.
    """
    say = progress or (lambda _message: None)
    check_host()
    cluster = load_cluster(cluster_file)
    layout = plan_layout(cluster, name, subnet)
    _check_free(layout, state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    token_file = token_path(name, state_dir)
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    port = 0
    state = _state(layout, cluster, cluster_file.resolve(), port, token_file)
    save_state(state, state_dir)  # first: a crash from here on leaves something `down` follows
    try:
        say(f"network: bridge {layout.bridge} {layout.subnet}, {len(layout.nodes)} namespaces")
        network.build_network(layout)
        port = _free_port(layout.head_ip)
        state = state.model_copy(update={"port": port})
        save_state(state, state_dir)
        # [Note: shares] A quota caps a device; on a host busy with other work it may get less
        # than its quota. A higher CFS weight for the testbed's tree makes the quotas, which sum
        # to what the host can spare, the binding limit (1024 = an ordinary process).
        cgroups.create_group(layout.cgroup_root, None, cpu_shares=cpu_shares)
        cgroups.create_group(layout.head_cgroup, None)
        for node in layout.nodes:
            # [Note: quota after join] Nodes start without a quota: `ray start` gives a raylet
            # 30 s to register (hard-coded), which a 0.1-core node cannot meet. The quota is
            # set once every node has joined, before any stage or survey work runs.
            cgroups.create_group(node.cgroup, None, period_us=cfs_period_us)
        temp_dir = Path(state.temp_dir)
        temp_dir.mkdir(parents=True, exist_ok=True)
        say(f"ray head on {state.address}")
        from edgesplit.runtime.cluster import cluster_up_command  # imports ray: not at start-up

        head_command = cluster_up_command(
            head=True,
            address=None,
            devices=(),
            port=port,
            node_ip=layout.head_ip,
            num_cpus=0,
            object_store_bytes=_OBJECT_STORE_BYTES,
            temp_dir=str(temp_dir),
            service_ports=[_free_port(layout.head_ip) for _ in range(5)],
        )
        _start_ray(
            head_command,
            ray_env(token),
            layout.head_cgroup,
            temp_dir / "testbed-head.log",
            timeout_s,
        )
        errors: list[BaseException] = []
        starting = threading.Semaphore(_PARALLEL_STARTS)

        def start_node(index: int) -> None:
            try:
                _start_node(state, index, token, timeout_s, starting)
            except BaseException as e:  # reported after every thread is done
                errors.append(e)

        say(f"starting {len(layout.nodes)} device nodes (each in its namespace and cgroup)")
        threads = [
            threading.Thread(target=start_node, args=(i,), daemon=True)
            for i in range(len(layout.nodes))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout_s + 30)
        if errors:
            raise errors[0]
        say("waiting for every device to join")
        _wait_for_devices(state.address, token, [n.device for n in layout.nodes], timeout_s)
        for node in layout.nodes:
            cgroups.set_quota(node.cgroup, node.cpu_quota, period_us=cfs_period_us)
        state = state.model_copy(update={"phase": "up"})
        save_state(state, state_dir)
        return state
    except BaseException:
        with contextlib.suppress(Exception):
            down(name, state_dir=state_dir)
        raise


def _start_node(
    state: TestbedState,
    index: int,
    token: str,
    timeout_s: float,
    gate: threading.Semaphore | None = None,
) -> None:
    """`ray start` device `index` in its namespace and cgroup; retried, see [Note: quota after
    join]. Raises DeviceUnavailableError after the last attempt."""
    from edgesplit.runtime.cluster import cluster_up_command

    node = state.devices[index]
    temp_dir = Path(state.temp_dir)
    command = [
        "ip",
        "netns",
        "exec",
        node.namespace,
        *cluster_up_command(
            head=False,
            address=state.address,
            devices=[node.name],
            node_ip=node.ip,
            object_store_bytes=_OBJECT_STORE_BYTES,
            temp_dir=str(temp_dir / f"node{index}"),
        ),
    ]
    env = ray_env(
        token,
        {"EDGESPLIT_DEVICE": node.name, "EDGESPLIT_DEVICE_MEMORY_MB": f"{node.memory_mb:g}"},
    )
    log = temp_dir / f"testbed-node{index}.log"
    for attempt in range(1, _START_ATTEMPTS + 1):
        try:
            with gate or contextlib.nullcontext():
                _start_ray(command, env, node.cgroup, log, timeout_s)
            return
        except DeviceUnavailableError as e:
            # `ray start` gives a raylet 30 s (hard-coded) to register; on a loaded host that
            # can fail. Clear the node's cgroup and try again.
            logger.warning("node %s, attempt %d: %s", node.name, attempt, e)
            with contextlib.suppress(TestbedCommandError):
                cgroups.empty_group(CPU_CGROUP_MOUNT / node.cgroup)
            if attempt == _START_ATTEMPTS:
                raise


def restart_node(
    name: str,
    device: str,
    state_dir: Path = DEFAULT_STATE_DIR,
    timeout_s: float = 300.0,
    cfs_period_us: int = cgroups.CFS_PERIOD_US,
) -> None:
    """Kill whatever is left of `device`'s node (crashed, hung, cut off) and start it again:
    a device rejoining the cluster. Its link is brought up if it was down.

    Raises:
        ConfigError: no such testbed or device.
        DeviceUnavailableError: the node did not rejoin within `timeout_s`.
    """
    state = load_state(name, state_dir)
    if state is None:
        raise ConfigError(f"no testbed '{name}' is up")
    index = next((i for i, d in enumerate(state.devices) if d.name == device), None)
    if index is None:
        raise ConfigError(
            f"testbed '{name}' has no device '{device}'; devices: {[d.name for d in state.devices]}"
        )
    node = state.devices[index]
    run_tool(["ip", "link", "set", node.host_veth, "up"])
    group = CPU_CGROUP_MOUNT / node.cgroup
    cgroups.empty_group(group)
    cgroups.set_quota(node.cgroup, None, period_us=cfs_period_us)
    token = Path(state.token_path).read_text().strip()
    _start_node(state, index, token, timeout_s)
    _wait_for_devices(state.address, token, [device], timeout_s)
    cgroups.set_quota(node.cgroup, node.cpu_quota, period_us=cfs_period_us)


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    name: str
    namespace: str
    ip: str
    cpu_quota: float | None
    num_processes: int


@dataclass(frozen=True, slots=True)
class TestbedStatus:
    __test__ = False

    state: TestbedState
    devices: tuple[DeviceStatus, ...]
    head_processes: int

    def as_json(self) -> dict[str, object]:
        """`{address, devices: [{name, namespace, ip, cpu_quota}], ...}` (status --json)."""
        return {
            "name": self.state.name,
            "phase": self.state.phase,
            "address": self.state.address,
            "token_path": self.state.token_path,
            "latency_mode": self.state.latency_mode,
            "cluster_file": self.state.cluster_file,
            "head_processes": self.head_processes,
            "devices": [
                {
                    "name": d.name,
                    "namespace": d.namespace,
                    "ip": d.ip,
                    "cpu_quota": d.cpu_quota,
                    "processes": d.num_processes,
                }
                for d in self.devices
            ],
            "links": [link.model_dump() for link in self.state.links],
        }


def status(name: str = "tb", state_dir: Path = DEFAULT_STATE_DIR) -> TestbedStatus:
    """What `up` recorded, with the number of live processes in each device's cgroup.

    Raises:
        ConfigError: no testbed of that name is up.
    """
    state = load_state(name, state_dir)
    if state is None:
        raise ConfigError(
            f"no testbed '{name}' (no {state_path(name, state_dir)}); start one with "
            "`edgesplit testbed up cluster.toml`"
        )
    devices = tuple(
        DeviceStatus(
            name=d.name,
            namespace=d.namespace,
            ip=d.ip,
            cpu_quota=d.cpu_quota,
            num_processes=len(cgroups.group_pids(CPU_CGROUP_MOUNT / d.cgroup)),
        )
        for d in state.devices
    )
    head = len(cgroups.group_pids(CPU_CGROUP_MOUNT / f"edgesplit-testbed-{name}" / "head"))
    return TestbedStatus(state=state, devices=devices, head_processes=head)


def _kill_namespace_processes(namespace: str) -> None:
    done = run_tool(["ip", "netns", "pids", namespace], check=False)
    for pid in done.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def down(name: str = "tb", state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Remove every trace of testbed `name`; works without the state file. Returns what went.

    Order: processes (cgroups, then anything left in the namespaces), namespaces and links,
    cgroups, the Ray temp dir, the state and token files.
    """
    check_host()
    state = None
    with contextlib.suppress(ConfigError):
        state = load_state(name, state_dir)
    removed: list[str] = []
    root = CPU_CGROUP_MOUNT / f"edgesplit-testbed-{name}"
    if root.is_dir():
        cgroups.remove_tree(root)
        removed.append(f"cgroup {root}")
    for namespace in network.existing_namespaces(f"es-{name}-"):
        _kill_namespace_processes(namespace)
    try:
        removed += network.remove_network(f"es-{name}-", f"es{name}")
    except TestbedCommandError as e:
        logger.warning("removing the network of testbed %s: %s", name, e)
    temp_dir = Path(state.temp_dir if state else f"/tmp/es-{name}")
    if temp_dir.exists():
        shutil.rmtree(temp_dir, ignore_errors=True)
        removed.append(f"dir {temp_dir}")
    for path in (state_path(name, state_dir), token_path(name, state_dir)):
        if path.exists():
            path.unlink()
            removed.append(f"file {path}")
    return removed
