"""The verdicts on the offload issue's SLO target (edgesplit.offload.verdicts), on hand-made
frames whose answer is known: they decide what the benchmark and the closing note report."""

from __future__ import annotations

import numpy as np
import pytest

from edgesplit.offload import verdicts


def _frames(n: int, correct_every: int) -> np.ndarray:
    """n frames, correct except every `correct_every`-th (0: all correct)."""
    out = np.ones(n, dtype=bool)
    if correct_every:
        out[::correct_every] = False
    return out


def _run(
    trace: str, correct: dict[str, np.ndarray], met: dict[str, np.ndarray], n: int = 400
) -> verdicts.RunFrames:
    return verdicts.RunFrames(trace, 0.15, np.ones(n, dtype=bool), correct, met)


def test_verdict_thresholds() -> None:
    assert verdicts.verdict(0.989, {"gain": 0.1, "ci95_low": 0.05, "ci95_high": 0.2}) == (
        "missed attainment"
    )
    assert verdicts.verdict(0.99, {"gain": 0.1, "ci95_low": 0.05, "ci95_high": 0.2}) == "met"
    assert verdicts.verdict(0.99, None) == "met"  # nothing fixed meets as many
    assert verdicts.verdict(0.995, {"gain": 0.0, "ci95_low": -0.01, "ci95_high": 0.01}) == "tie"
    assert verdicts.verdict(1.0, {"gain": -0.1, "ci95_low": -0.2, "ci95_high": -0.05}) == (
        "less accurate"
    )


def test_network_blind_pools_traces_per_slo() -> None:
    """A full image is punctual on the fast trace only; per trace it would win there, but one
    setting for both traces meets fewer SLOs than the adaptive policy, whose rival is then the
    small, inaccurate setting."""
    n = 400
    late_half = np.arange(n) % 2 == 0
    runs = [
        _run(
            "fast",
            correct={
                "adaptive two-round": _frames(n, 8),  # 87.5 %
                "fixed full": _frames(n, 10),  # 90 %
                "fixed small": _frames(n, 2),  # 50 %
            },
            met={
                "adaptive two-round": np.ones(n, dtype=bool),
                "fixed full": np.ones(n, dtype=bool),
                "fixed small": np.ones(n, dtype=bool),
            },
        ),
        _run(
            "slow",
            correct={
                "adaptive two-round": _frames(n, 4),  # 75 %
                "fixed full": _frames(n, 10),
                "fixed small": _frames(n, 2),
            },
            met={
                "adaptive two-round": np.arange(n) != 0,  # one late frame
                "fixed full": ~late_half,
                "fixed small": np.ones(n, dtype=bool),
            },
        ),
    ]
    (row,) = verdicts.network_blind_verdicts(runs)
    assert row["frames"] == 2 * n
    assert row["feasible_frames"] == 2 * n
    assert row["adaptive_two_round"]["met_feasible_frames"] == 2 * n - 1
    assert row["rival_meeting_as_many"] == "fixed small"
    assert row["more_accurate_fixed_meeting_fewer"] == "fixed full"
    assert row["more_accurate_fixed_meeting_fewer_stats"]["met_feasible_frames"] == n + n // 2
    assert row["accuracy_gain_vs_rival"]["gain"] == pytest.approx((0.875 + 0.75) / 2 - 0.5)
    assert row["verdict"] == "met"
    assert row["fixed_settings"]["fixed full"] == [0.75, 0.9]


def test_network_blind_less_accurate_when_a_fixed_setting_matches() -> None:
    n = 400
    everything = np.ones(n, dtype=bool)
    runs = [
        _run(
            trace,
            correct={"adaptive two-round": _frames(n, 4), "fixed full": _frames(n, 10)},
            met={"adaptive two-round": everything, "fixed full": everything},
        )
        for trace in ("a", "b")
    ]
    (row,) = verdicts.network_blind_verdicts(runs)
    assert row["rival_meeting_as_many"] == "fixed full"
    assert row["more_accurate_fixed_meeting_fewer"] is None
    assert row["verdict"] == "less accurate"
