"""The live loop shared by `edgesplit offload bench` and the benchmark (offload.live), in-process
against the tiny server with a fake clock: arrivals every period, latency from arrival."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from edgesplit.offload.live import classify_frames
from edgesplit.offload.pipeline import tiny_pipeline
from edgesplit.offload.server import create_app
from tests.unit.offload.test_client import TWO_ROUNDS, _client


class _FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0
        self.slept_s: list[float] = []

    def __call__(self) -> float:
        self.now_s += 0.001  # every reading costs a little time
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.slept_s.append(seconds)
        self.now_s += seconds


def test_frames_arrive_every_period_and_are_all_recorded() -> None:
    server = TestClient(create_app(tiny_pipeline()))
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64)).astype(np.uint8)
    labels = np.array([1, 2, 3])
    clock = _FakeClock()
    with _client({"r1": server, "r2": server}, []) as client:
        run = classify_frames(
            client,
            images,
            labels,
            [TWO_ROUNDS],
            slo_s=5.0,
            period_s=10.0,
            clock=clock,
            sleep=clock.sleep,
        )
    assert run.latency_s.shape == run.correct.shape == run.rounds.shape == (3,)
    assert (run.rounds == 2).all()  # the only option asks for round 2; the SLO leaves room
    assert (run.body_bytes > 0).all()
    assert len(clock.slept_s) == 2  # waited for frames 2 and 3, not for frame 1
    assert (run.latency_s < 1.0).all()  # from each arrival, not from the start
    assert run.slo_attainment(5.0) == 1.0
    assert run.correct.dtype == bool
