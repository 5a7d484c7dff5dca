"""The pipeline runtime on the session's Ray: order, period, back-pressure, failover, bad input.

Stage actors run on the head node (placement="local"); emulated compute sleeps the profiled
time, so periods are meaningful on this shared 2-core machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import even_replanner, make_plan, toy_cluster, toy_profile
from edgesplit.errors import ConfigError, DeviceUnavailableError, ProfileMissingError
from edgesplit.runtime import RuntimeConfig, ScheduledFault, run_plan
from edgesplit.runtime.report import RunHealth, RunReport

pytestmark = pytest.mark.integration

LOCAL = RuntimeConfig(placement="local", max_in_flight=4)
DEVICES = ["d0", "d1", "d2", "d3"]
STAGES = [("d0", 0, 2), ("d1", 2, 4), ("d2", 4, 6)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_emulated_run_is_ordered_and_meets_the_predicted_period(
    ray_cluster: object, tmp_path: Path
) -> None:
    # 0.1 s per stage: the runtime's own overhead (ms) stays small on a loaded machine
    profile, cluster = toy_profile(time_s=0.05), toy_cluster(DEVICES)
    plan = make_plan(profile, cluster, STAGES)
    order: list[int] = []
    scraped: list[str] = []
    port = _free_port()

    def progress(done: int, total: int | None, rate: float) -> None:
        if done > 5 and not scraped:
            scraped.append(
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            )

    report = run_plan(
        plan,
        cluster,
        profile,
        config=LOCAL,
        requests=40,
        faults=[ScheduledFault("d2", 900.0, "stop")],  # the run ends long before
        on_result=lambda rid, out: order.append(rid),
        progress=progress,
        timeline_path=tmp_path / "gantt.png",
        metrics_port=port,
    )
    assert order == list(range(40))
    assert report.requests.completed == 40
    assert (report.requests.lost, report.requests.duplicated) == (0, 0)
    assert not report.failures
    assert "stop:d2@900 did not fire" in report.notes
    ratio = report.measured.period_s / report.predicted.period_s
    assert 0.9 < ratio < 1.3, ratio  # benchmarks/runtime_efficiency.py reports the exact figure
    assert (tmp_path / "gantt.png").stat().st_size > 1000
    assert scraped
    assert "edgesplit_requests_completed_total" in scraped[0]
    # Report contract keys that scripts depend on.
    data = RunReport.model_validate_json(report.model_dump_json()).model_dump()
    assert {"p50", "p95", "p99"} <= set(data["measured"]["latency_s"])
    assert [s["device"] for s in data["stages"]] == ["d0", "d1", "d2"]


def test_back_pressure_bounds_what_is_accepted(ray_cluster: object) -> None:
    """A slow last stage: the source may not run ahead by more than the credit windows."""
    profile, cluster = toy_profile(time_s=0.01), toy_cluster(DEVICES)
    plan = make_plan(profile, cluster, [("d0", 0, 1), ("d1", 1, 6)])  # d1: 5x the work of d0
    accepted_when_done: list[tuple[int, int]] = []
    pulled = [0]

    def requests():  # type: ignore[no-untyped-def]
        for _ in range(30):
            pulled[0] += 1
            yield {"input": np.zeros(600_000, dtype=np.uint8)}

    config = RuntimeConfig(placement="local", max_in_flight=2)
    run_plan(
        plan,
        cluster,
        profile,
        config=config,
        requests=requests(),
        on_result=lambda rid, out: accepted_when_done.append((rid, pulled[0])),
    )
    # Per link at most 2 unacked; 2 links + one item being pulled by the source.
    ahead = max(pulled_count - rid for rid, pulled_count in accepted_when_done)
    assert ahead <= 2 * 2 + 3, accepted_when_done


@pytest.mark.slow
@pytest.mark.parametrize("trial", [0, 1, 2])
def test_kill_9_of_a_stage_process_loses_nothing(ray_cluster: object, trial: int) -> None:
    profile, cluster = toy_profile(time_s=0.02), toy_cluster(DEVICES)
    plan = make_plan(profile, cluster, STAGES)
    order: list[int] = []
    report = run_plan(
        plan,
        cluster,
        profile,
        config=LOCAL,
        requests=60,
        replanner=even_replanner(profile),
        faults=[ScheduledFault("d1", 0.8 + 0.2 * trial)],
        on_result=lambda rid, out: order.append(rid),
    )
    assert order == list(range(60))
    assert (report.requests.lost, report.requests.duplicated) == (0, 0)
    (failure,) = report.failures
    assert failure.device == "d1"
    assert failure.cause == "actor_died"
    assert failure.detected_after_s < 2.0
    assert failure.recovered_after_s is not None
    assert failure.action == "replan"
    assert report.requests.replayed >= 1


@pytest.mark.slow
def test_sigstopped_stage_is_detected_killed_and_replaced_by_a_standby(ray_cluster: object) -> None:
    profile, cluster = toy_profile(time_s=0.02), toy_cluster(DEVICES)
    plan = make_plan(profile, cluster, STAGES)
    stopped: list[int] = []

    def hang(info: dict[str, object]) -> None:
        pid = int(str(info["pid"]))
        stopped.append(pid)
        os.kill(pid, signal.SIGSTOP)

    order: list[int] = []
    config = RuntimeConfig(placement="local", standby_devices=("d3",))
    try:
        report = run_plan(
            plan,
            cluster,
            profile,
            config=config,
            requests=60,
            faults=[ScheduledFault("d1", 1.0, hang)],
            on_result=lambda rid, out: order.append(rid),
        )
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert order == list(range(60))
    assert (report.requests.lost, report.requests.duplicated) == (0, 0)
    (failure,) = report.failures
    assert failure.cause == "hang"
    assert failure.detected_after_s < 4.0
    assert failure.action == "standby"
    assert [s.device for s in failure.new_stages] == ["d0", "d3", "d2"]
    assert failure.replayed_from_stage_output >= 1  # resumed from d0's retained outputs


@pytest.mark.slow
def test_a_served_source_idles_hears_of_errors_and_follows_health(ray_cluster: object) -> None:
    """docs/serving.md items 3-5: None = nothing now, on_error in order, on_health changes."""
    profile, cluster = toy_profile(time_s=0.02), toy_cluster(DEVICES)
    plan = make_plan(profile, cluster, STAGES)
    size = int(profile.input_bytes)

    def source() -> Iterator[dict[str, np.ndarray] | None]:
        for index in range(30):
            yield {"input": np.zeros(size - (index == 5), dtype=np.uint8)}  # 5: raises
            yield None  # an idle server: nothing now (the driver waits a tick)

    events: list[tuple[str, int]] = []
    health: list[RunHealth] = []
    report = run_plan(
        plan,
        cluster,
        profile,
        config=LOCAL,
        requests=source(),
        replanner=even_replanner(profile),
        faults=[ScheduledFault("d1", 1.0)],
        on_result=lambda rid, out: events.append(("result", rid)),
        on_error=lambda rid, message: events.append(("error", rid)),
        on_health=health.append,
    )
    assert events == [("error" if i == 5 else "result", i) for i in range(30)]
    assert (report.requests.lost, report.requests.errored) == (0, 1)
    states = [h.state for h in health]
    assert states == ["running", "recovering", "running", "stopped"], states
    assert "d1 lost (actor_died)" in health[1].detail
    assert health[2].ok
    assert health[2].failures == 1
    assert "d1" not in {s.device for s in health[2].stages}


def test_plan_profile_and_cluster_mismatches_fail_before_anything_starts() -> None:
    profile, cluster = toy_profile(), toy_cluster(DEVICES)
    plan = make_plan(profile, cluster, STAGES)
    with pytest.raises(ConfigError, match="units"):
        run_plan(plan, cluster, toy_profile(num_units=8), config=LOCAL, requests=1)
    with pytest.raises(ConfigError, match="does not have"):
        run_plan(plan, toy_cluster(["d0", "d2", "d3"]), profile, config=LOCAL, requests=1)
    with pytest.raises(ProfileMissingError, match="other-kind"):
        run_plan(plan, toy_cluster(DEVICES, kind="other-kind"), profile, config=LOCAL, requests=1)
    with pytest.raises(ConfigError, match="runs no stage"):
        run_plan(
            plan, cluster, profile, config=LOCAL, requests=1, faults=[ScheduledFault("d3", 1.0)]
        )
    overlap = RuntimeConfig(placement="local", standby_devices=("d1",))
    with pytest.raises(ConfigError, match="standby device 'd1' already runs a stage"):
        run_plan(plan, cluster, profile, config=overlap, requests=1)


def test_device_without_a_ray_node_is_a_clear_error(ray_cluster: object) -> None:
    profile, cluster = toy_profile(), toy_cluster(["nowhere0", "nowhere1"])
    plan = make_plan(profile, cluster, [("nowhere0", 0, 3), ("nowhere1", 3, 6)])
    with pytest.raises(DeviceUnavailableError, match="nowhere0"):
        run_plan(plan, cluster, profile, config=RuntimeConfig(placement="resource"), requests=1)


@pytest.mark.slow
def test_cut_link_is_detected_and_the_stage_replaced(ray_cluster: object) -> None:
    """`cut:d1@S`: d1's streams and heartbeats go silent (its process lives on)."""
    profile, cluster = toy_profile(time_s=0.02), toy_cluster(DEVICES)
    plan = make_plan(profile, cluster, STAGES)
    order: list[int] = []
    report = run_plan(
        plan,
        cluster,
        profile,
        config=RuntimeConfig(placement="local", standby_devices=("d3",)),
        requests=60,
        faults=[ScheduledFault("d1", 1.0, "cut")],
        on_result=lambda rid, out: order.append(rid),
    )
    assert order == list(range(60))
    assert (report.requests.lost, report.requests.duplicated) == (0, 0)
    (failure,) = report.failures
    assert (failure.device, failure.fault, failure.cause) == ("d1", "cut", "hang")
    assert failure.detected_after_s < 3.0
    assert failure.action == "standby"
