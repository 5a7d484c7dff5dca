"""A live run: frames arrive in real time and the device classifies each through the server.

Owns the loop that `edgesplit offload bench` and the benchmark's real-HTTP check share: a frame
every `period_s` (a late device queues frames, so latency counts from each frame's arrival), the
adaptive policy choosing per frame, and the per-frame record. The client and its (emulated) link
are the caller's. Imports client and policy types; no server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from edgesplit.offload.client import OffloadClient
from edgesplit.offload.policy import OffloadOption, PolicyConfig

__all__ = ["FrameRecord", "LiveRun", "classify_frames", "iter_frames"]


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """One frame's outcome: latency from its arrival, correctness, request bytes, rounds."""

    latency_s: float
    correct: bool
    body_bytes: int
    rounds: int


@dataclass(frozen=True, slots=True)
class LiveRun:
    """Per frame: latency from arrival, correctness, request bytes and rounds used."""

    latency_s: np.ndarray  # (F,)
    correct: np.ndarray  # (F,) bool
    body_bytes: np.ndarray  # (F,) all rounds' request bodies
    rounds: np.ndarray  # (F,) 1 or 2

    @classmethod
    def from_frames(cls, frames: Sequence[FrameRecord]) -> LiveRun:
        """The record of `frames` (at least one: percentiles of nothing are undefined)."""
        if not frames:
            raise ValueError("a LiveRun needs at least one frame")
        return cls(
            latency_s=np.asarray([f.latency_s for f in frames], dtype=np.float64),
            correct=np.asarray([f.correct for f in frames], dtype=bool),
            body_bytes=np.asarray([f.body_bytes for f in frames], dtype=np.float64),
            rounds=np.asarray([f.rounds for f in frames], dtype=np.int64),
        )

    @property
    def num_frames(self) -> int:
        return len(self.latency_s)

    def slo_attainment(self, slo_s: float) -> float:
        return float((self.latency_s <= slo_s).mean())

    def latency_percentile_s(self, q: float) -> float:
        return float(np.percentile(self.latency_s, q))


def iter_frames(
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
) -> Iterator[FrameRecord]:
    """`classify_frames` one frame at a time: a caller interrupted midway keeps what is done."""
    start = clock()
    for index, image in enumerate(images):
        arrival = start + index * period_s
        wait = arrival - clock()
        if wait > 0:
            sleep(wait)
        result = client.classify(image, options, slo_s=slo_s, policy=policy)
        yield FrameRecord(
            latency_s=clock() - arrival,
            correct=result.response.label == int(labels[index]),
            body_bytes=result.total_bytes,
            rounds=len(result.rounds),
        )


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
        images: the frames (at least one), in arrival order; labels: their true classes (F,).
        options: the policy's options (the server's tables).
        slo_s: the latency target of each frame; period_s: the time between arrivals.
        policy: the policy's knobs (default PolicyConfig()).

    Returns:
        The per-frame record (LiveRun).
    """
    frames = iter_frames(
        client,
        images,
        labels,
        options,
        slo_s=slo_s,
        period_s=period_s,
        policy=policy,
        clock=clock,
        sleep=sleep,
    )
    return LiveRun.from_frames(list(frames))
