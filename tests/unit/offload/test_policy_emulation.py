"""The pure SLO policy, the bandwidth estimator and the token-bucket link emulation."""

from __future__ import annotations

import numpy as np
import pytest

from edgesplit.offload.emulation import BandwidthTrace, TokenBucket, make_trace
from edgesplit.offload.policy import (
    HTTP_OVERHEAD_BYTES,
    BandwidthEstimate,
    OffloadOption,
    OffloadTables,
    PolicyConfig,
    choose,
    observe_upload,
    predicted_round_s,
    should_request_round2,
)


def _option(k1: int, acc: float, nbytes: float, k2: int = 0, acc2: float = 0.0) -> OffloadOption:
    return OffloadOption(
        sampling="grid",
        codec="raw",
        k1=k1,
        k2=k2,
        tau=0.9 if k2 else 0.0,
        accuracy=acc2 if k2 else acc,
        accuracy_round1=acc,
        round2_fraction=0.3 if k2 else 0.0,
        bytes1_mean=nbytes,
        bytes1_p95=nbytes,
        bytes2_mean=12.5 * k2,
        bytes2_p95=12.5 * k2,
        server1_s=0.01,
        server2_s=0.01 if k2 else 0.0,
    )


OPTIONS = [
    _option(8, 0.70, 600),
    _option(16, 0.80, 1100),
    _option(32, 0.85, 2100),
    _option(8, 0.70, 600, k2=8, acc2=0.78),
]


def test_latency_model() -> None:
    assert predicted_round_s(700, 0.01, 1000.0, 0.02) == pytest.approx(
        0.02 + (700 + HTTP_OVERHEAD_BYTES) / 1000 + 0.01
    )


def test_choose_takes_the_most_accurate_option_that_fits() -> None:
    # budget 0.9 * 3 s = 2.7 s at 1000 B/s: 32 patches need 0.02 + 2.4 + 0.01 = 2.43 s -> fits
    decision = choose(OPTIONS, bandwidth_bytes_per_s=1000.0, rtt_s=0.02, slo_s=3.0)
    assert decision.option.k1 == 32
    assert decision.feasible
    # 1.6 s: k=16 needs 1.43 s; k=8 + round 2 needs 0.93 + 0.43 s = 1.36 s but is less accurate
    decision = choose(OPTIONS, bandwidth_bytes_per_s=1000.0, rtt_s=0.02, slo_s=1.6)
    assert decision.option.k1 == 16
    # 1.2 s: only 8 patches fit; the two-round option's round 2 does not -> counts as round 1,
    # ties at 0.70 and the cheaper (fewer expected bytes) one-round option wins
    decision = choose(OPTIONS, bandwidth_bytes_per_s=1000.0, rtt_s=0.02, slo_s=1.2)
    assert decision.option.k1 == 8
    assert decision.expected_accuracy == pytest.approx(0.70)


def test_two_rounds_win_when_both_fit_and_beat_one_round() -> None:
    options = [*OPTIONS[:1], OPTIONS[3]]
    decision = choose(options, bandwidth_bytes_per_s=1000.0, rtt_s=0.02, slo_s=1.6)
    assert decision.option.k2 == 8
    assert decision.expected_accuracy == pytest.approx(0.78)
    no_two = choose(
        options,
        bandwidth_bytes_per_s=1000.0,
        rtt_s=0.02,
        slo_s=1.6,
        config=PolicyConfig(allow_two_rounds=False),
    )
    assert no_two.option.k2 == 0


def test_one_standard_error_rule_prefers_fewer_bytes_among_indistinguishable() -> None:
    # 0.85 vs 0.84 differ by less than one standard error on 600 images (sqrt(.85*.15/600) =
    # 1.5 points): the tables cannot tell them apart, so the cheaper option wins; on 100 000
    # images (SE 0.1 points) the more accurate one does.
    options = [_option(32, 0.85, 2100), _option(24, 0.84, 1500), _option(16, 0.80, 1100)]
    kwargs = {"bandwidth_bytes_per_s": 1000.0, "rtt_s": 0.02, "slo_s": 3.0}
    assert choose(options, **kwargs).option.k1 == 32  # default: within 0.2 points only
    few = PolicyConfig(table_images=600)
    assert few.tolerance(0.85) == pytest.approx((0.85 * 0.15 / 600) ** 0.5)
    assert choose(options, config=few, **kwargs).option.k1 == 24
    many = PolicyConfig(table_images=100_000)
    assert choose(options, config=many, **kwargs).option.k1 == 32
    assert many.tolerance(0.85) == pytest.approx(0.002)  # the floor


