"""A network-level failure: a device's Ray node lives in its own network namespace and its link
is cut mid-stream (`ip link set … down` on the veth). Needs root and `ip netns`; skipped with the
reason otherwise. Uses a private 10.231.x.0/24 veth pair (never leaves this machine) and its own
Ray cluster (head + namespaced node) in subprocesses, so the session's Ray is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY = Path(sys.executable).parent / "ray"
HEALTH = json.dumps(
    {
        "health_check_period_ms": 500,
        "health_check_timeout_ms": 500,
        "health_check_failure_threshold": 3,
    }
)

DRIVER = textwrap.dedent("""
    import json, subprocess, sys, time
    from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
    from edgesplit.core.cost import CostModel
    from edgesplit.core.plan import Plan, PlannerInfo, StagePlacement
    from edgesplit.core.profile import ModelProfile, UnitProfile
    from edgesplit.errors import DeviceUnavailableError
    from edgesplit.runtime import RuntimeConfig, ScheduledFault, run_plan

    address, host, veth, out = sys.argv[1:5]
    units = tuple(UnitProfile(name=f"u{i}", param_bytes=1.0, output_bytes=600_000,
                              time_s={"k": 0.02}) for i in range(6))
    profile = ModelProfile(model="toy", batch_size=1, input_bytes=600_000, units=units)
    cluster = Cluster(source="nh0", defaults=LinkDefaults(bandwidth_mbps=1000, latency_ms=1.0),
                      devices=tuple(DeviceSpec(name=n, kind="k", memory_mb=1000)
                                    for n in ("nh0", "nsdev", "nh1")))

    def plan_for(c, stages):
        st = tuple(StagePlacement(device=d, start=s, end=e) for d, s, e in stages)
        return Plan(model="toy", profile_hash=profile.digest(), cluster_hash=c.digest(),
                    batch_size=1, objective="throughput", planner=PlannerInfo(name="manual"),
                    stages=st, predicted=CostModel(profile, c).predict(st))

    plan = plan_for(cluster, [("nh0", 0, 2), ("nsdev", 2, 4), ("nh1", 4, 6)])
    config = RuntimeConfig(ray_address=address, host=host, placement="resource")
    deadline = time.time() + 120
    while True:  # wait until the namespaced node has joined (it starts after the head)
        try:
            run_plan(plan, cluster, profile, config=config, requests=1)
            break
        except DeviceUnavailableError:
            if time.time() > deadline:
                raise
            time.sleep(1)
    order = []
    cut = lambda info: subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    report = run_plan(plan, cluster, profile, config=config, requests=60,
                      replanner=lambda c: plan_for(c, [("nh0", 0, 3), ("nh1", 3, 6)]),
                      faults=[ScheduledFault("nsdev", 1.5, cut)],
                      on_result=lambda rid, o: order.append(rid))
    data = json.loads(report.model_dump_json())
    data["in_order"] = order == list(range(60))
    open(out, "w").write(json.dumps(data))
""")


def _ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", "netns", "exec", netns, "ip", *args] if netns else ["ip", *args]
    subprocess.run(command, check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (`ip netns`) to put a Ray node in its own namespace")
    tag = str(os.getpid())
    name, host_if, ns_if = f"es-ns{tag}", f"esh{tag}", f"esn{tag}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"the kernel forbids `ip netns add` here: {e.stderr.decode().strip()}")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", "10.231.0.1/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("addr", "add", "10.231.0.2/24", "dev", ns_if, netns=name)
        _ip("link", "set", ns_if, "up", netns=name)
        _ip("link", "set", "lo", "up", netns=name)
        yield name, host_if
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", name)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_if)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cut_link_of_a_namespaced_device_is_detected_and_replanned(
    namespace: tuple[str, str], tmp_path: Path
) -> None:
    name, host_if = namespace
    port = _free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": os.urandom(16).hex(),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ADDRESS": "",
    }
    temp_dir = f"/tmp/esns{os.getpid()}"
    common = ["--block", "--temp-dir", temp_dir]
    head = subprocess.Popen(
        [
            str(RAY),
            "start",
            "--head",
            "--node-ip-address",
            "10.231.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "1",
            "--resources",
            '{"nh0": 1, "nh1": 1}',
            "--include-dashboard",
            "false",
            "--system-config",
            HEALTH,
            *common,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    node = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            name,
            str(RAY),
            "start",
            "--address",
            f"10.231.0.1:{port}",
            "--node-ip-address",
            "10.231.0.2",
            "--num-cpus",
            "0",
            "--resources",
            '{"nsdev": 1}',
            *common,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    (tmp_path / "driver.py").write_text(DRIVER)
    out = tmp_path / "report.json"
    try:
        driver = subprocess.run(
            [
                sys.executable,
                str(tmp_path / "driver.py"),
                f"10.231.0.1:{port}",
                "10.231.0.1",
                host_if,
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        for process in (node, head):  # our own process groups, by id
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in (node, head):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert driver.returncode == 0, driver.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["in_order"]
    assert report["requests"]["completed"] == 60
    assert (report["requests"]["lost"], report["requests"]["duplicated"]) == (0, 0)
    (failure,) = report["failures"]
    assert failure["device"] == "nsdev"
    assert failure["detected_after_s"] < 4.0
    assert [s["device"] for s in failure["new_stages"]] == ["nh0", "nh1"]
