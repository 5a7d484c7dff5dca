"""The one place that imports ray: connect or start Ray, match devices to nodes, stage actors.

Owns `RaySession` (embedded `ray.init()` locally, or an existing cluster with RAY_AUTH_MODE=token),
device-to-node matching by a custom resource named after the device, the `StageWorker` actor
wrapper (`num_cpus=0`, threaded so that pings work while a stage computes), death signals, kills,
and the `ray start` command lines of `edgesplit cluster up/down`. Everything else in runtime gets
ray through this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from edgesplit.errors import ConfigError, DeviceUnavailableError
from edgesplit.runtime.config import RuntimeConfig
from edgesplit.runtime.stage import StageWorker

__all__ = [
    "ActorDiedError",
    "EmulatedCluster",
    "RaySession",
    "StageActor",
    "check_address",
    "check_reachable",
    "cluster_down_command",
    "cluster_up_command",
    "expect_exit",
    "health_check_config",
    "join_cluster",
    "ray_binary",
    "ray_status",
    "remote_class",
    "run_ray_command",
]

logger = logging.getLogger(__name__)
# Resource names Ray reserves; a device named like this cannot be matched by resource.
_RESERVED = {"CPU", "GPU", "memory", "object_store_memory", "TPU"}
# Stage processes this driver killed or faulted on purpose: Ray's "A worker died … OOM killer"
# notice about them is noise in a drill (our failover log already says what happened).
_EXPECTED_EXITS: set[int] = set()
_WORKER_PID = re.compile(r"Worker PID: (\d+)")
# Warns, when RAY_AUTH_MODE is unset, that the embedded cluster uses token auth (it should).
_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class ActorDiedError(Exception):
    """A stage actor (or its node) is gone."""


def health_check_config(config: RuntimeConfig) -> dict[str, int]:
    """Ray system config: node health checks in seconds (defaults: ~14 s crashed, 64 s hung),
    and stage processes at normal priority.

    Ray starts worker processes at niceness 15 so that they never starve its own daemons; a
    stage actor *is* the device's workload, and on a busy host nice 15 starved it: one more
    0.6 MB hop cost 1.6-4.7 ms against 0.1 ms for a plain relay process (docs/runtime.md).
    """
    return {
        "health_check_period_ms": config.health_check_period_ms,
        "health_check_timeout_ms": config.health_check_timeout_ms,
        "health_check_failure_threshold": config.health_check_failure_threshold,
        "worker_niceness": config.worker_niceness,
    }


class _RayStage(StageWorker):
    """StageWorker that binds its streams to its own node's IP (multi-machine clusters)."""

    def __init__(self, device: str, host: str | None) -> None:
        super().__init__(device, host or ray.util.get_node_ip_address())

    def info(self) -> dict[str, Any]:
        data = super().info()
        data["node_id"] = ray.get_runtime_context().get_node_id()
        return data


_RemoteStage: Any = ray.remote(_RayStage)


def remote_class(cls: type) -> Any:
    """`ray.remote(cls)` for other runtime modules, which never import ray themselves."""
    return ray.remote(cls)


