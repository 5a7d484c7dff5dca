"""A live run: frames arrive in real time and the device classifies each through the server.

Owns the loop that `edgesplit offload bench` and the benchmark's real-HTTP check share: a frame
every `period_s` (a late device queues frames, so latency counts from each frame's arrival), the
adaptive policy choosing per frame, and the per-frame record. The client and its (emulated) link
are the caller's. Imports client and policy types; no server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgesplit.offload.client import OffloadClient
from edgesplit.offload.policy import OffloadOption, PolicyConfig

__all__ = ["LiveRun", "classify_frames"]


@dataclass(frozen=True, slots=True)
class LiveRun:
    """Per frame: latency from arrival, correctness, request bytes and rounds used."""

    latency_s: np.ndarray  # (F,)
    correct: np.ndarray  # (F,) bool
    body_bytes: np.ndarray  # (F,) all rounds' request bodies
    rounds: np.ndarray  # (F,) 1 or 2

    def slo_attainment(self, slo_s: float) -> float:
        return float((self.latency_s <= slo_s).mean())

    def latency_percentile_s(self, q: float) -> float:
        return float(np.percentile(self.latency_s, q))


def classify_frames(
    client: OffloadClient,
    images: np.ndarray,
    labels: np.ndarray,
    options: list[OffloadOption],
    *,
    slo_s: float,
    period_s: float,
    policy: PolicyConfig | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LiveRun:
    """Classify `images` (F, H, W) uint8, one arriving every `period_s`, within `slo_s` each.

    Args:
        client: a client of the server (its link emulator, if any, shapes the uploads).
        images: the frames, in arrival order; labels: their true classes (F,).
        options: the policy's options (the server's tables).
        slo_s: the latency target of each frame; period_s: the time between arrivals.
        policy: the policy's knobs (default PolicyConfig()).

    Returns:
        The per-frame record (LiveRun).
    """
    latency, correct, body_bytes, rounds = [], [], [], []
    start = clock()
    for index, image in enumerate(images):
        arrival = start + index * period_s
        wait = arrival - clock()
        if wait > 0:
            sleep(wait)
        result = client.classify(image, options, slo_s=slo_s, policy=policy)
        latency.append(clock() - arrival)
        correct.append(result.response.label == int(labels[index]))
        body_bytes.append(result.total_bytes)
        rounds.append(len(result.rounds))
    return LiveRun(
        latency_s=np.asarray(latency, dtype=np.float64),
        correct=np.asarray(correct, dtype=bool),
        body_bytes=np.asarray(body_bytes, dtype=np.float64),
        rounds=np.asarray(rounds, dtype=np.int64),
    )
