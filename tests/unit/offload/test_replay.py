"""The SLO replay (edgesplit.offload.replay) on hand-made outcomes over a steady link.

With a constant rate, an empty token bucket and a fixed server time, each frame's latency is
known in closed form: upload (body + HTTP framing - burst at first, at the rate) + RTT + server.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgesplit.offload.calibrate import Outcome, Setting
from edgesplit.offload.emulation import BandwidthTrace
from edgesplit.offload.policy import HTTP_OVERHEAD_BYTES
from edgesplit.offload.replay import LinkScenario, Policy, feasible_frames, replay

RATE = 10_000.0  # bytes/s
SERVER_S = 0.01
SCENARIO = LinkScenario(mean_bandwidth_bytes_per_s=RATE, burst_bytes=0.0, frame_period_s=1.0)


def _outcome(k1: int, body_bytes: float, correct_every: int = 0) -> Outcome:
    n = 4
    correct = np.ones(n, dtype=bool)
    if correct_every:
        correct[::correct_every] = False
    return Outcome(
        Setting("server", k1, "zlib"),
        correct1=correct,
        confidence1=np.full(n, 0.9),
        bytes1=np.full(n, body_bytes),
    )


def _samples(*k1s: int) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    return {(k1, 0): (np.array([SERVER_S]), np.array([SERVER_S])) for k1 in k1s}


def _steady() -> BandwidthTrace:
    return BandwidthTrace("steady", 1.0, np.array([RATE]))


def test_fixed_policy_latency_is_upload_plus_rtt_plus_server() -> None:
    outcome = _outcome(8, 900.0, correct_every=2)
    result = replay(
        Policy("fixed", "fixed", outcome=outcome),
        _steady(),
        0.5,
        num_frames=6,
        val_options=[],
        test_outcomes={("server", 8, "zlib", None): outcome},
        server_samples=_samples(8),
        seed=0,
        scenario=SCENARIO,
    )
    upload_s = (900.0 + HTTP_OVERHEAD_BYTES) / RATE
    np.testing.assert_allclose(result["latency_s"], upload_s + SCENARIO.rtt_s + SERVER_S)
    assert result["bytes"].tolist() == [900.0] * 6  # HTTP framing is not counted as bytes
    assert result["rounds"].tolist() == [1] * 6
    assert result["correct"].tolist() == [False, True, False, True, False, True]  # cycles images


def test_local_policy_queues_frames_behind_a_slow_device() -> None:
    result = replay(
        Policy("local", "local", local_s=1.5, local_correct=np.ones(4, dtype=bool)),
        _steady(),
        0.5,
        num_frames=3,
        val_options=[],
        test_outcomes={("server", 8, "zlib", None): _outcome(8, 900.0)},
        server_samples=_samples(8),
        seed=0,
        scenario=SCENARIO,
    )
    # frames arrive every 1 s, each takes 1.5 s on the device: 1.5, 2.0, 2.5 s
    np.testing.assert_allclose(result["latency_s"], [1.5, 2.0, 2.5])


def test_feasible_frames_is_the_best_fixed_round1_over_an_idle_link() -> None:
    small, large = _outcome(4, 300.0), _outcome(64, 4000.0)
    p50 = {4: SERVER_S, 64: SERVER_S}
    small_s = (300.0 + HTTP_OVERHEAD_BYTES) / RATE + SCENARIO.rtt_s + SERVER_S
    assert feasible_frames(_steady(), small_s + 1e-6, 3, [small, large], p50, SCENARIO).all()
    assert not feasible_frames(_steady(), small_s - 1e-3, 3, [small, large], p50, SCENARIO).any()


def test_default_scenario_is_the_reported_one() -> None:
    scenario = LinkScenario()
    assert scenario.mean_bandwidth_bytes_per_s == 12_500.0
    assert scenario.rtt_s == pytest.approx(0.04)
    assert (scenario.burst_bytes, scenario.frame_period_s) == (300.0, 0.5)
