"""Failure detection and the decisions of failover, as pure logic over an injected clock.

Owns `FailureDetector` (heartbeat silence -> hang; a micro-batch computing past its deadline ->
stall; a closed stream -> unreachable; repeated executor errors -> failing), `FailureLog` (injected
and detected failures -> the report's `FailureRecord`s, the same for every workload),
`standby_stages` (a standby device takes the failed stage's units) and `choose_replays`
(the furthest retained boundary each unfinished micro-batch can resume from under the new plan).
No ray, no torch, no planners: re-planning is an injected callable. Petals-shaped: detect ->
ban -> re-plan affected stages -> replay -> log each step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgesplit.core.plan import StagePlacement
from edgesplit.runtime.report import Action, Cause, FailureRecord

__all__ = [
    "FailureDetector",
    "FailureLog",
    "Replay",
    "Suspicion",
    "choose_replays",
    "standby_stages",
]


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
    _failing: dict[str, tuple[float, str]] = field(default_factory=dict)

    def watch(self, device: str, now_s: float, expected_compute_s: float = 0.0) -> None:
        self._last_heard_s[device] = now_s
        self._busy_since_s[device] = None
        self.expected_compute_s[device] = expected_compute_s

    def forget(self, device: str) -> None:
        self._last_heard_s.pop(device, None)
        self._busy_since_s.pop(device, None)
        self._unreachable_since_s.pop(device, None)
        self._failing.pop(device, None)

    def failing(self, device: str, since_s: float, detail: str) -> None:
        """The device's executor keeps raising: treat it as failed at the next check."""
        if device in self._last_heard_s:
            self._failing.setdefault(device, (since_s, detail))

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
            if device in self._failing:
                since_s, detail = self._failing[device]
                found.append(Suspicion(device, "failing", since_s, detail))
            elif silent_s > self.hang_timeout_s:
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
    """The same cuts with each failed device's stage moved to a free standby; None if too few.
    A moved stage keeps everything but its device (its dtype and link encoding too)."""
    failed = set(failed)
    used = {s.device for s in stages}
    free = [d for d in standby if d not in failed and d not in used]
    result = []
    for stage in stages:
        if stage.device in failed:
            if not free:
                return None
            result.append(stage.model_copy(update={"device": free.pop(0)}))
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


@dataclass
class FailureLog:
    """Every failure of a run, injected or not, from injection to recovery (wall seconds)."""

    _entries: list[dict[str, Any]] = field(default_factory=list)

    def injected(self, device: str, kind: str, wall_s: float) -> None:
        self._entries.append({"device": device, "at_wall_s": wall_s, "fault": kind})

    def detected(
        self,
        suspicions: Sequence[Suspicion],
        detected_wall_s: float,
        action: Action,
        *,
        replayed: int = 0,
        from_stage: int = 0,
        stages: tuple[StagePlacement, ...] = (),
    ) -> None:
        for suspicion in suspicions:
            pending = [
                e
                for e in self._entries
                if e["device"] == suspicion.device and "detected_wall_s" not in e
            ]
            if pending:
                entry = pending[0]
            else:
                entry = {"device": suspicion.device, "at_wall_s": suspicion.last_heard_s}
                self._entries.append(entry)
            entry.update(
                detected_wall_s=detected_wall_s,
                cause=suspicion.cause,
                action=action,
                replayed=replayed,
                from_stage=from_stage,
                stages=stages,
            )

    def records(
        self, t0_s: float, result_times_s: Iterable[float], *, detected_since_s: float = 0.0
    ) -> list[FailureRecord]:
        """Detected failures as report records; recovery = first result after detection.

        Only failures detected at or after `detected_since_s` (wall seconds) are included.
        """
        times = sorted(result_times_s)
        records = []
        for entry in sorted(self._entries, key=lambda e: e["at_wall_s"]):
            if entry.get("detected_wall_s", -1.0) < detected_since_s:
                continue  # not observed (yet), or reported by an earlier call
            later = [t for t in times if t > entry["detected_wall_s"]]
            records.append(
                FailureRecord(
                    device=entry["device"],
                    at_s=entry["at_wall_s"] - t0_s,
                    detected_after_s=entry["detected_wall_s"] - entry["at_wall_s"],
                    recovered_after_s=(later[0] - entry["at_wall_s"]) if later else None,
                    cause=entry["cause"],
                    fault=entry.get("fault"),
                    action=entry["action"],
                    replayed=entry["replayed"],
                    replayed_from_stage_output=entry["from_stage"],
                    new_stages=entry["stages"],
                )
            )
        return records
