"""The SLO policy of adaptive offloading: bandwidth estimate + latency SLO -> what to send.

Owns the bandwidth estimator (EWMA and harmonic mean of the device's own upload samples), the
latency model of one and two rounds, and the choice of k1, codec/quality, tau and k2 that
maximises expected accuracy (from tables measured offline) subject to the SLO; also the online
decision whether round 2 still fits. Pure: imports only core, stdlib and numpy; no clock, no I/O
(time and measurements are arguments), so it is tested with plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from edgesplit.core.schema import FrozenModel, VersionedFile

__all__ = [
    "BandwidthEstimate",
    "Decision",
    "OffloadOption",
    "OffloadTables",
    "PolicyConfig",
    "choose",
    "observe_upload",
    "predicted_round_s",
    "segment_fits",
    "should_request_round2",
]

# HTTP request + response framing that travels beside the body (measured: ~200-300 B with
# httpx/uvicorn for these requests); counted in every transfer-time prediction.
HTTP_OVERHEAD_BYTES = 300


class OffloadOption(FrozenModel):
    """One setting the device can choose, with its offline-measured figures.

    k2 = 0 means one round. Byte figures are request bodies (frame header + payload).
    """

    sampling: Literal["random", "grid", "server"]
    codec: Literal["raw", "zlib", "png", "jpeg", "jpeg_shared", "webp"]
    quality: int | None = None
    k1: int = Field(gt=0)
    k2: int = Field(default=0, ge=0)
    tau: float = Field(default=0.0, ge=0.0, le=1.01)
    accuracy: float  # with round 2 taken whenever confidence < tau
    accuracy_round1: float  # round-1 answers only (round 2 skipped)
    round2_fraction: float = 0.0  # share of images whose confidence < tau
    bytes1_mean: float
    bytes1_p95: float
    bytes2_mean: float = 0.0
    bytes2_p95: float = 0.0
    server1_s: float  # p95 of measured server compute, round 1
    server2_s: float = 0.0  # p95, round 2 (with reuse)
    # Progressive round 1 (server order, segments cut at the deadline): k1 is the cap, and the
    # prefix_* lists hold round-1 figures after each whole segment (ends[-1] == k1). Round 2 is
    # asked for only when the whole cap arrived.
    prefix_ends: tuple[int, ...] = ()
    prefix_accuracy: tuple[float, ...] = ()
    prefix_bytes_mean: tuple[float, ...] = ()
    prefix_bytes_p95: tuple[float, ...] = ()
    prefix_server_s: tuple[float, ...] = ()
    # Images the accuracies above were measured on (None: unknown, e.g. a hand-made option).
    # `choose` uses it for the one-standard-error rule without the caller's help; tables files
    # written before it existed get it from OffloadTables.num_images when loaded.
    num_images: int | None = Field(default=None, ge=1)

    @property
    def progressive(self) -> bool:
        return bool(self.prefix_ends)

    @property
    def name(self) -> str:
        codec = self.codec if self.quality is None else f"{self.codec}{self.quality}"
        base = f"{self.sampling}-k{self.k1}-{codec}"
        if self.progressive:
            base = f"progressive-{codec}-" + "/".join(str(e) for e in self.prefix_ends)
        return base if self.k2 == 0 else f"{base}+k{self.k2}@{self.tau:g}"

    @property
    def expected_bytes(self) -> float:
        return self.bytes1_mean + self.round2_fraction * self.bytes2_mean


class OffloadTables(VersionedFile):
    """kind "edgesplit.offload_tables": all options measured on held-out validation images."""

    KIND: ClassVar[str] = "edgesplit.offload_tables"
    kind: Literal["edgesplit.offload_tables"] = "edgesplit.offload_tables"
    schema_version: int = 1
    num_images: int
    options: list[OffloadOption]

    @model_validator(mode="before")
    @classmethod
    def _options_know_their_sample_size(cls, data: Any) -> Any:
        """Options without `num_images` (files written before the field existed, or options
        built without it) were measured on the tables' `num_images` images."""
        if not isinstance(data, dict) or not isinstance(data.get("num_images"), int):
            return data
        n = data["num_images"]
        if n < 1:
            return data
        options = []
        for option in data.get("options", []):
            if isinstance(option, dict) and option.get("num_images") is None:
                option = {**option, "num_images": n}
            elif isinstance(option, OffloadOption) and option.num_images is None:
                option = option.model_copy(update={"num_images": n})
            options.append(option)
        return {**data, "options": options}


