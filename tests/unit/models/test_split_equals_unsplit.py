"""Running a model's units as stages equals the unsplit HF model, for every family."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesplit.errors import ConfigError
from edgesplit.models import (
    ModelSpec,
    build_model,
    build_stage,
    example_input,
    model_spec_from_name,
    unit_names,
    unsplit_output,
)
from edgesplit.models.build import _classes, _config
from edgesplit.models.units import block_list

TINY = ["vit-tiny", "deit-mini", "bert-tiny", "gpt2-tiny", "llama-tiny"]
DECODERS = ["gpt2-tiny", "llama-tiny"]
DECODERS_FAMILIES = ("gpt2", "llama")


def run_stages(spec: ModelSpec, cuts: list[int], act: dict[str, torch.Tensor]) -> torch.Tensor:
    for start, end in itertools.pairwise(cuts):
        act = build_stage(spec, start, end)(act)
    return act["logits"]


def random_cuts(num_units: int, rng: np.random.Generator) -> list[int]:
    num_cuts = int(rng.integers(1, num_units))
    inner = sorted(rng.choice(np.arange(1, num_units), size=num_cuts, replace=False).tolist())
    return [0, *inner, num_units]


@pytest.mark.parametrize("name", TINY)
def test_every_cut_set_matches(name: str) -> None:
    spec = model_spec_from_name(name)
    act = example_input(spec, batch_size=3, seed=1)
    reference = unsplit_output(build_model(spec), act)
    num_units = len(unit_names(spec))
    rng = np.random.default_rng(0)
    cut_sets = [list(range(num_units + 1)), [0, num_units]]  # every unit alone; one stage
    cut_sets += [random_cuts(num_units, rng) for _ in range(4)]
    for cuts in cut_sets:
        torch.testing.assert_close(run_stages(spec, cuts, act), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_build_model_is_a_plain_hf_model(name: str) -> None:
    """Our seeded materialization loads strictly into an ordinarily built HF model, same logits."""
    spec = model_spec_from_name(name)
    ours = build_model(spec)
    _, model_cls = _classes(spec.family)
    plain = model_cls(_config(spec)).eval()
    plain.load_state_dict(ours.state_dict(), strict=True)
    act = example_input(spec, batch_size=2, seed=3)
    torch.testing.assert_close(unsplit_output(ours, act), unsplit_output(plain, act))
    assert all(torch.isfinite(p).all() for p in ours.parameters())
    other_seed = build_model(spec.model_copy(update={"seed": 1}))
    assert not torch.equal(unsplit_output(other_seed, act), unsplit_output(ours, act))


@pytest.mark.parametrize("name", TINY)
def test_units_hold_only_their_own_weights(name: str) -> None:
    spec = model_spec_from_name(name)
    model = build_model(spec)
    names = unit_names(spec)
    stages = [build_stage(spec, i, i + 1) for i in range(len(names))]
    total = sum(sum(p.numel() for p in s.parameters()) for s in stages)
    expected = sum(p.numel() for p in model.parameters())  # counts a tied embedding once
    if getattr(model.config, "tie_word_embeddings", False) and spec.family in DECODERS_FAMILIES:
        expected += model.get_input_embeddings().weight.numel()  # embed and head both hold it
    assert total == expected
    for unit_name, stage in zip(names, stages, strict=True):
        params = [n for n, _ in stage.named_parameters()]
        if unit_name.endswith(".attn"):
            assert not any(w in n for n in params for w in ("mlp", "intermediate", "ln_2"))
        if unit_name.endswith(".mlp"):
            assert not any(w in n for n in params for w in ("attn.", "attention.", "ln_1"))


@pytest.mark.parametrize("name", DECODERS)
def test_padded_decoder_batches_match(name: str) -> None:
    spec = model_spec_from_name(name)
    act = example_input(spec, batch_size=3, seed=2, seq_len=12)
    mask = torch.ones_like(act["input_ids"])
    mask[0, 8:] = 0
    mask[2, :3] = 0  # left padding too
    act["attention_mask"] = mask
    reference = unsplit_output(build_model(spec), act)
    num_units = len(unit_names(spec))
    for cuts in ([0, 1, 4, num_units], [0, 3, num_units - 1, num_units]):
        torch.testing.assert_close(run_stages(spec, cuts, act), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", DECODERS)
def test_kv_cached_stages_decode_like_the_full_sequence(name: str) -> None:
    """Prefill then token-by-token decoding through cached stages equals one full forward."""
    spec = model_spec_from_name(name)
    ids = example_input(spec, batch_size=2, seed=4, seq_len=10)["input_ids"]
    reference = unsplit_output(build_model(spec), {"input_ids": ids})
    num_units = len(unit_names(spec))
    stages = [build_stage(spec, a, b) for a, b in itertools.pairwise([0, 2, 5, num_units])]
    caches = [stage.new_cache() for stage in stages]
    prompt = 6
    logits = []
    for begin, stop in [(0, prompt), *((t, t + 1) for t in range(prompt, ids.shape[1]))]:
        act = {"input_ids": ids[:, begin:stop], "position_ids": torch.arange(begin, stop)[None]}
        for stage, cache in zip(stages, caches, strict=True):
            act = stage(act, cache)
        logits.append(act["logits"])
    torch.testing.assert_close(torch.cat(logits, dim=1), reference, rtol=0, atol=1e-5)


def test_only_what_crosses_a_cut_leaves_a_stage() -> None:
    spec = model_spec_from_name("bert-tiny")
    out = build_stage(spec, 0, 2)(example_input(spec, batch_size=2))
    assert set(out) == {"hidden", "attention_mask"}  # the 4-D mask is rebuilt, never sent
    spec = model_spec_from_name("llama-tiny")
    out = build_stage(spec, 0, 3)(example_input(spec, batch_size=2))
    assert set(out) == {"hidden", "position_ids"}
    with pytest.raises(ConfigError, match="not a decoder"):
        build_stage(model_spec_from_name("vit-tiny"), 0, 1).new_cache()


def test_a_large_model_stage_allocates_only_its_units() -> None:
    spec = model_spec_from_name("vit-huge")  # 632M parameters; one block is 1/32 of that
    stage = build_stage(spec, 5, 7)
    assert stage.names == ["block2.attn", "block2.mlp"]
    block_params = sum(p.numel() for p in stage.parameters())
    assert 19e6 < block_params < 21e6
    assert not any(p.is_meta for p in stage.parameters())


def test_bad_names_and_ranges() -> None:
    with pytest.raises(ConfigError, match="unknown model 'vit-gigantic'"):
        model_spec_from_name("vit-gigantic")
    with pytest.raises(ConfigError, match=r"outside the model's 10 units"):
        build_stage(model_spec_from_name("vit-tiny"), 4, 12)
    with pytest.raises(ConfigError, match=r"outside"):
        build_stage(model_spec_from_name("vit-tiny"), 3, 3)


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("vit-tiny", "vit.layers"),
        ("deit-mini", "deit.layers"),
        ("bert-tiny", "bert.encoder.layer"),
        ("gpt2-tiny", "transformer.h"),
        ("llama-tiny", "model.layers"),
    ],
)
def test_block_paths_of_pinned_transformers(name: str, path: str) -> None:
    """Fails on a transformers upgrade that moves blocks (pinned 5.23.0)."""
    import transformers

    assert transformers.__version__ == "5.23.0"
    spec = model_spec_from_name(name)
    model = build_model(spec)
    module = model
    for part in path.split("."):
        module = getattr(module, part)
    assert block_list(model, spec.family) is module
    names = unit_names(spec)
    assert names[0] == "embed"
    assert names[-1] == "head"
    assert len(names) == 2 * len(module) + 2
    assert names[1:3] == ["block0.attn", "block0.mlp"]


def test_unknown_model_messages_say_what_to_do(tmp_path: Path) -> None:
    from edgesplit.models.spec import model_spec_from_name

    with pytest.raises(ConfigError, match="did you mean 'gpt2-tiny'"):
        model_spec_from_name("gpt2-tinyy")
    with pytest.raises(
        ConfigError, match=re.escape(f"no checkpoint directory {tmp_path / 'nope'};")
    ):
        model_spec_from_name(str(tmp_path / "nope"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="is a file; give a checkpoint directory"):
        model_spec_from_name(str(tmp_path / "weights.bin"))