@dataclass
class StageActor:
    """A live stage actor, the call that fails when it dies, and what it told us about itself."""

    device: str
    handle: Any
    serve_ref: Any
    info: dict[str, Any] = field(default_factory=dict)

    def call(self, method: str, *args: Any) -> Any:
        """Start `method(*args)` on the actor; returns a reference for `RaySession.get`."""
        return getattr(self.handle, method).remote(*args)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence logger `name` below ERROR for the block (Ray's advice we have already followed)."""
    quieted = logging.getLogger(name)
    saved = quieted.level
    quieted.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quieted.setLevel(saved)


@contextlib.contextmanager
def _loopback_only(host: str) -> Iterator[None]:
    """Keep an embedded Ray's servers on loopback while it starts (a no-op for other hosts).

    Ray 2.60 rewrites a 127.0.0.1 node address to the host's own IP and then binds its GCS,
    raylet, worker and agent servers to all interfaces; only its single-machine mode
    (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read by this process as a module constant and by the
    processes ray.init starts from the environment) keeps every one of them on 127.0.0.1
    (measured with `ss -ltnp`: docs/runtime.md). Both are restored once Ray runs.
    """
    if not host.startswith("127."):
        yield
        return
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_env


def _route_ray_notices() -> None:
    """Send Ray's driver-side notices to our log (stderr), minus deaths we caused on purpose.

    Ray's error listener prints raylet notices to stdout, into a token stream or a table; it
    looks `print_to_stdstream` up in `ray._private.worker` at each call, so wrapping that name
    reroutes them (a Ray without it keeps its own printing).
    """
    from ray._private import worker as ray_worker

    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "edgesplit_routed", False):
        return

    def routed(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            printer(data, ignore_prefix)
            return
        for line in data.get("lines", []):
            pid = _WORKER_PID.search(line)
            if pid and int(pid.group(1)) in _EXPECTED_EXITS:
                logger.debug("ray notice on a stage ended on purpose: %s", line)
            else:
                logger.warning("ray: %s", line)

    routed.edgesplit_routed = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = routed


def expect_exit(info: dict[str, Any]) -> None:
    """The stage process `info` describes is about to end on purpose (a fault, a replacement)."""
    if "pid" in info:
        _EXPECTED_EXITS.add(int(info["pid"]))


@dataclass
class RaySession:
    """Ray for one run: started here (and shut down at the end) or already running."""

    config: RuntimeConfig
    started_here: bool = False
    use_resources: bool = False

    @classmethod
    def open(cls, config: RuntimeConfig, devices: Sequence[str]) -> RaySession:
        started_here = False
        if not ray.is_initialized():
            if config.ray_address:
                join_cluster(config.ray_address)
            else:
                # Embedded cluster: Ray turns token auth on by default for a local ray.init();
                # give it a per-process token so that it never writes one under $HOME.
                if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
                    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
                with _loopback_only(config.host), _quiet(_RAY_AUTH_LOGGER):
                    ray.init(
                        address="local",  # never attach to a cluster another process left
                        num_cpus=max(1, min(4, os.cpu_count() or 1)),
                        include_dashboard=False,
                        log_to_driver=False,
                        _node_ip_address=config.host,
                        _system_config=health_check_config(config),
                    )
            started_here = True
        _route_ray_notices()
        resources = ray.cluster_resources()
        if config.placement == "local":
            use_resources = False
        elif config.placement == "resource" or config.ray_address:
            use_resources = True
        else:
            use_resources = any(d in resources for d in devices)
        session = cls(config=config, started_here=started_here, use_resources=use_resources)
        session.check_devices(devices)
        return session

    def check_devices(self, devices: Sequence[str]) -> None:
        """Every device must have a live Ray node carrying its resource (resource placement)."""
        if not self.use_resources:
            return
        reserved = sorted(d for d in devices if d in _RESERVED)
        if reserved:
            raise ConfigError(f"device names {reserved} clash with Ray's resources; rename them")
        available = ray.available_resources() | ray.cluster_resources()
        missing = [d for d in devices if d not in available]
        if missing:
            raise DeviceUnavailableError(
                f"no Ray node carries the resource of device(s) {missing}; start one per device "
                f"with `edgesplit cluster up --address HEAD:6379 --device NAME` (nodes have "
                f"{sorted(k for k in available if k not in _RESERVED and ':' not in k)})"
            )

    def driver_host(self) -> str:
        """Address stages can reach the driver at: loopback unless Ray spans machines."""
        if self.config.ray_address and self.config.host.startswith("127."):
            return str(ray.util.get_node_ip_address())
        return self.config.host

    def driver_node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    def num_nodes(self) -> int:
        return sum(1 for n in ray.nodes() if n.get("Alive"))

    def start_actor(self, device: str) -> StageActor:
        # num_cpus=0: a stage never blocks Ray's scheduler; threads are set per stage (torch).
        options: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 16, "max_restarts": 0}
        if self.use_resources:
            options["resources"] = {device: 0.01}
        host = None if self.use_resources else self.config.host
        handle = _RemoteStage.options(**options).remote(device, host)
        return StageActor(device=device, handle=handle, serve_ref=handle.serve.remote())

    def get(self, refs: Any, timeout_s: float) -> Any:
        """ray.get with a timeout; ActorDiedError when the actor is gone, TimeoutError when slow."""
        try:
            return ray.get(refs, timeout=timeout_s)
        except RayActorError as e:
            raise ActorDiedError(str(e)) from e
        except GetTimeoutError as e:
            raise TimeoutError(str(e)) from e

    def dead_actors(self, actors: Sequence[StageActor], timeout_s: float) -> list[StageActor]:
        """Actors whose `serve` call has ended (a live stage never returns from it)."""
        by_ref = {a.serve_ref: a for a in actors}
        return [by_ref[r] for r in self.poll(list(by_ref), timeout_s)]

    def poll(self, refs: Sequence[Any], timeout_s: float) -> list[Any]:
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        return list(ready)

    def result(self, ref: Any) -> tuple[bool, Any]:
        """(ok, value-or-error) of a finished reference."""
        try:
            return True, ray.get(ref, timeout=0)
        except RayError as e:
            return False, e

    def kill(self, actor: StageActor) -> None:
        expect_exit(actor.info)
        try:
            ray.kill(actor.handle, no_restart=True)
        except (RayError, ValueError) as e:
            logger.debug("kill of %s: %s", actor.device, e)

    def close(self) -> None:
        if self.started_here:
            ray.shutdown()


