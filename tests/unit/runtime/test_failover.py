"""Failure detection and failover decisions on a fake clock (no Ray, no sleeps)."""

from __future__ import annotations

from edgesplit.core.plan import StagePlacement
from edgesplit.runtime.failover import FailureDetector, choose_replays, standby_stages


def _detector() -> FailureDetector:
    detector = FailureDetector(hang_timeout_s=2.0, batch_deadline_s=3.0)
    detector.watch("a", now_s=100.0, expected_compute_s=0.5)
    detector.watch("b", now_s=100.0, expected_compute_s=0.5)
    return detector


def test_silent_device_is_declared_hung_only_after_the_timeout() -> None:
    detector = _detector()
    detector.heard("a", 101.0, None)
    detector.heard("b", 101.0, None)
    assert detector.check(102.9) == []
    detector.heard("a", 102.9, None)  # a keeps answering, b falls silent at 101.0
    suspicions = detector.check(103.2)
    assert [(s.device, s.cause) for s in suspicions] == [("b", "hang")]
    assert suspicions[0].last_heard_s == 101.0


def test_micro_batch_past_its_deadline_marks_a_stall_even_if_the_actor_answers() -> None:
    detector = _detector()
    detector.heard("a", 103.9, busy_since_s=100.5)
    detector.heard("b", 103.9, None)
    assert detector.check(103.9) == []  # 3.4 s busy < 0.5 expected + 3.0 deadline
    detector.heard("a", 104.1, busy_since_s=100.5)
    detector.heard("b", 104.1, None)
    assert [(s.device, s.cause) for s in detector.check(104.1)] == [("a", "stall")]


def test_closed_stream_marks_the_peer_failed_after_a_short_grace() -> None:
    detector = _detector()  # stream_loss_grace_s defaults to 0.5 s
    detector.unreachable("b", since_s=100.5)
    detector.heard("a", 100.8, None)
    detector.heard("b", 100.8, None)  # a last heartbeat may still arrive from before the crash
    assert detector.check(100.9) == []
    assert [(s.device, s.cause) for s in detector.check(101.1)] == [("b", "unreachable")]


def test_forgotten_devices_are_not_checked() -> None:
    detector = _detector()
    detector.forget("b")
    detector.heard("a", 110.0, None)
    assert detector.check(110.0) == []
    assert detector.devices == ("a",)


def _stages(*spec: tuple[str, int, int]) -> tuple[StagePlacement, ...]:
    return tuple(StagePlacement(device=d, start=s, end=e) for d, s, e in spec)


def test_standby_takes_the_failed_stage_and_keeps_the_cuts() -> None:
    stages = _stages(("a", 0, 4), ("b", 4, 8), ("c", 8, 12))
    result = standby_stages(stages, {"b"}, ["x", "y"])
    assert result == _stages(("a", 0, 4), ("x", 4, 8), ("c", 8, 12))
    assert standby_stages(stages, {"a", "b", "c"}, ["x", "y"]) is None
    assert standby_stages(stages, {"b"}, ["b"]) is None  # a failed standby is no standby


def test_replay_resumes_from_the_furthest_boundary_that_is_a_new_cut() -> None:
    stages = _stages(("a", 0, 4), ("c", 4, 8), ("d", 8, 12))
    retained = {
        7: [(4, "act4"), (6, "act6")],  # 6 is no longer a cut -> resume at 4
        8: [(0, "input")],  # boundary 0 -> from the driver's input copy
        9: [(12, "final")],  # already finished: deliver
    }
    replays = {
        r.request_id: (r.boundary, r.tensors)
        for r in choose_replays([7, 8, 9, 10], retained, stages)
    }
    assert replays == {7: (4, "act4"), 8: (0, None), 9: (12, "final"), 10: (0, None)}


def test_a_standby_takes_over_a_stage_with_its_dtype_and_link_encoding() -> None:
    """A bfloat16 / int8 stage of a precision plan stays so on the standby (issue 17)."""
    stages = [
        StagePlacement(device="a", start=0, end=3, dtype="bfloat16", link_encoding="float16"),
        StagePlacement(device="b", start=3, end=6, dtype="int8", link_encoding="int8-token"),
    ]
    result = standby_stages(stages, {"b"}, ["x"])
    assert result is not None
    assert result[0] == stages[0]
    assert result[1] == StagePlacement(
        device="x", start=3, end=6, dtype="int8", link_encoding="int8-token"
    )
