"""Verdicts on the offload issue's SLO target, from per-frame replay outcomes.

Owns the rules the closing note reports: the paired bootstrap gain of one policy over another
on the same frames, the fixed setting an adaptive policy is compared with (the most accurate
one meeting as many SLOs), the verdict (met / tie / less accurate / missed attainment), per
trace x SLO run with hindsight and network-blind (one fixed setting per SLO over all traces).
Pure numpy; the replay that produces the frames is replay.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "RunFrames",
    "best_fixed_meeting_as_many",
    "network_blind_verdicts",
    "paired_gain",
    "slo_verdicts",
    "verdict",
]


def paired_gain(a: np.ndarray, b: np.ndarray, resamples: int = 2000) -> dict[str, float]:
    """Accuracy of `a` minus `b` on the same frames, with a paired bootstrap 95 % interval.

    The two policies classify the same images, so their difference is judged per frame: an
    interval containing 0 means the replay cannot tell them apart (a tie).
    """
    diff = a.astype(np.float64) - b.astype(np.float64)
    rng = np.random.default_rng(0)
    means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"gain": float(diff.mean()), "ci95_low": float(low), "ci95_high": float(high)}


def best_fixed_meeting_as_many(
    policies: dict[str, dict[str, Any]], attainment: float
) -> str | None:
    """The rival the target compares with: the most accurate fixed setting ("fixed ..." among
    `policies`, each with `accuracy` and `slo_attainment_feasible`) whose attainment on feasible
    frames is at least `attainment` (the adaptive policy's); None if none is."""
    rivals = [
        (v["accuracy"], k)
        for k, v in policies.items()
        if k.startswith("fixed ") and (v["slo_attainment_feasible"] or 0) >= attainment - 1e-9
    ]
    return max(rivals)[1] if rivals else None


def verdict(attainment: float, gain: dict[str, float] | None) -> str:
    """met / tie / less accurate / missed attainment, from the adaptive policy's attainment on
    feasible frames and its paired accuracy gain over the best fixed setting meeting as many."""
    if attainment < 0.99:
        return "missed attainment"
    if gain is None or gain["ci95_low"] > 0:
        return "met"
    if gain["ci95_high"] >= 0:
        return "tie"
    return "less accurate"


def slo_verdicts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's target per trace x SLO run, and how often each outcome occurred.

    met: adaptive two-round meets >= 99 % of the feasible SLOs and is more accurate than every
    fixed setting that meets as many, with the paired 95 % interval above 0. tie: it meets 99 %
    and the interval contains 0 (the replay cannot tell it from the best fixed setting). Otherwise
    "missed attainment" or "less accurate". The fixed setting here is picked per run, i.e. with
    hindsight of the trace: see `network_blind_verdicts` for a fixed setting per SLO.
    """
    per_run = {
        f"{row['trace']} {row['slo_s']}": verdict(
            row["policies"]["adaptive two-round"]["slo_attainment_feasible"],
            row.get("accuracy_gain_vs_best_fixed"),
        )
        for row in rows
    }
    counts = dict(Counter(per_run.values()))
    return {"per_run": per_run, "counts": counts}


@dataclass(frozen=True)
class RunFrames:
    """Per-frame outcomes of one trace x SLO run: feasible mask, and per policy correct / met."""

    trace: str
    slo_s: float
    feasible: np.ndarray
    correct: dict[str, np.ndarray]
    met: dict[str, np.ndarray]


def network_blind_verdicts(runs: list[RunFrames]) -> list[dict[str, Any]]:
    """The issue's target with one fixed setting per SLO, over the frames of every trace.

    A fixed setting cannot know which network it will meet, so here it is one setting for an
    SLO across all traces (pooled frames), against the adaptive policy on the same frames. This is
    the deployment question "which single setting would I configure for this SLO?"; the per-run
    verdicts (`slo_verdicts`) instead let each trace have its own best setting in hindsight.
    Per SLO: pooled attainment on feasible frames and accuracy of every fixed setting; the most
    accurate one meeting at least as many feasible SLOs as adaptive two-round (the rival), the
    paired gain over it, the verdict, and the most accurate fixed setting that met fewer (how
    many frames short it fell).
    """
    rows = []
    for slo_s in sorted({run.slo_s for run in runs}):
        group = [run for run in runs if run.slo_s == slo_s]
        feasible = np.concatenate([run.feasible for run in group])

        def pooled(name: str, group: list[RunFrames] = group) -> tuple[np.ndarray, np.ndarray]:
            return (
                np.concatenate([run.correct[name] for run in group]),
                np.concatenate([run.met[name] for run in group]),
            )

        stats: dict[str, dict[str, Any]] = {}
        for name in group[0].correct:
            correct, met = pooled(name)
            stats[name] = {
                "slo_attainment_feasible": float(met[feasible].mean()),
                "met_feasible_frames": int(met[feasible].sum()),
                "accuracy": float(correct.mean()),
            }
        adaptive_name = "adaptive two-round"
        adaptive = stats[adaptive_name]
        fixed = {k: v for k, v in stats.items() if k.startswith("fixed ")}
        # the same feasible frames for every policy: attainment orders them as met frames do
        rival = best_fixed_meeting_as_many(fixed, adaptive["slo_attainment_feasible"])
        gain = (
            paired_gain(pooled(adaptive_name)[0], pooled(rival)[0]) if rival is not None else None
        )
        fewer = [
            (v["accuracy"], k)
            for k, v in fixed.items()
            if v["met_feasible_frames"] < adaptive["met_feasible_frames"]
            and v["accuracy"] > adaptive["accuracy"]
        ]
        nearest = max(fewer, key=lambda t: fixed[t[1]]["met_feasible_frames"])[1] if fewer else None
        rows.append(
            {
                "slo_s": slo_s,
                "traces": [run.trace for run in group],
                "frames": len(feasible),
                "feasible_frames": int(feasible.sum()),
                "adaptive_two_round": adaptive,
                "adaptive_one_round": stats.get("adaptive one-round"),
                "rival_meeting_as_many": rival,
                "rival": fixed.get(rival) if rival else None,
                "accuracy_gain_vs_rival": gain,
                "more_accurate_fixed_meeting_fewer": nearest,
                "more_accurate_fixed_meeting_fewer_stats": fixed.get(nearest) if nearest else None,
                "verdict": verdict(adaptive["slo_attainment_feasible"], gain),
                "fixed_settings": {
                    k: [round(v["slo_attainment_feasible"], 5), round(v["accuracy"], 4)]
                    for k, v in fixed.items()
                },
            }
        )
    return rows