def check_address(address: str) -> tuple[str, int] | None:
    """A head's address as typed (HOST:PORT or ray://HOST:PORT) -> (host, port); None for
    "auto" and "local" (Ray finds the cluster). ConfigError for anything else."""
    if address in ("auto", "local"):
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"a Ray head's address is HEAD_IP:PORT (e.g. 192.168.1.10:6379), got {address!r}"
        )
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not in Ray's minutes-long retry loop, when nothing listens at `address`
    (what the user typed; see `check_address`)."""
    found = check_address(address)
    if found is None:
        return
    host, port = found
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise DeviceUnavailableError(
            f"no Ray cluster at {address}: cannot connect to {host}:{port} "
            f"({e.strerror or type(e).__name__}); start one with `edgesplit cluster up --head` "
            "on the head and pass its HEAD_IP:PORT"
        ) from e


def join_cluster(address: str) -> None:
    """`ray.init` against a running cluster (token auth), with edgesplit's errors: a malformed
    address, nothing listening, a head that wants a token this process lacks."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, RayError) as e:
        text = str(e)
        where = "this machine (auto)" if address == "auto" else address
        if "no authentication token" in text.lower():
            raise DeviceUnavailableError(
                f"the Ray head at {where} wants its token and this process has none: "
                "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat shared-secret) (the token "
                "`cluster up` used; README, 'Running on several machines') and try again"
            ) from e
        detail = text.strip().splitlines()[0].rstrip(".") if text.strip() else type(e).__name__
        raise DeviceUnavailableError(
            f"no Ray cluster at {where}: {detail}; start one with `edgesplit cluster up "
            "--head` or pass --address HEAD_IP:PORT"
        ) from e


def ray_status(address: str | None) -> dict[str, Any]:
    """Nodes and the device resources they carry, for `edgesplit cluster status`."""
    started = False
    if not ray.is_initialized():
        join_cluster(address or "auto")
        started = True
    try:
        nodes = []
        for node in ray.nodes():
            devices = sorted(
                k
                for k in node.get("Resources", {})
                if k not in _RESERVED and not k.startswith("node:") and ":" not in k
            )
            nodes.append(
                {
                    "node_id": node["NodeID"],
                    "ip": node["NodeManagerAddress"],
                    "alive": bool(node["Alive"]),
                    "devices": devices,
                }
            )
        return {"nodes": nodes}
    finally:
        if started:
            ray.shutdown()


def ray_binary() -> str:
    """The environment's own `ray` command (beside this Python, even when not on PATH)."""
    beside = Path(sys.executable).parent / "ray"
    if beside.is_file():
        return str(beside)
    found = shutil.which("ray")
    if found:
        return found
    raise ConfigError("the `ray` command is not on PATH; activate the edgesplit environment")


