"""KV-cached stages: any cut of GPT-2/Llama decodes exactly like the unsplit model."""

from __future__ import annotations

import itertools

import pytest
import torch

from edgesplit.errors import ConfigError
from edgesplit.models import build_model, model_spec_from_name, unit_names
from edgesplit.models.kv_stage import (
    CacheMismatchError,
    KvStage,
    Sampling,
    choose_token,
    generate_unsplit,
    kv_bytes_per_token,
)

DECODERS = ["gpt2-tiny", "llama-tiny"]


def _pipeline_generate(
    stages: list[KvStage], prompt: list[int], num_new: int, sampling: Sampling
) -> list[int]:
    tokens, fed = list(prompt), 0
    for _ in range(num_new):
        act = {"input_ids": torch.tensor([tokens[fed:]])}
        for stage in stages:
            act = stage.step(0, act, fed)
        fed = len(tokens)
        tokens.append(choose_token(act["logits"][0], sampling, 0, fed - 1))
    return tokens[len(prompt) :]


@pytest.mark.parametrize("name", DECODERS)
def test_unsplit_reference_equals_hf_generate(name: str) -> None:
    spec = model_spec_from_name(name)
    model = build_model(spec)
    prompt = [3, 17, 42, 9]
    ours = generate_unsplit(model, prompt, 24)
    hf = model.generate(
        torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24, do_sample=False
    )[0, len(prompt) :].tolist()
    assert ours == hf


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=1.0, seed=5)])
def test_any_cut_generates_like_the_unsplit_model(name: str, sampling: Sampling) -> None:
    spec = model_spec_from_name(name)
    reference = generate_unsplit(build_model(spec), [5, 6, 7], 24, sampling)
    n = len(unit_names(spec))
    for cuts in ([0, 3, n], [0, 2, 5, n], [0, 1, 4, 8, n]):  # 2, 3 and 4 stages
        stages = [KvStage.build(spec, a, b) for a, b in itertools.pairwise(cuts)]
        assert _pipeline_generate(stages, [5, 6, 7], 24, sampling) == reference, cuts
    if sampling.temperature > 0:
        assert len(set(reference)) > 5  # the sampled path really moves through the vocabulary


def test_sequences_are_independent_and_cache_is_counted() -> None:
    spec = model_spec_from_name("gpt2-tiny")
    n = len(unit_names(spec))
    stage = KvStage.build(spec, 0, 5)  # embed + blocks 0, 1 (attn, mlp): 2 attention layers
    stage.step(1, {"input_ids": torch.tensor([[1, 2, 3]])}, 0)
    stage.step(2, {"input_ids": torch.tensor([[4, 5]])}, 0)
    stage.step(1, {"input_ids": torch.tensor([[6]])}, 3)
    assert stage.cached_length(1) == 4
    assert stage.cached_length(2) == 2
    assert stage.cache_bytes(1) == 4 * 2 * kv_bytes_per_token(spec)
    with pytest.raises(CacheMismatchError, match="replay"):
        stage.step(2, {"input_ids": torch.tensor([[7]])}, 5)
    with pytest.raises(CacheMismatchError):
        KvStage.build(spec, 5, n).step(9, {"hidden": torch.zeros(1, 1, 64)}, 3)
    stage.drop(1)
    assert stage.sequences() == [2]


def test_encoders_are_refused() -> None:
    with pytest.raises(ConfigError, match="decoder"):
        KvStage.build(model_spec_from_name("vit-tiny"), 0, 2)


def test_sampling_is_a_function_of_seed_sequence_and_position() -> None:
    logits = torch.randn(100, generator=torch.Generator().manual_seed(0))
    sampling = Sampling(temperature=1.0, top_k=10, seed=3)
    picks = [choose_token(logits, sampling, 0, p) for p in range(50)]
    assert picks == [choose_token(logits, sampling, 0, p) for p in range(50)]
    assert set(picks) <= set(torch.topk(logits, 10).indices.tolist())
    assert len(set(picks)) > 1
    assert choose_token(logits, Sampling(), 0, 0) == int(torch.argmax(logits))
    with pytest.raises(ConfigError):
        Sampling(temperature=-1)
