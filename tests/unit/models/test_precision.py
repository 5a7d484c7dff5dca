"""Stage dtypes: split equals the unsplit model converted the same way; the int8 API is there."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from edgesplit.core.precision import StageDtype
from edgesplit.errors import ConfigError
from edgesplit.models import (
    build_model,
    build_stage,
    example_input,
    model_spec_from_name,
    unit_names,
    unsplit_output,
)
from edgesplit.models.kv_stage import KvStage, Sampling, choose_token, generate_unsplit
from edgesplit.models.precision import (
    QUANTIZATION_API,
    Int8Linear,
    apply_dtype,
    full_range_activations,
    parse_dtype,
    weight_bytes,
)

TINY = ["vit-tiny", "deit-mini", "bert-tiny", "gpt2-tiny", "llama-tiny"]
LOW: list[StageDtype] = ["bfloat16", "int8"]


def test_the_chosen_int8_api_is_still_there() -> None:
    """Fails on a torch upgrade that removes torch.ao's dynamic quantization or the fbgemm /
    qnnpack ops under it: re-run benchmarks/precision.py and move models/precision.py's
    `_quantize_int8` and `Int8Linear` to the successor."""
    assert QUANTIZATION_API == "torch.ao.quantization.quantize_dynamic"
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear  # noqa: F401
    from torch.ao.nn.quantized.modules.embedding_ops import Embedding as QuantizedEmbedding
    from torch.ao.nn.quantized.modules.linear import LinearPackedParams  # noqa: F401

    assert callable(torch.ops.quantized.linear_dynamic)
    assert callable(torch.ops.quantized.linear_prepack)
    module = nn.Sequential(nn.Linear(8, 4))
    module.word_embeddings = nn.Embedding(16, 8)
    converted = apply_dtype(module, "int8")
    assert isinstance(converted[0], Int8Linear)
    assert isinstance(converted.word_embeddings, QuantizedEmbedding)
    weight = converted[0].weight()
    assert weight.dtype == torch.qint8
    assert weight.qscheme() == torch.per_channel_affine
    assert isinstance(full_range_activations(), bool)


def _int8_linear(seed: int = 0, bias: bool = True) -> tuple[nn.Linear, Int8Linear]:
    torch.manual_seed(seed)
    linear = nn.Linear(96, 40, bias=bias)
    converted = apply_dtype(nn.Sequential(copy.deepcopy(linear)), "int8")[0]
    assert isinstance(converted, Int8Linear)
    return linear, converted


def test_int8_activations_get_a_range_per_token() -> None:
    """A token's result does not depend on the other tokens: a massive activation on one token
    (SmolLM2's first token reaches ~3000 in its down projections) leaves the others as
    accurate as alone. One range per tensor (quantize_dynamic's own Linear) fails this."""
    linear, converted = _int8_linear()
    x = torch.randn(1, 6, 96)
    loud = x.clone()
    loud[0, 0, 5] = 3000.0
    with torch.no_grad():
        exact = linear(x)
        quiet, shouted = converted(x), converted(loud)
        one = torch.cat([converted(x[:, i : i + 1]) for i in range(6)], dim=1)
    torch.testing.assert_close(shouted[:, 1:], quiet[:, 1:], rtol=0, atol=0)
    scale = float(exact.abs().max())
    assert float((quiet - exact).abs().max()) < 0.02 * scale  # 8-bit-ish, not 2 levels
    # Decode steps (one token, the kernel's own range) agree with the per-token mapping up to
    # the grid offset of the mapping (zero is exact on the kernel's grid, not on the mapped one).
    assert float((one - quiet).abs().max()) < 0.02 * scale


def test_int8_linear_without_bias_and_zero_rows() -> None:
    linear, converted = _int8_linear(seed=3, bias=False)
    x = torch.zeros(2, 3, 96)
    x[1, 2] = torch.randn(96)
    with torch.no_grad():
        out, exact = converted(x), linear(x)
    assert torch.equal(out[0], torch.zeros(3, 40))
    assert float((out - exact).abs().max()) < 0.02 * float(exact.abs().max())
    assert converted.row_sums.shape == (40,)
    assert weight_bytes(nn.Sequential(converted)) < 96 * 40 * 4 / 2


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("dtype", LOW)
def test_split_equals_unsplit_converted_the_same_way(name: str, dtype: StageDtype) -> None:
    """Tolerance: exact (atol 0). Each Linear's int8 weights depend on its own float weights
    only, and dynamic activation scales on that Linear's input, which is the same split or not;
    bfloat16 -> float32 -> bfloat16 at a cut is lossless."""
    spec = model_spec_from_name(name)
    act = example_input(spec, batch_size=3, seed=1)
    reference_input = dict(act)
    if dtype == "bfloat16" and "pixel_values" in act:
        reference_input["pixel_values"] = act["pixel_values"].to(torch.bfloat16)
    reference = unsplit_output(build_model(spec, dtype), reference_input).float()
    float32 = unsplit_output(build_model(spec), act)
    num_units = len(unit_names(spec))
    for cuts in (list(range(num_units + 1)), [0, num_units], [0, num_units // 2, num_units]):
        out = act
        for start, end in itertools.pairwise(cuts):
            stage = build_stage(spec, start, end, dtype)
            out = stage(out)
            assert all(v.dtype != torch.bfloat16 for v in out.values())  # float32 on the wire
        torch.testing.assert_close(out["logits"], reference, rtol=0, atol=0)
    # ... and the conversion did something, boundedly.
    assert not torch.equal(reference, float32)
    scale = float(float32.abs().max())
    assert float((reference - float32).abs().max()) < 0.1 * scale


@pytest.mark.parametrize("name", TINY)
def test_weight_bytes_shrink(name: str) -> None:
    spec = model_spec_from_name(name)
    num_units = len(unit_names(spec))
    sizes = {d: build_stage(spec, 0, num_units, d).param_bytes() for d in ("float32", *LOW)}
    assert sizes["bfloat16"] == pytest.approx(sizes["float32"] / 2, rel=0.01)
    assert sizes["int8"] < 0.5 * sizes["float32"]


@pytest.mark.parametrize("dtype", LOW)
def test_int8_and_bf16_decode_split_equals_unsplit(dtype: StageDtype) -> None:
    spec = model_spec_from_name("llama-tiny")
    num_units = len(unit_names(spec))
    prompt = [3, 14, 15, 92, 65]
    expected = generate_unsplit(build_model(spec, dtype), prompt, max_new_tokens=6)
    stages = [KvStage.build(spec, 0, 4, dtype), KvStage.build(spec, 4, num_units, dtype)]
    tokens = list(prompt)
    fed = 0
    new: list[int] = []
    while len(new) < 6:
        act: dict[str, torch.Tensor] = {"input_ids": torch.tensor([tokens[fed:]])}
        for stage in stages:
            act = stage.step(0, act, fed)
        fed = len(tokens)
        token = choose_token(act["logits"][0], Sampling(), 0, fed - 1)
        tokens.append(token)
        new.append(token)
    assert new == expected


def test_weight_bytes_counts_shared_tensors_once() -> None:
    linear = nn.Linear(4, 4, bias=False)
    module = nn.ModuleDict({"a": linear, "b": linear})
    assert weight_bytes(module) == 4 * 4 * 4


def test_parse_dtype_names_the_choices() -> None:
    assert parse_dtype("int8") == "int8"
    with pytest.raises(ConfigError, match="float32, bfloat16, int8"):
        parse_dtype("int4")
