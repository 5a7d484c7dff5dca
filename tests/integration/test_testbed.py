"""A 3-device testbed on this host: stand it up, survey it, plan from the survey, run a small
real model through it, and take it down leaving nothing (also without its state file, as after
a crash). Needs root, iproute2, network namespaces and the cgroup v1 cpu controller; skipped
with the reason otherwise. The survey and run happen in a subprocess (Ray reads its auth mode
at import, and the session's own Ray must stay untouched).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgesplit.api import testbed as api_testbed
from edgesplit.errors import ConfigError
from edgesplit.testbed.system import CPU_CGROUP_MOUNT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLUSTER = """
source = "cam"
[defaults]
bandwidth_mbps = 100
latency_ms = 2.0
[[devices]]
name = "cam"
kind = "camera"
memory_mb = 1024
cpu_quota = 0.25
[[devices]]
name = "pi"
kind = "pi"
memory_mb = 1024
cpu_quota = 0.25
[[devices]]
name = "pc"
kind = "pc"
memory_mb = 2048
cpu_quota = 0.5
[[links]]
a = "pi"
b = "pc"
bandwidth_mbps = 20
latency_ms = 5.0
"""

DRIVER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from edgesplit import api
    from edgesplit.api import testbed as api_testbed
    from edgesplit.core.cluster import load_cluster

    address, cluster_file, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    testbed = load_cluster(cluster_file)
    options = api_testbed.survey_options(min_window_s=0.2, link_seconds=0.5,
                                         overhead_window_s=0.5)
    result, cluster_path, profile_path = api_testbed.survey_cluster(
        address, "vit-tiny", out, options=options, source="cam")
    surveyed, profile = api.load_cluster(cluster_path), api.load_profile(profile_path)
    cluster = api_testbed.planning_cluster(surveyed, testbed)
    plan = api.plan(profile, cluster)
    # The kernel shapes the rate; the runtime adds only the latency (no netem here).
    config = api.RuntimeConfig(compute="real", ray_address=address, placement="resource",
                               startup_timeout_s=300, link_shaping="latency")
    outputs = []
    report = api.run(plan, cluster, profile, config=config, requests=16,
                     on_result=lambda i, o: outputs.append(i))
    links = {f"{lk.a}-{lk.b}": lk.bandwidth_mbps for lk in result.links}
    (out / "result.json").write_text(json.dumps({
        "links": links, "kinds": result.kinds, "devices": list(surveyed.device_names),
        "stages": [s.device for s in plan.stages], "order": outputs,
        "overhead_ms": {d.name: d.stage_overhead_ms for d in surveyed.devices},
        "predicted": plan.predicted.period_s, "measured": report.measured.period_s,
        "requests": report.requests.model_dump()}))
""")


def _require_testbed_host() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("needs root and iproute2 (`ip`, `tc`) to build namespaces and shape links")
    if not (CPU_CGROUP_MOUNT / "cpu.cfs_quota_us").is_file():
        pytest.skip(f"needs the cgroup v1 cpu controller at {CPU_CGROUP_MOUNT}")
    probe = f"es-probe{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"the kernel forbids `ip netns add` here: {done.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)


def _leftovers(name: str) -> list[str]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found = [line for line in namespaces.splitlines() if line.startswith(f"es-{name}-")]
    found += [line for line in links.splitlines() if f": es{name}" in line]
    if (CPU_CGROUP_MOUNT / f"edgesplit-testbed-{name}").exists():
        found.append("cgroup")
    return found


def test_testbed_survey_and_real_run(tmp_path: Path) -> None:
    _require_testbed_host()
    name = f"i{os.getpid() % 10000}"
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(CLUSTER)
    state = api_testbed.start_testbed(cluster_file, name=name, state_dir=tmp_path, timeout_s=240)
    try:
        info = api_testbed.describe_testbed(name, tmp_path).as_json()
        assert [d["name"] for d in info["devices"]] == ["cam", "pi", "pc"]  # type: ignore[index]
        assert all(d["processes"] > 0 for d in info["devices"])  # type: ignore[index]
        quota = (CPU_CGROUP_MOUNT / state.devices[2].cgroup / "cpu.cfs_quota_us").read_text()
        assert int(quota) == 50_000
        with pytest.raises(ConfigError, match="already up"):
            api_testbed.start_testbed(cluster_file, name=name, state_dir=tmp_path)
        (tmp_path / "driver.py").write_text(DRIVER)
        env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": state.token_path,
            "RAY_ADDRESS": "",
        }
        env.pop("RAY_AUTH_TOKEN", None)
        out = tmp_path / "survey"
        driver = subprocess.run(
            [sys.executable, str(tmp_path / "driver.py"), state.address, str(cluster_file),
             str(out)],
            env=env, capture_output=True, text=True, timeout=420, check=False,
        )  # fmt: skip
        assert driver.returncode == 0, driver.stderr[-3000:]
        result = json.loads((out / "result.json").read_text())
    finally:
        # As after a crash of `up`: no state file, the prefix sweep must still find everything.
        (tmp_path / f"{name}.json").unlink(missing_ok=True)
        removed = api_testbed.stop_testbed(name, tmp_path)
    assert any(item.startswith("netns") for item in removed)
    assert _leftovers(name) == []
    assert sorted(result["devices"]) == ["cam", "pc", "pi"]
    assert result["requests"]["completed"] == 16
    assert (result["requests"]["lost"], result["requests"]["duplicated"]) == (0, 0)
    assert result["order"] == list(range(16))
    # The survey measured the runtime's per-micro-batch cost on every device, in place.
    assert all(0 < ms < 500 for ms in result["overhead_ms"].values()), result["overhead_ms"]
    # The shaped pair: the transport's goodput is the kernel's rate less TCP/IP headers.
    links = {frozenset(pair.split("-")): mbps for pair, mbps in result["links"].items()}
    assert len(links) == 3  # every pair, once
    assert 0.85 * 20 < links[frozenset(("pi", "pc"))] < 1.05 * 20
    assert 0.85 * 100 < links[frozenset(("cam", "pi"))] < 1.05 * 100
