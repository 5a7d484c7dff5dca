"""Stage dtypes and link encodings through the runtime (issue 17).

Real compute: a plan whose stages hold bfloat16 or int8 weights returns, through Ray actors and
TCP frames, exactly (atol 0) what the unsplit model converted the same way returns in process,
and float32 stays exact; a plan with int8-token links returns exactly what the same stages
chained in process with the same encode/decode at each cut return. Tolerance discipline: the
wire between stages is float32 (or the link encoding, decoded to float32), every stage computes
the same operations on the same inputs as in process, so equality is bitwise; the only
allowance is none. Emulated compute: per-dtype times and encoded bytes drive the run's period.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import toy_cluster
from edgesplit.core.cost import CostModel
from edgesplit.core.link_codec import decode_tensors, encode_tensors
from edgesplit.core.plan import Plan, PlannerInfo, StagePlacement
from edgesplit.core.precision import LinkEncoding, StageDtype
from edgesplit.core.profile import ModelProfile, UnitDtypeProfile, UnitProfile
from edgesplit.models import (
    build_model,
    build_stage,
    example_input,
    model_spec_from_name,
    unit_names,
    unsplit_output,
)
from edgesplit.runtime import RuntimeConfig, run_plan

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH = 2
NUM_REQUESTS = 6
SEED = 300


def _profile(model: str, names: list[str]) -> ModelProfile:
    figures = {"k": 0.001}
    units = tuple(
        UnitProfile(
            name=n,
            param_bytes=1.0,
            output_bytes=1.0,
            time_s=figures,
            by_dtype={
                "bfloat16": UnitDtypeProfile(param_bytes=0.5, time_s=figures),
                "int8": UnitDtypeProfile(param_bytes=0.25, time_s=figures),
            },
        )
        for n in names
    )
    return ModelProfile(model=model, batch_size=BATCH, input_bytes=1.0, units=units)


def _plan(
    profile: ModelProfile,
    cluster: object,
    cuts: tuple[int, int],
    dtypes: tuple[StageDtype, ...],
    encodings: tuple[LinkEncoding, ...],
) -> Plan:
    bounds = (0, *cuts, profile.num_units)
    stages = tuple(
        StagePlacement(
            device=f"r{i}",
            start=bounds[i],
            end=bounds[i + 1],
            dtype=dtypes[i],
            link_encoding=encodings[i],
        )
        for i in range(3)
    )
    cost = CostModel(profile, cluster)  # type: ignore[arg-type]
    return Plan(
        model=profile.model,
        profile_hash=profile.digest(),
        cluster_hash=cluster.digest(),  # type: ignore[attr-defined]
        batch_size=profile.batch_size,
        objective="throughput",
        planner=PlannerInfo(name="manual"),
        stages=stages,
        predicted=cost.predict(stages),
    )


def _run(plan: Plan, profile: ModelProfile, cluster: object, spec: object) -> dict[int, np.ndarray]:
    outputs: dict[int, np.ndarray] = {}
    config = RuntimeConfig(compute="real", placement="local", seed=SEED)
    report = run_plan(
        plan,
        cluster,  # type: ignore[arg-type]
        profile,
        spec,
        config,
        requests=NUM_REQUESTS,
        on_result=lambda rid, out: outputs.__setitem__(rid, out["logits"]),
    )
    assert (report.requests.lost, report.requests.errored) == (0, 0)
    assert sorted(outputs) == list(range(NUM_REQUESTS))
    return outputs


@pytest.mark.parametrize("preset", ["vit-tiny", "gpt2-tiny"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_split_run_equals_the_unsplit_model_in_the_same_dtype(
    ray_cluster: object, preset: str, dtype: StageDtype
) -> None:
    spec = model_spec_from_name(preset)
    names = unit_names(spec)
    profile, cluster = _profile(preset, names), toy_cluster(["r0", "r1", "r2"])
    cuts = (len(names) // 3, 2 * len(names) // 3)
    plan = _plan(profile, cluster, cuts, (dtype,) * 3, ("float32",) * 3)
    outputs = _run(plan, profile, cluster, spec)
    model = build_model(spec, dtype)
    for rid in range(NUM_REQUESTS):
        with torch.inference_mode():
            reference = unsplit_output(model, example_input(spec, BATCH, seed=SEED + rid))
        np.testing.assert_array_equal(outputs[rid], reference.float().numpy())


def test_mixed_dtypes_and_encoded_links_equal_the_same_stages_in_process(
    ray_cluster: object,
) -> None:
    spec = model_spec_from_name("vit-tiny")
    names = unit_names(spec)
    profile, cluster = _profile("vit-tiny", names), toy_cluster(["r0", "r1", "r2"])
    cuts = (len(names) // 3, 2 * len(names) // 3)
    dtypes: tuple[StageDtype, ...] = ("int8", "float32", "bfloat16")
    encodings: tuple[LinkEncoding, ...] = ("int8-token", "float16", "float32")
    plan = _plan(profile, cluster, cuts, dtypes, encodings)
    outputs = _run(plan, profile, cluster, spec)
    bounds = (0, *cuts, len(names))
    modules = [build_stage(spec, bounds[i], bounds[i + 1], dtypes[i]) for i in range(3)]
    float32 = build_model(spec)
    worst = 0.0
    for rid in range(NUM_REQUESTS):
        frame = {k: v.numpy() for k, v in example_input(spec, BATCH, seed=SEED + rid).items()}
        with torch.inference_mode():
            for module, encoding in zip(modules, encodings, strict=True):
                out = module({k: torch.from_numpy(v.copy()) for k, v in frame.items()})
                sent = encode_tensors({k: v.contiguous().numpy() for k, v in out.items()}, encoding)
                frame = decode_tensors(sent)
            reference = unsplit_output(float32, example_input(spec, BATCH, seed=SEED + rid))
        np.testing.assert_array_equal(outputs[rid], frame["logits"])
        worst = max(worst, float(np.abs(outputs[rid] - reference.numpy()).max()))
    # Lossy, but not broken: logits of the tiny seeded ViT stay within 0.1 of float32.
    assert 0.0 < worst < 0.1, worst


def test_emulated_run_follows_the_dtype_times_and_encoded_bytes(ray_cluster: object) -> None:
    """int8 stages take a quarter of the float32 time; the period follows the plan's dtypes."""
    units = tuple(
        UnitProfile(
            name=f"u{i}",
            param_bytes=1e6,
            output_bytes=400_000,
            time_s={"k": 0.04},
            by_dtype={"int8": UnitDtypeProfile(param_bytes=2.5e5, time_s={"k": 0.01})},
        )
        for i in range(6)
    )
    profile = ModelProfile(model="toy", batch_size=1, input_bytes=400_000, units=units)
    cluster = toy_cluster(["r0", "r1", "r2"])
    periods = {}
    for dtype in ("float32", "int8"):
        plan = _plan(profile, cluster, (2, 4), (dtype,) * 3, ("int8-tensor",) * 3)
        report = run_plan(
            plan,
            cluster,
            profile,
            config=RuntimeConfig(compute="emulated", placement="local", time_scale=1.0),
            requests=24,
        )
        assert report.requests.lost == 0
        periods[dtype] = report.measured.period_s
        predicted = plan.predicted.period_s
        assert predicted == pytest.approx(0.08 if dtype == "float32" else 0.02)
        # Measured within 50 % of the plan (2 shared cores): float32 twice int8 at least.
    assert periods["float32"] > 2.0 * periods["int8"], periods


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_split_decode_equals_the_unsplit_model_in_the_same_dtype(
    ray_cluster: object, dtype: StageDtype
) -> None:
    """KV-cached greedy decode on 2 stages in `dtype` = the unsplit model in `dtype` (ids)."""
    from edgesplit.models.kv_stage import build_reference, generate_unsplit
    from edgesplit.runtime.generation import (
        GenerationConfig,
        GenerationPipeline,
        GenerationRequest,
    )

    torch.set_num_threads(1)
    spec = model_spec_from_name("gpt2-tiny")
    n = len(unit_names(spec))
    prompt, new_tokens = [5, 6, 7], 24
    expected = generate_unsplit(build_reference(spec, dtype), prompt, new_tokens)
    config = GenerationConfig(
        max_concurrent=1,
        runtime=RuntimeConfig(compute="real", placement="local"),
        dtype=dtype,
    )
    stages = [("d0", 0, n // 2), ("d1", n // 2, n)]
    with GenerationPipeline(spec, stages, config, num_units=n) as pipeline:
        report = pipeline.generate(
            [GenerationRequest(prompt_ids=prompt, max_new_tokens=new_tokens)]
        )
    assert report.sequences[0].new_ids == expected