def cluster_up_command(
    *,
    head: bool,
    address: str | None,
    devices: Sequence[str],
    port: int = 6379,
    node_ip: str | None = None,
    config: RuntimeConfig | None = None,
    num_cpus: int = 1,
    object_store_bytes: int | None = None,
    temp_dir: str | None = None,
    service_ports: Sequence[int] = (),
) -> list[str]:
    """The one `ray start` command line, for a head or a device node (a custom resource per
    device): `edgesplit cluster up` on real machines and every node of a testbed.

    A head carries the runtime's system config (`health_check_config`). `service_ports` pins the
    head's dashboard agent (listen, gRPC), runtime-env agent, metrics export and Ray client
    ports, in that order (a testbed head shares its host with other heads).
    """
    import json

    if not head and not address:
        raise ConfigError(
            "a device node needs --address HEAD_IP:PORT of the head (ray start --head)"
        )
    if head and address:
        raise ConfigError(
            f"--head starts a new cluster and --address {address} joins one; give one of them"
        )
    if address:
        check_address(address)
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {port}")
    command = [ray_binary(), "start", "--num-cpus", str(num_cpus), "--disable-usage-stats"]
    if devices:
        command += ["--resources", json.dumps({d: 1 for d in devices})]
    if node_ip:
        command += ["--node-ip-address", node_ip]
    if object_store_bytes is not None:
        command += ["--object-store-memory", str(object_store_bytes)]
    if temp_dir is not None:
        command += ["--temp-dir", temp_dir]
    if head:
        health = health_check_config(config or RuntimeConfig())
        command += [
            "--head",
            "--port",
            str(port),
            "--include-dashboard",
            "false",
            "--system-config",
            json.dumps(health),
        ]
        flags = (
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
            "--ray-client-server-port",
        )
        for flag, service_port in zip(flags, service_ports, strict=False):
            command += [flag, str(service_port)]
    else:
        command += ["--address", str(address)]
    return command


def cluster_down_command() -> list[str]:
    return [ray_binary(), "stop"]


def run_ray_command(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a `ray start/stop` command with token authentication on."""
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "token")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


class EmulatedCluster:
    """Per-device Ray nodes (one raylet each) on this machine, for failure tests and benchmarks.

    Ray rewrites a loopback bootstrap address to the host's own IP, so these nodes listen on
    that IP (this machine only; nothing leaves it).

    Wraps `ray.cluster_utils.Cluster`: a head node (where the driver attaches) plus one node per
    device carrying that device's custom resource, so that `crash:` kills a real raylet, as on
    real boards (faults themselves go through the stage: `ScheduledFault`).
    """

    def __init__(self, config: RuntimeConfig, head_num_cpus: int = 1) -> None:
        from ray.cluster_utils import Cluster as _RayCluster

        self.config = config
        if ray.is_initialized():  # a connection some earlier caller left open
            ray.shutdown()
        if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
        self._cluster = _RayCluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": head_num_cpus,
                "include_dashboard": False,
                "object_store_memory": 100 * 1024 * 1024,
                "_system_config": health_check_config(config),
            },
        )
        self._nodes: dict[str, Any] = {}
        ray.init(address=self._cluster.address, log_to_driver=False)

    def add_device(self, device: str, object_store_bytes: int = 100 * 1024 * 1024) -> None:
        """Start a raylet for `device` (resource named after it); idempotent."""
        if device in self._nodes:
            return
        self._nodes[device] = self._cluster.add_node(
            num_cpus=0,
            resources={device: 1},
            object_store_memory=object_store_bytes,
        )

    def devices(self) -> list[str]:
        return sorted(self._nodes)

    def crash(self, device: str) -> None:
        """SIGKILL every process of the device's node (raylet, store, its workers)."""
        import signal as _signal

        node = self._nodes.pop(device)
        with contextlib.suppress(ProcessLookupError):  # already crashed (e.g. `crash:DEVICE@S`)
            os.kill(int(node.all_processes["raylet"][0].process.pid), _signal.SIGKILL)
        try:
            self._cluster.remove_node(node, allow_graceful=False)
        except (AssertionError, ValueError, OSError) as e:
            logger.debug("remove_node(%s): %s", device, e)

    def raylet_alive(self, device: str) -> bool:
        node = self._nodes[device]
        return node.all_processes["raylet"][0].process.poll() is None

    def shutdown(self) -> None:
        ray.shutdown()
        self._cluster.shutdown()
