"""Generation planner: the decode cost model, objectives, KV memory, optimality claims."""

from __future__ import annotations

import itertools

import pytest

from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
from edgesplit.core.plan import StagePlacement
from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.errors import PlanInfeasibleError
from edgesplit.planners.generation import (
    DecodeBatchScaling,
    GenerationProfile,
    plan_generation,
    predict_generation,
)

HIDDEN_BYTES = 3072.0


def toy_profile(num_blocks: int = 6, unit_s: float = 0.01, kv: float = 1000.0) -> GenerationProfile:
    names = [
        "embed",
        *(f"block{i}.{h}" for i in range(num_blocks) for h in ("attn", "mlp")),
        "head",
    ]

    def profile(scale: float, tokens: int) -> ModelProfile:
        units = tuple(
            UnitProfile(
                name=n,
                param_bytes=1e6,
                output_bytes=8.0 if n == "head" else HIDDEN_BYTES * tokens,
                time_s={"fast": unit_s * scale, "slow": 3 * unit_s * scale},
            )
            for n in names
        )
        return ModelProfile(model="toy", batch_size=1, input_bytes=8.0 * tokens, units=units)

    return GenerationProfile(
        model="toy",
        decode=profile(1.0, 1),
        prefill=profile(4.0, 16),
        prompt_length=16,
        cache_length=64,
        kv_bytes_per_token=tuple(kv if n.endswith(".attn") else 0.0 for n in names),
    )


def cluster(
    num: int, latency_ms: float = 3.0, mbps: float = 50.0, memory_mb: float = 100.0
) -> Cluster:
    return Cluster(
        source="d0",
        defaults=LinkDefaults(bandwidth_mbps=mbps, latency_ms=latency_ms),
        devices=tuple(
            DeviceSpec(name=f"d{i}", kind="fast", memory_mb=memory_mb) for i in range(num)
        ),
    )


def split_at_7(n: int) -> list[StagePlacement]:
    return [
        StagePlacement(device="d0", start=0, end=7),
        StagePlacement(device="d1", start=7, end=n),
    ]


def test_prediction_follows_the_ring_formula() -> None:
    profile, c = toy_profile(), cluster(2)
    n = profile.decode.num_units
    stages = split_at_7(n)
    g = predict_generation(profile, c, stages, num_sequences=4)
    hop = 0.003 + HIDDEN_BYTES / 50e6 * 8
    back = 0.003 + 8 / 50e6 * 8
    assert g.time_per_token_s == pytest.approx(n * 0.01 + hop + back)
    assert g.bottleneck_s == pytest.approx(7 * 0.01)
    assert g.tokens_per_s == pytest.approx(min(4 / g.time_per_token_s, 1 / g.bottleneck_s))
    assert g.stages[0].kv_cache_bytes == pytest.approx(3 * 1000 * 2048 * 4)


def test_one_sequence_is_fastest_on_one_device_and_concurrency_uses_more() -> None:
    profile, c = toy_profile(), cluster(4)
    latency = plan_generation(profile, c, objective="time_per_token")
    assert [s.device for s in latency.plan.stages] == ["d0"]  # every extra device adds hops
    assert latency.generation.optimal
    single = plan_generation(profile, c, objective="tokens_per_s", num_sequences=1)
    assert len(single.plan.stages) == 1
    many = plan_generation(profile, c, objective="tokens_per_s", num_sequences=8)
    assert len(many.plan.stages) == 4
    assert many.generation.tokens_per_s > 3 * single.generation.tokens_per_s


def test_kv_cache_memory_forces_a_split_and_infeasible_is_explained() -> None:
    profile = toy_profile(kv=5_000.0)
    # 14 MB of params + KV 6 layers x 5 kB x 512 tokens = 15.4 MB per sequence.
    c = cluster(3, memory_mb=60.0)
    one = plan_generation(profile, c, objective="time_per_token", max_context=512, num_sequences=1)
    assert len(one.plan.stages) == 1
    four = plan_generation(profile, c, objective="time_per_token", max_context=512, num_sequences=4)
    assert len(four.plan.stages) >= 2
    assert all(s.memory_bytes <= s.memory_capacity_bytes for s in four.generation.stages)
    with pytest.raises(PlanInfeasibleError, match="KV cache"):
        plan_generation(profile, c, max_context=512, num_sequences=64)


# -- the batch dimension ([Note: the batch dimension] in planners/generation.py) ------------------
def batched_profile(num_blocks: int = 6) -> GenerationProfile:
    base = toy_profile(num_blocks=num_blocks)
    n = base.decode.num_units
    points = ((2, 1.5), (4, 2.0), (8, 3.0))
    return base.model_copy(
        update={
            "decode_batch": tuple(
                DecodeBatchScaling(batch=b, unit_scale=(r,) * n) for b, r in points
            )
        }
    )


def test_unit_scale_interpolates_and_extrapolates() -> None:
    profile = batched_profile()
    assert profile.unit_scale(1) == [1.0] * profile.decode.num_units
    assert profile.unit_scale(3)[0] == pytest.approx(1.75)  # type: ignore[index]
    assert profile.unit_scale(16)[0] == pytest.approx(5.0)  # type: ignore[index]
    assert toy_profile().unit_scale(8) is None


