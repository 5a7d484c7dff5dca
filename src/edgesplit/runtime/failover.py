"""Failure detection and the decisions of failover, as pure logic over an injected clock.

Owns `FailureDetector` (heartbeat silence -> hang; a micro-batch computing past its deadline ->
stall), `standby_stages` (a standby device takes the failed stage's units) and `choose_replays`
(the furthest retained boundary each unfinished micro-batch can resume from under the new plan).
No ray, no torch, no planners: re-planning is an injected callable. Petals-shaped: detect ->
ban -> re-plan affected stages -> replay -> log each step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from edgesplit.core.plan import StagePlacement

__all__ = ["FailureDetector", "Replay", "Suspicion", "choose_replays", "standby_stages"]

Cause = Literal["actor_died", "hang", "stall", "unreachable"]


@dataclass(frozen=True)
class Suspicion:
    device: str
    cause: Cause
    last_heard_s: float
    detail: str


@dataclass
class FailureDetector:
    """Declares a device failed when it has been silent for `hang_timeout_s` (its process is
    stopped, its node hangs or its link is cut: Ray would not notice for a minute) or when one
    micro-batch has been computing on it for longer than its expected time + `batch_deadline_s`
    (a hung stage whose process still answers)."""

    hang_timeout_s: float
    batch_deadline_s: float
    # A stream its peer closed (EOF/EPIPE) means the peer process is gone (a hung process or a
    # cut link keeps streams open): declare it after this short grace, before Ray's node checks.
    stream_loss_grace_s: float = 0.5
    expected_compute_s: dict[str, float] = field(default_factory=dict)
    _last_heard_s: dict[str, float] = field(default_factory=dict)
    _busy_since_s: dict[str, float | None] = field(default_factory=dict)
    _unreachable_since_s: dict[str, float] = field(default_factory=dict)

    def watch(self, device: str, now_s: float, expected_compute_s: float = 0.0) -> None:
        self._last_heard_s[device] = now_s
        self._busy_since_s[device] = None
        self.expected_compute_s[device] = expected_compute_s

    def forget(self, device: str) -> None:
        self._last_heard_s.pop(device, None)
        self._busy_since_s.pop(device, None)
        self._unreachable_since_s.pop(device, None)

    def unreachable(self, device: str, since_s: float) -> None:
        """A neighbour's stream to `device` was closed at `since_s` (its process is gone)."""
        if device in self._last_heard_s:
            self._unreachable_since_s.setdefault(device, since_s)

    def heard(self, device: str, now_s: float, busy_since_s: float | None) -> None:
        if device in self._last_heard_s:
            self._last_heard_s[device] = max(self._last_heard_s[device], now_s)
            self._busy_since_s[device] = busy_since_s

    def last_heard_s(self, device: str) -> float:
        return self._last_heard_s[device]

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self._last_heard_s)

    def check(self, now_s: float) -> list[Suspicion]:
        found = []
        for device, heard_s in self._last_heard_s.items():
            silent_s = now_s - heard_s
            busy_since_s = self._busy_since_s.get(device)
            deadline_s = self.expected_compute_s.get(device, 0.0) + self.batch_deadline_s
            lost_since_s = self._unreachable_since_s.get(device)
            if silent_s > self.hang_timeout_s:
                found.append(
                    Suspicion(device, "hang", heard_s, f"no heartbeat for {silent_s:.2f} s")
                )
            elif busy_since_s is not None and now_s - busy_since_s > deadline_s:
                found.append(
                    Suspicion(
                        device,
                        "stall",
                        heard_s,
                        f"one micro-batch computing for {now_s - busy_since_s:.2f}"
                        f" s (deadline {deadline_s:.2f} s)",
                    )
                )
            elif lost_since_s is not None and now_s - lost_since_s > self.stream_loss_grace_s:
                detail = f"its stream was closed {now_s - lost_since_s:.2f} s ago"
                found.append(Suspicion(device, "unreachable", lost_since_s, detail))
        return found


def standby_stages(
    stages: Sequence[StagePlacement], failed: Iterable[str], standby: Sequence[str]
) -> tuple[StagePlacement, ...] | None:
    """The same cuts with each failed device's stage moved to a free standby; None if too few."""
    failed = set(failed)
    used = {s.device for s in stages}
    free = [d for d in standby if d not in failed and d not in used]
    result = []
    for stage in stages:
        if stage.device in failed:
            if not free:
                return None
            result.append(StagePlacement(device=free.pop(0), start=stage.start, end=stage.end))
        else:
            result.append(stage)
    return tuple(result)


@dataclass(frozen=True)
class Replay:
    request_id: int
    boundary: int  # 0 = from the input; otherwise the unit index of a retained activation
    tensors: Any  # dict[str, np.ndarray] or None when replaying from the driver's input copy


def choose_replays(
    unfinished: Iterable[int],
    retained: Mapping[int, Sequence[tuple[int, Any]]],
    stages: Sequence[StagePlacement],
) -> list[Replay]:
    """For each unfinished micro-batch, the furthest retained activation that starts a stage of
    the new plan (or is the final output); else its input.

    Example: new stages [0,4) [4,8) [8,12); micro-batch 7 is retained at boundaries 4 and 6 ->
    resume at 4 (6 is not a cut any more); micro-batch 9 retained at 12 -> already finished.
    """
    starts = {s.start for s in stages}
    num_units = stages[-1].end
    replays = []
    for request_id in sorted(unfinished):
        best: tuple[int, Any] | None = None
        for boundary, tensors in retained.get(request_id, ()):
            if (
                (boundary in starts or boundary == num_units)
                and boundary > 0
                and (best is None or boundary > best[0])
            ):
                best = (boundary, tensors)
        if best is None:
            replays.append(Replay(request_id, 0, None))
        else:
            replays.append(Replay(request_id, best[0], best[1]))
    return replays