class PolicyConfig(FrozenModel):
    """Safety knobs of the policy."""

    safety_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)  # keep this share of the SLO spare
    accuracy_tolerance: float = Field(default=0.002, ge=0.0)  # within this, prefer fewer bytes
    # The one-standard-error rule: options closer to the best than one standard error of its
    # accuracy, sqrt(p(1-p)/n), are not told apart by the tables and count as equally accurate.
    # n is the best option's `num_images` (filled by calibrate and when tables are loaded);
    # `table_images` overrides it. Without either, or with the rule off, the tolerance is
    # `accuracy_tolerance`.
    one_standard_error: bool = True
    table_images: int | None = Field(default=None, ge=1)
    allow_two_rounds: bool = True
    prefer_progressive: bool = True  # at equal expected accuracy, prefer a cut-able round 1

    def tolerance(self, best_accuracy: float, num_images: int | None = None) -> float:
        """How far below `best_accuracy` (measured on `num_images` images) an option still
        counts as equally accurate."""
        n = self.table_images or num_images
        if not self.one_standard_error or n is None:
            return self.accuracy_tolerance
        p = min(max(best_accuracy, 0.0), 1.0)
        return max(self.accuracy_tolerance, math.sqrt(p * (1.0 - p) / n))


@dataclass(frozen=True, slots=True)
class BandwidthEstimate:
    """Upload-rate estimate from the device's own uploads (bytes/s); immutable, see observe.

    Besides the rate, it keeps how much slower than predicted recent uploads were
    (`slowdowns`: measured / predicted upload time) and plans with that ratio's upper quantile,
    a split-conformal-style margin that widens on jittery links and shrinks on steady ones.
    """

    ewma_bytes_per_s: float
    recent_bytes_per_s: tuple[float, ...] = ()
    slowdowns: tuple[float, ...] = ()
    long_rates: tuple[float, ...] = ()
    alpha: float = 0.3
    window: int = 5
    error_window: int = 10
    error_quantile: float = 0.8
    long_error_window: int = 100

    @property
    def harmonic_bytes_per_s(self) -> float:
        if not self.recent_bytes_per_s:
            return self.ewma_bytes_per_s
        return len(self.recent_bytes_per_s) / sum(1.0 / r for r in self.recent_bytes_per_s)

    @property
    def bytes_per_s(self) -> float:
        """The point estimate: min(EWMA, harmonic mean) of recent upload rates."""
        return min(self.ewma_bytes_per_s, self.harmonic_bytes_per_s)

    @property
    def safety_factor(self) -> float:
        """Upper quantile of recent slowdowns (at least 1; 1.5 until 5 uploads were seen)."""
        if len(self.slowdowns) < 5:
            return 1.5
        recent = np.array(self.slowdowns[-self.error_window :])
        return max(1.0, float(np.quantile(recent, self.error_quantile)))

    @property
    def pessimistic_bytes_per_s(self) -> float:
        """A near-worst case: a rate as low as the worst 2 % of the last 100 uploads (at most the
        point estimate); the first rung of `pessimistic_ladder`."""
        return self.pessimistic_ladder[0]

    @property
    def pessimistic_ladder(self) -> tuple[float, ...]:
        """Rates as low as the worst 2, 5, 10 and 20 % of the last 100 uploads (at most the
        point estimate), for `choose`. Until 10 uploads were seen: half the point estimate."""
        if len(self.long_rates) < 10:
            return (self.bytes_per_s / 2.0,)
        rates = np.array(self.long_rates)
        return tuple(
            min(self.bytes_per_s, float(np.quantile(rates, q))) for q in (0.02, 0.05, 0.1, 0.2)
        )

    @property
    def planning_bytes_per_s(self) -> float:
        """What the policy plans with: the point estimate divided by the safety factor."""
        return self.bytes_per_s / self.safety_factor


def observe_upload(
    estimate: BandwidthEstimate, num_bytes: float, upload_s: float
) -> BandwidthEstimate:
    """Fold one upload (num_bytes took upload_s) into the estimate; returns a new estimate.

    Samples below 1 ms are ignored (too short to time; a burst from a full token bucket).
    """
    if upload_s < 1e-3 or num_bytes <= 0:
        return estimate
    sample = num_bytes / upload_s
    slowdown = upload_s / (num_bytes / estimate.bytes_per_s)
    return replace(
        estimate,
        ewma_bytes_per_s=(1 - estimate.alpha) * estimate.ewma_bytes_per_s + estimate.alpha * sample,
        recent_bytes_per_s=(*estimate.recent_bytes_per_s, sample)[-estimate.window :],
        slowdowns=(*estimate.slowdowns, slowdown)[-estimate.long_error_window :],
        long_rates=(*estimate.long_rates, sample)[-estimate.long_error_window :],
    )