def test_options_carry_their_sample_size_so_choose_needs_no_config() -> None:
    # The same options measured on 600 images: with no config at all (as OffloadClient.classify
    # without a policy) choose applies the one-standard-error rule from the options' num_images.
    options = [
        _option(32, 0.85, 2100).model_copy(update={"num_images": 600}),
        _option(24, 0.84, 1500).model_copy(update={"num_images": 600}),
        _option(16, 0.80, 1100).model_copy(update={"num_images": 600}),
    ]
    kwargs = {"bandwidth_bytes_per_s": 1000.0, "rtt_s": 0.02, "slo_s": 3.0}
    assert choose(options, **kwargs).option.k1 == 24
    # the ablation switch and the override still work
    off = PolicyConfig(one_standard_error=False)
    assert choose(options, config=off, **kwargs).option.k1 == 32
    assert choose(options, config=PolicyConfig(table_images=100_000), **kwargs).option.k1 == 32


def test_tables_fill_each_options_sample_size_and_old_files_load() -> None:
    old_style = {  # a tables file written before options carried num_images
        "kind": "edgesplit.offload_tables",
        "schema_version": 1,
        "num_images": 600,
        "options": [_option(16, 0.8, 1100).model_dump(exclude={"num_images"})],
    }
    tables = OffloadTables.model_validate(old_style)
    assert [o.num_images for o in tables.options] == [600]
    built = OffloadTables(num_images=250, options=[_option(8, 0.7, 600)])
    assert built.options[0].num_images == 250
    measured = _option(8, 0.7, 600).model_copy(update={"num_images": 99})
    assert OffloadTables(num_images=250, options=[measured]).options[0].num_images == 99


def test_calibrated_options_carry_num_images() -> None:
    from edgesplit.offload.calibrate import (
        Outcome,
        ProgressiveOutcome,
        Setting,
        build_tables,
        progressive_options,
    )

    n = 7
    rng = np.random.default_rng(0)
    outcome = Outcome(
        Setting("server", 8, "zlib"),
        rng.random(n) < 0.7,
        rng.random(n),
        np.full(n, 300),
        correct2={8: rng.random(n) < 0.8},
        bytes2={8: np.full(n, 200)},
    )
    server_s = {(8, 0): (0.01, 0.0), (8, 8): (0.01, 0.01), (4, 0): (0.01, 0.0)}
    tables = build_tables([outcome], server_s)
    assert tables.num_images == n
    assert tables.options
    assert all(o.num_images == n for o in tables.options)
    progressive = ProgressiveOutcome(
        (4, 8),
        "webp",
        50,
        np.full((n, 2), 150),
        np.full((n, 2), 100),
        rng.random((n, 2)) < 0.7,
        rng.random((n, 2)),
    )
    prog_options = progressive_options(progressive, server_s)
    assert prog_options
    assert all(o.num_images == n for o in prog_options)


def test_infeasible_returns_fastest_best_effort() -> None:
    decision = choose(OPTIONS, bandwidth_bytes_per_s=100.0, rtt_s=0.02, slo_s=0.5)
    assert not decision.feasible
    assert decision.option.bytes1_p95 == 600


def test_round2_online_check_uses_remaining_budget() -> None:
    decision = choose([OPTIONS[3]], bandwidth_bytes_per_s=1000.0, rtt_s=0.02, slo_s=2.0)
    kwargs = {"slo_s": 2.0, "bandwidth_bytes_per_s": 1000.0, "rtt_s": 0.02}
    assert should_request_round2(decision, confidence=0.5, elapsed_s=0.9, **kwargs)
    assert not should_request_round2(decision, confidence=0.95, elapsed_s=0.9, **kwargs)
    assert not should_request_round2(decision, confidence=0.5, elapsed_s=1.6, **kwargs)


def test_estimator_ewma_harmonic_and_short_samples() -> None:
    estimate = BandwidthEstimate(1000.0, alpha=0.5, window=3)
    estimate = observe_upload(estimate, 2000, 1.0)  # sample 2000
    assert estimate.ewma_bytes_per_s == pytest.approx(1500.0)
    estimate = observe_upload(estimate, 500, 1.0)  # sample 500
    assert estimate.harmonic_bytes_per_s == pytest.approx(2 / (1 / 2000 + 1 / 500))
    assert estimate.bytes_per_s == min(estimate.ewma_bytes_per_s, estimate.harmonic_bytes_per_s)
    assert observe_upload(estimate, 500, 1e-5) == estimate  # too short to time


