"""Running a model's units as stages equals the unsplit HF model, for every family."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from edgesplit.errors import ConfigError
from edgesplit.models import (
    build_model,
    build_stage,
    example_input,
    model_spec_from_name,
    save_checkpoint,
    unit_names,
    unsplit_output,
)
from edgesplit.models.units import block_list

TINY = ["vit-tiny", "deit-tiny", "bert-tiny", "gpt2-tiny", "llama-tiny"]


def _run(spec: object, cuts: list[int], act: dict[str, torch.Tensor]) -> torch.Tensor:
    for start, end in itertools.pairwise(cuts):
        act = build_stage(spec, start, end)(act)  # type: ignore[arg-type]
    return act["logits"]


@pytest.mark.parametrize("name", TINY)
def test_every_cut_set_matches(name: str) -> None:
    spec = model_spec_from_name(name)
    reference_model = build_model(spec)
    act = example_input(spec, batch_size=3, seed=1)
    reference = unsplit_output(reference_model, act)
    num_units = len(unit_names(spec))
    rng = np.random.default_rng(0)
    for trial in range(4):
        num_cuts = int(rng.integers(1, num_units)) if trial else num_units - 1
        inner = sorted(rng.choice(np.arange(1, num_units), size=num_cuts, replace=False).tolist())
        logits = _run(spec, [0, *inner, num_units], act)
        torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_checkpoint_stages_load_only_their_weights(name: str, tmp_path: Path) -> None:
    spec = model_spec_from_name(name)
    model = build_model(spec)
    directory = save_checkpoint(spec, tmp_path / name, model)
    loaded = model_spec_from_name(str(directory))
    act = example_input(spec, batch_size=2)
    reference = unsplit_output(model, act)
    num_units = len(unit_names(loaded))
    torch.testing.assert_close(_run(loaded, [0, 2, num_units], act), reference, rtol=0, atol=1e-5)
    stage = build_stage(loaded, 1, 3)  # one attention and one MLP half: no embeddings, no head
    stage_bytes = sum(p.numel() for p in stage.parameters())
    assert stage_bytes < sum(p.numel() for p in model.parameters()) / 2


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    spec = model_spec_from_name("gpt2-tiny")
    directory = save_checkpoint(spec, tmp_path / "ckpt")
    tensors = load_file(directory / "model.safetensors")
    victim = "transformer.h.1.mlp.c_fc.weight"
    del tensors[victim]
    save_file(tensors, directory / "model.safetensors")
    loaded = model_spec_from_name(str(directory))
    build_stage(loaded, 0, 2)  # units that do not need it still load
    with pytest.raises(ConfigError, match=victim.replace(".", r"\.")):
        build_stage(loaded, 3, 5)


def test_bad_names_and_ranges(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model 'vit-gigantic'"):
        model_spec_from_name("vit-gigantic")
    with pytest.raises(ConfigError, match="no edgesplit.json"):
        model_spec_from_name(str(tmp_path))
    with pytest.raises(ConfigError, match=r"outside the model's 10 units"):
        build_stage(model_spec_from_name("vit-tiny"), 4, 12)


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("vit-tiny", "vit.layers"),
        ("deit-tiny", "deit.layers"),
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