def predicted_round_s(
    body_bytes: float, server_s: float, bandwidth_bytes_per_s: float, rtt_s: float
) -> float:
    """Latency of one round: round trip + upload of body and HTTP framing + server compute."""
    return rtt_s + (body_bytes + HTTP_OVERHEAD_BYTES) / bandwidth_bytes_per_s + server_s


@dataclass(frozen=True, slots=True)
class Decision:
    option: OffloadOption
    predicted_round1_s: float
    predicted_round2_s: float
    feasible: bool  # round 1 predicted within the budget
    expected_accuracy: float


def choose(
    options: list[OffloadOption],
    *,
    bandwidth_bytes_per_s: float,
    rtt_s: float,
    slo_s: float,
    config: PolicyConfig | None = None,
    pessimistic_bytes_per_s: float | Sequence[float] | None = None,
    expected_bytes_per_s: float | None = None,
) -> Decision:
    """Pick the option with the best expected accuracy whose round 1 fits the SLO budget.

    A two-round option counts with its two-round accuracy only when both rounds are predicted
    to fit; otherwise with its round-1 accuracy (round 2 will be skipped online). Among options
    within `config.tolerance(best, n)` of the best (one standard error of the best option's
    accuracy over the n = `num_images` images it was measured on), a progressive one wins
    (config.prefer_progressive), then the one with fewest expected bytes.
    When no round 1 fits, the fastest option is returned with feasible=False (best effort).

    Progressive options are scored at `expected_bytes_per_s` (the point estimate; default: the
    planning rate): their upload is cut at the deadline, so a slower link costs patches, not the
    SLO, and planning them at a pessimistic rate would throw their upside away.

    With `pessimistic_bytes_per_s`, round 1 (a progressive option's first segment) must also
    meet the SLO at that rate. When no option could, the drop it stands for would sink every
    choice, so guarding against it buys nothing: the next, less pessimistic rate of the ladder
    (e.g. BandwidthEstimate.pessimistic_ladder: 2 %, 5 %, 10 %, 20 % quantiles of recent rates)
    is tried, and past the last one the choice is made without a guard.
    """
    ladder = (
        []
        if pessimistic_bytes_per_s is None
        else [pessimistic_bytes_per_s]
        if isinstance(pessimistic_bytes_per_s, float | int)
        else list(pessimistic_bytes_per_s)
    )
    for rate in ladder:  # from the most pessimistic rate to the least
        guarded = _choose(
            options,
            bandwidth_bytes_per_s=bandwidth_bytes_per_s,
            rtt_s=rtt_s,
            slo_s=slo_s,
            config=config,
            pessimistic_bytes_per_s=rate,
            expected_bytes_per_s=expected_bytes_per_s,
        )
        if guarded.feasible:
            return guarded
    return _choose(
        options,
        bandwidth_bytes_per_s=bandwidth_bytes_per_s,
        rtt_s=rtt_s,
        slo_s=slo_s,
        config=config,
        pessimistic_bytes_per_s=None,
        expected_bytes_per_s=expected_bytes_per_s,
    )


def _choose(
    options: list[OffloadOption],
    *,
    bandwidth_bytes_per_s: float,
    rtt_s: float,
    slo_s: float,
    config: PolicyConfig | None,
    pessimistic_bytes_per_s: float | None,
    expected_bytes_per_s: float | None,
) -> Decision:
    config = config or PolicyConfig()
    if not options:
        raise ValueError("the policy needs at least one option")
    budget_s = slo_s * (1.0 - config.safety_fraction)
    scored: list[tuple[float, float, Decision]] = []
    for option in options:
        if option.k2 and not config.allow_two_rounds:
            continue
        t1 = predicted_round_s(option.bytes1_p95, option.server1_s, bandwidth_bytes_per_s, rtt_s)
        t2 = (
            predicted_round_s(option.bytes2_p95, option.server2_s, bandwidth_bytes_per_s, rtt_s)
            if option.k2
            else 0.0
        )
        if option.progressive:
            if pessimistic_bytes_per_s is not None and (
                predicted_round_s(
                    option.prefix_bytes_p95[0],
                    option.prefix_server_s[0],
                    pessimistic_bytes_per_s,
                    rtt_s,
                )
                > slo_s
            ):
                continue  # even the first segment would miss after a drop like those seen
            scored.extend(
                _score_progressive(
                    option, expected_bytes_per_s or bandwidth_bytes_per_s, rtt_s, budget_s
                )
            )
            continue
        if pessimistic_bytes_per_s is not None and (
            predicted_round_s(option.bytes1_p95, option.server1_s, pessimistic_bytes_per_s, rtt_s)
            > slo_s
        ):
            continue  # round 1 would miss the SLO if the link dropped as it has before
        if t1 > budget_s:
            continue
        both_fit = option.k2 > 0 and t1 + t2 <= budget_s
        accuracy = option.accuracy if both_fit else option.accuracy_round1
        expected_bytes = option.expected_bytes if both_fit else option.bytes1_mean
        scored.append((accuracy, expected_bytes, Decision(option, t1, t2, True, accuracy)))
    if not scored:
        fastest = min(
            (o for o in options if not o.k2 or config.allow_two_rounds),
            key=lambda o: predicted_round_s(
                o.bytes1_p95, o.server1_s, bandwidth_bytes_per_s, rtt_s
            ),
        )
        t1 = predicted_round_s(fastest.bytes1_p95, fastest.server1_s, bandwidth_bytes_per_s, rtt_s)
        return Decision(fastest, t1, 0.0, False, fastest.accuracy_round1)
    best, _, top = max(scored, key=lambda s: s[0])
    close = [s for s in scored if s[0] >= best - config.tolerance(best, top.option.num_images)]
    if config.prefer_progressive:
        # A progressive round 1 is cut at the deadline instead of missing it when the link
        # drops mid-upload: at equal expected accuracy that is worth its extra header bytes.
        return min(close, key=lambda s: (not s[2].option.progressive, s[1], -s[0]))[2]
    return min(close, key=lambda s: (s[1], -s[0]))[2]


