"""Device failures at the node level: each device owns a Ray node (its own raylet) on this machine.

Faults through the one fault API (the stage does it to itself): a crashed device = its raylet
and stage process SIGKILLed (`crash:`); a hung device = its stage process SIGSTOPped (`stop:`).
"""

from __future__ import annotations

import pytest

from conftest import even_replanner, make_plan, toy_cluster, toy_profile
from edgesplit.runtime import RuntimeConfig, ScheduledFault, run_plan

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEVICES = ["n0", "n1", "n2", "n3"]
STAGES = [("n0", 0, 2), ("n1", 2, 4), ("n2", 4, 6)]


def _with_nodes(ray_cluster, devices):  # type: ignore[no-untyped-def]
    for device in devices:
        ray_cluster.add_device(device)
    return ray_cluster


def test_crashed_device_node_is_replanned_without_loss(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    """`crash:n1@S` through the stage: its raylet and its process are SIGKILLed."""
    cluster_handle = _with_nodes(ray_cluster, DEVICES[:3])
    profile, cluster = toy_profile(time_s=0.02), toy_cluster(DEVICES[:3])
    plan = make_plan(profile, cluster, STAGES)
    order: list[int] = []
    report = run_plan(
        plan,
        cluster,
        profile,
        config=RuntimeConfig(placement="resource"),
        requests=60,
        replanner=even_replanner(profile),
        faults=[ScheduledFault("n1", 1.3, "crash")],
        on_result=lambda rid, out: order.append(rid),
    )
    assert order == list(range(60))
    assert (report.requests.lost, report.requests.duplicated) == (0, 0)
    (failure,) = report.failures
    assert failure.device == "n1"
    assert failure.fault == "crash"
    assert failure.detected_after_s < 2.0
    assert [s.device for s in failure.new_stages] == ["n0", "n2"]
    assert report.ray_nodes >= 4
    assert not cluster_handle.raylet_alive("n1")  # the stage took its raylet down with it
    cluster_handle.crash("n1")  # forget the dead node (a later test adds a fresh one)


def test_hung_device_node_fails_over_to_a_standby(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    """`stop:n1@S` through the stage (SIGSTOP of its process) on a device with its own node."""
    _with_nodes(ray_cluster, DEVICES)
    profile, cluster = toy_profile(time_s=0.02), toy_cluster(DEVICES)
    plan = make_plan(profile, cluster, STAGES)
    order: list[int] = []
    config = RuntimeConfig(placement="resource", standby_devices=("n3",))
    report = run_plan(
        plan,
        cluster,
        profile,
        config=config,
        requests=60,
        faults=[ScheduledFault("n1", 1.0, "stop")],
        on_result=lambda rid, out: order.append(rid),
    )
    assert order == list(range(60))
    assert (report.requests.lost, report.requests.duplicated) == (0, 0)
    (failure,) = report.failures
    assert failure.detected_after_s < 4.0
    assert failure.action == "standby"
    assert [s.device for s in failure.new_stages] == ["n0", "n3", "n2"]
