"""Generation planner: the decode cost model, objectives, KV memory, optimality claims."""

from __future__ import annotations

import itertools

import pytest

from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
from edgesplit.core.plan import StagePlacement
from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.errors import PlanInfeasibleError
from edgesplit.planners.generation import (
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


def test_prediction_follows_the_ring_formula() -> None:
    profile, c = toy_profile(), cluster(2)
    n = profile.decode.num_units
    stages = [
        StagePlacement(device="d0", start=0, end=7),
        StagePlacement(device="d1", start=7, end=n),
    ]
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


def _brute_force_tokens_per_s(profile: GenerationProfile, c: Cluster, sequences: int) -> float:
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
                g = predict_generation(profile, c, stages, num_sequences=sequences)
                best = max(best, g.tokens_per_s)
    return best


@pytest.mark.parametrize("sequences", [1, 2, 3])
def test_tokens_per_s_matches_brute_force_on_a_mixed_cluster(sequences: int) -> None:
    profile = toy_profile(num_blocks=3)
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
    brute = _brute_force_tokens_per_s(profile, c, sequences)
    assert planned.generation.tokens_per_s <= brute * (1 + 1e-9)
    if planned.generation.optimal:
        assert planned.generation.tokens_per_s == pytest.approx(brute)
    assert planned.generation.tokens_per_s >= 0.9 * brute