def test_batched_prediction_by_hand() -> None:
    profile, c = batched_profile(), cluster(2)
    n = profile.decode.num_units
    stages = split_at_7(n)
    g = predict_generation(profile, c, stages, num_sequences=8)
    # 2 micro-batches (one per stage) of 4 rows; a 4-row step costs 2.0x a 1-row step.
    rows, scale = 4, 2.0
    hop = 0.003 + rows * HIDDEN_BYTES / 50e6 * 8
    back = 0.003 + rows * 8 / 50e6 * 8
    latency = scale * n * 0.01 + hop + back  # the source is d0: tokens in cost nothing
    bottleneck = scale * 7 * 0.01
    assert (g.batch_scaling, g.micro_batches, g.batch_rows) == ("measured", 2, 4)
    assert g.bottleneck_s == pytest.approx(bottleneck)
    assert g.tokens_per_s == pytest.approx(min(8 / latency, rows / bottleneck))
    assert g.concurrent_time_per_token_s == pytest.approx(max(latency, 2 * bottleneck))
    # One sequence is not batched: the old ring formula.
    one = predict_generation(profile, c, stages, num_sequences=1)
    assert one.tokens_per_s == pytest.approx(1 / one.time_per_token_s)
    assert one.batch_rows == 1
    # Without batch data (profiles made before it): one row per frame, stated.
    old = predict_generation(toy_profile(), c, stages, num_sequences=8)
    assert old.batch_scaling == "none"
    assert old.tokens_per_s == pytest.approx(min(8 / old.time_per_token_s, 1 / old.bottleneck_s))


def test_a_profile_without_batch_data_still_loads() -> None:
    data = toy_profile().model_dump(mode="json")
    data.pop("decode_batch")
    loaded = GenerationProfile.model_validate(data)
    assert loaded.decode_batch == ()
    assert plan_generation(loaded, cluster(2), num_sequences=4).generation.batch_scaling == "none"


def _brute_force(profile: GenerationProfile, c: Cluster, sequences: int) -> float:
    n = profile.decode.num_units
    best = 0.0
    for k in range(1, len(c.devices) + 1):
        for order in itertools.permutations(c.device_names, k):
            for cuts in itertools.combinations(range(1, n), k - 1):
                bounds = [0, *cuts, n]
                stages = [
                    StagePlacement(device=d, start=a, end=b)
                    for d, a, b in zip(order, bounds, bounds[1:], strict=False)
                ]
                for slots in range(1, sequences + 1):  # the planner picks the micro-batches
                    g = predict_generation(
                        profile, c, stages, num_sequences=sequences, micro_batches=slots
                    )
                    best = max(best, g.tokens_per_s)
    return best


@pytest.mark.parametrize(
    ("batched", "sequences"),
    [(False, 1), (False, 2), (False, 3), (True, 2), (True, 3), (True, 5), (True, 8)],
)
def test_tokens_per_s_matches_brute_force_on_a_mixed_cluster(batched: bool, sequences: int) -> None:
    profile = batched_profile(num_blocks=3) if batched else toy_profile(num_blocks=3)
    c = Cluster(
        source="d0",
        defaults=LinkDefaults(bandwidth_mbps=100.0, latency_ms=1.0),
        devices=(
            DeviceSpec(name="d0", kind="slow", memory_mb=100),
            DeviceSpec(name="d1", kind="fast", memory_mb=100),
            DeviceSpec(name="d2", kind="fast", memory_mb=100),
        ),
    )
    planned = plan_generation(profile, c, num_sequences=sequences)
    brute = _brute_force(profile, c, sequences)
    assert planned.generation.optimal
    assert planned.generation.tokens_per_s == pytest.approx(brute)
    assert planned.generation.upper_bound_tokens_per_s == pytest.approx(brute, rel=1e-4)


def test_batching_data_changes_the_plan_for_a_target_concurrency() -> None:
    """With a strong batching gain, 8 sequences in one micro-batch on one device beat the
    interleaved split the batch-1 model picks; the plan records its micro-batch count."""
    base = toy_profile()
    n = base.decode.num_units
    cheap = base.model_copy(
        update={"decode_batch": (DecodeBatchScaling(batch=8, unit_scale=(1.2,) * n),)}
    )
    c = cluster(4, latency_ms=20.0)
    interleaved = plan_generation(base, c, num_sequences=8, max_context=256)
    assert len(interleaved.plan.stages) > 1
    batched = plan_generation(cheap, c, num_sequences=8, max_context=256)
    g = batched.generation
    whole = [StagePlacement(device="d0", start=0, end=n)]
    one_batch = predict_generation(cheap, c, whole, num_sequences=8, micro_batches=1)
    assert one_batch.tokens_per_s == pytest.approx(8 / (1.2 * n * 0.01))  # by hand
    assert g.optimal
    assert g.tokens_per_s >= one_batch.tokens_per_s * (1 - 1e-9)
    assert g.tokens_per_s > interleaved.generation.tokens_per_s
    assert batched.plan.planner.options["micro_batches"] == g.micro_batches


def test_stage_times_weight_each_units_batch_ratio_by_its_time() -> None:
    profile = toy_profile(num_blocks=2)  # units: embed, 4 block halves, head; 0.01 s each
    n = profile.decode.num_units
    decode_s, prefill_s, points = profile.stage_times("fast", 0, 3)
    assert (decode_s, prefill_s) == pytest.approx((0.03, 0.04 * 3 / 16))
    assert points == ()  # no batch data: the executor's r(B) = B
    ratios = [1.0, 2.0, 2.0, 3.0, 3.0, 4.0]  # per unit, at 4 rows
    batched = profile.model_copy(
        update={"decode_batch": (DecodeBatchScaling(batch=4, unit_scale=tuple(ratios)),)}
    )
    decode_s, prefill_s, points = batched.stage_times("slow", 1, n)
    assert decode_s == pytest.approx(0.15)
    assert prefill_s == pytest.approx(0.6 / 16)
    assert [b for b, _ in points] == [4]
    assert points[0][1] == pytest.approx((2 + 2 + 3 + 3 + 4) / 5)