def _score_progressive(
    option: OffloadOption, bandwidth_bytes_per_s: float, rtt_s: float, budget_s: float
) -> list[tuple[float, float, Decision]]:
    """A progressive option's expected accuracy: that of the longest prefix predicted to fit
    (the upload is cut there), or the two-round accuracy when the whole cap and round 2 fit.
    Feasible when the first segment fits; otherwise not scored (the fallback takes over)."""
    fits = [
        j
        for j in range(len(option.prefix_ends))
        if predicted_round_s(
            option.prefix_bytes_p95[j], option.prefix_server_s[j], bandwidth_bytes_per_s, rtt_s
        )
        <= budget_s
    ]
    if not fits:
        return []
    j = fits[-1]
    t1 = predicted_round_s(
        option.prefix_bytes_p95[j], option.prefix_server_s[j], bandwidth_bytes_per_s, rtt_s
    )
    whole = j == len(option.prefix_ends) - 1
    t2 = (
        predicted_round_s(option.bytes2_p95, option.server2_s, bandwidth_bytes_per_s, rtt_s)
        if option.k2
        else 0.0
    )
    both_fit = whole and option.k2 > 0 and t1 + t2 <= budget_s
    if option.k2 and not both_fit:
        return []  # the one-round option with the same cap scores this case
    accuracy = option.accuracy if both_fit else option.prefix_accuracy[j]
    expected_bytes = option.expected_bytes if both_fit else option.prefix_bytes_mean[j]
    return [(accuracy, expected_bytes, Decision(option, t1, t2, True, accuracy))]


def segment_fits(
    option: OffloadOption,
    segment: int,
    *,
    sent_bytes: float,
    upload_s: float,
    elapsed_s: float,
    segment_bytes: float,
    bandwidth_bytes_per_s: float,
    slo_s: float,
    rtt_s: float,
    config: PolicyConfig | None = None,
) -> bool:
    """Online rule of a progressive upload: send segment `segment` (index into prefix_ends)?

    The first segment is always sent (it is the least the server can use). A later one is sent
    when, at the rate seen so far in this upload (capped by the estimate: a burst from a full
    token bucket is not a rate), it would still arrive in time for the server to answer within
    the SLO budget. `elapsed_s` counts from the frame's start (queueing included), `sent_bytes`
    and `upload_s` from the upload's.
    """
    config = config or PolicyConfig()
    if segment == 0:
        return True
    rate = bandwidth_bytes_per_s
    if upload_s > 0 and sent_bytes > 0:
        rate = min(rate, sent_bytes / upload_s)
    finish_s = elapsed_s + segment_bytes / rate
    return finish_s + rtt_s + option.prefix_server_s[segment] <= slo_s * (
        1.0 - config.safety_fraction
    )


def should_request_round2(
    decision: Decision,
    *,
    confidence: float,
    elapsed_s: float,
    slo_s: float,
    bandwidth_bytes_per_s: float,
    rtt_s: float,
    config: PolicyConfig | None = None,
) -> bool:
    """Online check after round 1: low confidence and round 2 still fits what is left."""
    config = config or PolicyConfig()
    option = decision.option
    if option.k2 == 0 or confidence >= option.tau:
        return False
    t2 = predicted_round_s(option.bytes2_p95, option.server2_s, bandwidth_bytes_per_s, rtt_s)
    return elapsed_s + t2 <= slo_s * (1.0 - config.safety_fraction)
