"""The SLO replay: frames over an emulated uplink in virtual time, with measured outcomes.

Owns the simulator the offload benchmark reports (docs/offload.md, "How it measures"): a token
bucket on a bandwidth trace gives each upload's time, measured server-time samples are drawn per
request, and each frame's correctness and bytes are those measured for that test image and
setting, so a policy's latency, accuracy and bytes per frame come out without a network. Also the
feasibility oracle (could any fixed setting have met this frame's SLO?). Pure numpy over the
outcome tables of calibrate.py; no torch calls, no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgesplit.offload.calibrate import Outcome, ProgressiveOutcome
from edgesplit.offload.emulation import BandwidthTrace, TokenBucket
from edgesplit.offload.policy import (
    HTTP_OVERHEAD_BYTES,
    BandwidthEstimate,
    Decision,
    OffloadOption,
    PolicyConfig,
    choose,
    observe_upload,
    segment_fits,
    should_request_round2,
)

__all__ = ["MAIN_POLICIES", "LinkScenario", "Policy", "PolicyKind", "feasible_frames", "replay"]

PolicyKind = Literal["fixed", "adaptive1", "adaptive2", "local"]


@dataclass(frozen=True, slots=True)
class LinkScenario:
    """The emulated uplink and frame stream the replay runs on (docs/offload.md)."""

    mean_bandwidth_bytes_per_s: float = 12_500.0  # 100 kbit/s: NB-IoT/LTE-M/poor Wi-Fi
    one_way_latency_s: float = 0.02
    burst_bytes: float = 300.0  # token-bucket depth
    frame_period_s: float = 0.5  # a frame every this many seconds

    @property
    def rtt_s(self) -> float:
        return 2 * self.one_way_latency_s


@dataclass(frozen=True)
class Policy:
    name: str
    kind: PolicyKind
    outcome: Outcome | None = None
    local_s: float = 0.0
    local_correct: np.ndarray | None = None
    robust: bool = False  # round 1 must also fit the pessimistic bandwidth
    progressive: bool = False  # may choose a progressive (deadline-cut) round 1


# The adaptive policies the issue asks about: choose among one-shot and progressive round 1
# (segments cut at the deadline), round 1 planned to fit even after a drop like those seen.
MAIN_POLICIES = (
    Policy("adaptive two-round", "adaptive2", robust=True, progressive=True),
    Policy("adaptive one-round", "adaptive1", robust=True, progressive=True),
)


def replay(
    policy: Policy,
    trace: BandwidthTrace,
    slo_s: float,
    *,
    num_frames: int,
    val_options: list[OffloadOption],
    test_outcomes: dict[tuple[str, int, str, int | None], Outcome],
    server_samples: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    seed: int,
    progressive: ProgressiveOutcome | None = None,
    policy_config: PolicyConfig | None = None,
    scenario: LinkScenario = LinkScenario(),
) -> dict[str, np.ndarray]:
    """Latency, correctness, bytes and rounds of each frame under one policy.

    Args:
        policy: what the device does for every frame.
        trace: the uplink's bandwidth over time (the token bucket runs on it).
        slo_s: the latency target of every frame.
        num_frames: frames replayed, one every `scenario.frame_period_s`, cycling over images.
        val_options: the policy's options (tables measured on validation images).
        test_outcomes: what each one-shot setting measured on each test image, by
            (sampling, k1, codec, quality).
        server_samples: measured server times per (k1, k2) for round 1 and round 2.
        seed: the server-time draws.
        progressive: the measured progressive outcome (needed if a policy may choose it).
        policy_config: the policy's knobs (default PolicyConfig()).
        scenario: the link's mean rate, latency, burst and the frame period.

    Returns:
        Per frame: latency_s, correct, bytes (payload + frame header) and rounds.
    """
    rng = np.random.default_rng(seed)
    bucket = TokenBucket(trace, burst_bytes=scenario.burst_bytes)
    # a cautious first guess
    estimate = BandwidthEstimate(scenario.mean_bandwidth_bytes_per_s / 2)
    rtt = scenario.rtt_s
    latency = np.zeros(num_frames)
    correct = np.zeros(num_frames, bool)
    sent = np.zeros(num_frames)
    rounds = np.zeros(num_frames, int)
    device_free = 0.0
    num_images = len(next(iter(test_outcomes.values())).correct1)
    for f in range(num_frames):
        arrival = f * scenario.frame_period_s
        i = f % num_images
        t = max(arrival, device_free)
        if policy.kind == "local":
            assert policy.local_correct is not None
            t += policy.local_s
            latency[f], correct[f] = t - arrival, policy.local_correct[i]
            device_free = t
            continue
        decision = None
        if policy.kind == "fixed":
            assert policy.outcome is not None
            outcome, k2 = policy.outcome, 0
        else:
            options = [
                o
                for o in val_options
                if (policy.kind == "adaptive2" or o.k2 == 0)
                and (policy.progressive or not o.progressive)
            ]
            decision = choose(
                options,
                bandwidth_bytes_per_s=estimate.planning_bytes_per_s,
                rtt_s=rtt,
                slo_s=slo_s,
                config=policy_config,
                pessimistic_bytes_per_s=estimate.pessimistic_ladder if policy.robust else None,
                expected_bytes_per_s=estimate.bytes_per_s,
            )
            o = decision.option
            # Robust policies ask for round 2 only if it fits after a drop like those seen.
            round2_rate = estimate.planning_bytes_per_s
            if policy.robust:
                round2_rate = min(round2_rate, estimate.pessimistic_bytes_per_s)
            if o.progressive:
                assert progressive is not None
                pf = _replay_progressive(
                    decision,
                    progressive,
                    i,
                    t,
                    arrival,
                    slo_s,
                    rtt,
                    bucket,
                    rng,
                    server_samples,
                    round2_rate,
                    round2_rate,
                )
                estimate = observe_upload(estimate, pf.sent - pf.sent2, pf.upload_s)
                latency[f], correct[f], sent[f], rounds[f] = (
                    pf.done - arrival,
                    pf.correct,
                    pf.sent - HTTP_OVERHEAD_BYTES * pf.rounds,
                    pf.rounds,
                )
                if pf.rounds == 2:
                    estimate = observe_upload(estimate, pf.sent2, pf.upload2_s)
                device_free = pf.done
                continue
            outcome = test_outcomes[(o.sampling, o.k1, o.codec, o.quality)]
            k2 = o.k2
        s = outcome.setting
        body = float(outcome.bytes1[i]) + HTTP_OVERHEAD_BYTES
        done = bucket.transmit(body, t)
        estimate = observe_upload(estimate, body, done - t)
        samples1, samples2 = server_samples[(s.k1, k2 if k2 else 0)]
        t = done + rtt + float(rng.choice(samples1))
        sent[f], rounds[f], correct[f] = body - HTTP_OVERHEAD_BYTES, 1, outcome.correct1[i]
        if (
            decision is not None
            and k2
            and should_request_round2(
                decision,
                confidence=float(outcome.confidence1[i]),
                elapsed_s=t - arrival,
                slo_s=slo_s,
                bandwidth_bytes_per_s=round2_rate,
                rtt_s=rtt,
            )
        ):
            body2 = float(outcome.bytes2[k2][i]) + HTTP_OVERHEAD_BYTES
            start = t
            done = bucket.transmit(body2, start)
            estimate = observe_upload(estimate, body2, done - start)
            t = done + rtt + float(rng.choice(samples2))
            sent[f] += body2 - HTTP_OVERHEAD_BYTES
            rounds[f] = 2
            correct[f] = outcome.correct2[k2][i]
        latency[f] = t - arrival
        device_free = t
    return {"latency_s": latency, "correct": correct, "bytes": sent, "rounds": rounds}


@dataclass
class _ProgressiveFrame:
    done: float
    correct: bool
    sent: float  # round-1 wire bytes (HTTP framing included) + round 2's
    upload_s: float
    rounds: int
    sent2: float = 0.0
    upload2_s: float = 0.0


def _replay_progressive(
    decision: Decision,
    outcome: ProgressiveOutcome,
    i: int,
    start: float,
    arrival: float,
    slo_s: float,
    rtt: float,
    bucket: TokenBucket,
    rng: np.random.Generator,
    server_samples: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    rate: float,
    round2_rate: float,
) -> _ProgressiveFrame:
    """One frame whose round 1 is progressive: segments go out while `segment_fits` says so
    (decided at each segment boundary from what this upload achieved, as the client does)."""
    option = decision.option
    cap = len(option.prefix_ends) - 1
    t, sent, last = start, 0.0, 0
    for j in range(cap + 1):
        wire = float(outcome.segment_bytes[i, j])
        if j == 0:
            wire += float(outcome.header_bytes[i, cap]) + HTTP_OVERHEAD_BYTES
        elif not segment_fits(
            option,
            j,
            sent_bytes=sent,
            upload_s=t - start,
            elapsed_s=t - arrival,
            segment_bytes=wire,
            bandwidth_bytes_per_s=rate,
            slo_s=slo_s,
            rtt_s=rtt,
        ):
            break
        t = bucket.transmit(wire, t)
        sent += wire
        last = j
    upload_s = t - start
    k = option.prefix_ends[last]
    k2 = option.k2 if last == cap else 0
    samples1, samples2 = server_samples[(k, k2)]
    t += rtt + float(rng.choice(samples1))
    frame = _ProgressiveFrame(t, bool(outcome.correct[i, last]), sent, upload_s, 1)
    if (
        k2
        and (last, k2) in outcome.correct2
        and should_request_round2(
            decision,
            confidence=float(outcome.confidence[i, last]),
            elapsed_s=t - arrival,
            slo_s=slo_s,
            bandwidth_bytes_per_s=round2_rate,
            rtt_s=rtt,
        )
    ):
        body2 = float(outcome.bytes2[(last, k2)][i]) + HTTP_OVERHEAD_BYTES
        begin = t
        done = bucket.transmit(body2, begin)
        frame.sent2, frame.upload2_s = body2, done - begin
        frame.done = done + rtt + float(rng.choice(samples2))
        frame.sent += body2
        frame.rounds = 2
        frame.correct = bool(outcome.correct2[(last, k2)][i])
    return frame


def feasible_frames(
    trace: BandwidthTrace,
    slo_s: float,
    num_frames: int,
    fixed: list[Outcome],
    server_p50: dict[int, float],
    scenario: LinkScenario = LinkScenario(),
) -> np.ndarray:
    """A frame's SLO is feasible if some fixed setting's round 1, sent at arrival over an idle
    link (full token bucket: an idle link refills its 300 B burst in a few ms) with median
    server time, would meet it: an oracle that knows the link's future."""
    feasible = np.zeros(num_frames, bool)
    num_images = len(fixed[0].correct1)
    for f in range(num_frames):
        arrival = f * scenario.frame_period_s
        i = f % num_images
        best = min(
            trace.time_to_carry(
                arrival,
                max(0.0, float(o.bytes1[i]) + HTTP_OVERHEAD_BYTES - scenario.burst_bytes),
            )
            - arrival
            + scenario.rtt_s
            + server_p50[o.setting.k1]
            for o in fixed
        )
        feasible[f] = best <= slo_s
    return feasible