def test_token_bucket_on_a_steady_trace() -> None:
    trace = BandwidthTrace("s", 0.1, np.full(10, 1000.0))
    bucket = TokenBucket(trace, burst_bytes=100.0)
    assert bucket.transmit(500, 0.0) == pytest.approx(0.5)  # empty bucket at t=0
    assert bucket.transmit(500, 0.2) == pytest.approx(1.0)  # waits for the previous upload
    assert bucket.transmit(50, 5.0) == pytest.approx(5.0)  # burst tokens: instant
    assert bucket.transmit(1050, 5.0) == pytest.approx(6.0)  # 50 tokens left, 1000 to wait for


def test_trace_integral_inverts_and_wraps() -> None:
    trace = make_trace("lte", 20_000.0, duration_s=10.0, seed=3)
    for start, amount in [(0.0, 1000.0), (3.33, 25_000.0), (9.9, 50_000.0)]:
        end = trace.time_to_carry(start, amount)
        assert trace.bytes_between(start, end) == pytest.approx(amount, rel=1e-6)


@pytest.mark.parametrize("name", ["steady", "step", "random_walk", "wifi", "lte"])
def test_named_traces_have_the_requested_mean(name: str) -> None:
    trace = make_trace(name, 25_000.0, seed=1)  # type: ignore[arg-type]
    assert trace.mean_rate_bytes_per_s() == pytest.approx(25_000.0)
    assert (trace.rates_bytes_per_s >= 0).all()


def test_safety_factor_tracks_recent_slowdowns() -> None:
    estimate = BandwidthEstimate(1000.0, error_window=10, error_quantile=0.8)
    assert estimate.safety_factor == 1.5  # too few uploads seen: a fixed cautious margin
    for _ in range(10):
        estimate = observe_upload(estimate, 1000, 1.0)  # exactly as predicted
    assert estimate.safety_factor == pytest.approx(1.0)
    assert estimate.planning_bytes_per_s == pytest.approx(estimate.bytes_per_s)
    for _ in range(4):  # a fade: uploads take 3x longer than the estimate says
        estimate = observe_upload(estimate, 1000, 3.0 * 1000 / estimate.bytes_per_s)
    assert estimate.safety_factor > 2.0
    assert estimate.planning_bytes_per_s < estimate.bytes_per_s / 2


def test_pessimistic_bandwidth_keeps_round1_small() -> None:
    # typical 1000 B/s fits 32 patches in 3 s; if the link may drop to 450 B/s only 8 do
    kwargs = {"bandwidth_bytes_per_s": 1000.0, "rtt_s": 0.02, "slo_s": 3.0}
    assert choose(OPTIONS, **kwargs).option.k1 == 32
    robust = choose(OPTIONS, pessimistic_bytes_per_s=450.0, **kwargs)
    assert robust.option.k1 == 8
    assert robust.option.k2 == 8  # and the opportunistic round 2 takes back some accuracy
    estimate = BandwidthEstimate(1000.0)
    assert estimate.pessimistic_bytes_per_s == pytest.approx(500.0)  # before 10 uploads
    for _ in range(20):
        estimate = observe_upload(estimate, 1000, 1.0)
    assert estimate.pessimistic_bytes_per_s == pytest.approx(estimate.bytes_per_s)


def test_pessimistic_ladder_steps_down_to_a_guard_some_option_survives() -> None:
    kwargs = {"bandwidth_bytes_per_s": 1000.0, "rtt_s": 0.02, "slo_s": 3.0}
    # At 100 B/s nothing survives (the drop would sink every choice): the 450 B/s rung decides.
    assert choose(OPTIONS, pessimistic_bytes_per_s=[100.0, 450.0], **kwargs).option.k1 == 8
    # No rung leaves anything: plan without a guard rather than give up.
    unguarded = choose(OPTIONS, pessimistic_bytes_per_s=[100.0, 200.0], **kwargs)
    assert unguarded.option.k1 == 32
    assert unguarded.feasible
    estimate = BandwidthEstimate(1000.0)
    for i in range(100):  # mostly 1000 B/s, a few uploads at 100 B/s
        estimate = observe_upload(estimate, 1000, 10.0 if i % 25 == 0 else 1.0)
    ladder = estimate.pessimistic_ladder
    assert ladder[0] < ladder[-1]
    assert list(ladder) == sorted(ladder)
    assert ladder[0] == pytest.approx(100.0, rel=0.5)
