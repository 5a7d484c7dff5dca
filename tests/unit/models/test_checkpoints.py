"""Checkpoint directories: roundtrip, per-stage reads, plain HF directories, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

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

from .test_split_equals_unsplit import TINY, run_stages


@pytest.mark.parametrize("name", TINY)
def test_checkpoint_roundtrip(name: str, tmp_path: Path) -> None:
    spec = model_spec_from_name(name)
    model = build_model(spec)
    loaded = model_spec_from_name(str(save_checkpoint(spec, tmp_path / name, model)))
    assert loaded.family == spec.family
    assert loaded.checkpoint
    act = example_input(spec, batch_size=2)
    reference = unsplit_output(model, act)
    torch.testing.assert_close(unsplit_output(build_model(loaded), act), reference, rtol=0, atol=0)
    num_units = len(unit_names(loaded))
    torch.testing.assert_close(
        run_stages(loaded, [0, 2, 3, num_units], act), reference, rtol=0, atol=1e-5
    )


def test_stage_reads_only_its_tensors(tmp_path: Path) -> None:
    """A stage of blocks 1..2 loads even when every other tensor is absent from the file."""
    spec = model_spec_from_name("gpt2-tiny")
    directory = save_checkpoint(spec, tmp_path / "ckpt")
    tensors = load_file(directory / "model.safetensors")
    keep = {
        k: v for k, v in tensors.items() if k.startswith(("transformer.h.1.", "transformer.h.2."))
    }
    save_file(keep, directory / "model.safetensors")
    stage = build_stage(model_spec_from_name(str(directory)), 3, 7)
    assert sum(p.numel() for p in stage.parameters()) == sum(v.numel() for v in keep.values())


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    spec = model_spec_from_name("gpt2-tiny")
    directory = save_checkpoint(spec, tmp_path / "ckpt")
    tensors = load_file(directory / "model.safetensors")
    victim = "transformer.h.1.mlp.c_fc.weight"
    del tensors[victim]
    save_file(tensors, directory / "model.safetensors")
    loaded = model_spec_from_name(str(directory))
    build_stage(loaded, 0, 4)  # units that do not need it still load
    with pytest.raises(ConfigError, match=victim.replace(".", r"\.")):
        build_stage(loaded, 3, 5)
    with pytest.raises(ConfigError, match=victim.replace(".", r"\.")):
        build_model(loaded)


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    directory = save_checkpoint(model_spec_from_name("vit-tiny"), tmp_path / "ckpt")
    config = json.loads((directory / "config.json").read_text())
    config["intermediate_size"] = 96
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"vit\.layers\.0\.mlp.*has shape"):
        build_stage(model_spec_from_name(str(directory)), 2, 3)


def test_plain_hf_directory_loads(tmp_path: Path) -> None:
    """A `save_pretrained` directory (no edgesplit.json, tied lm_head not stored) works."""
    spec = model_spec_from_name("llama-tiny")
    model = build_model(spec)
    model.save_pretrained(tmp_path / "hf")
    loaded = model_spec_from_name(str(tmp_path / "hf"))
    assert loaded.family == "llama"
    assert loaded.preset == "hf"
    act = example_input(spec, batch_size=2)
    num_units = len(unit_names(loaded))
    torch.testing.assert_close(
        run_stages(loaded, [0, 4, num_units], act), unsplit_output(model, act), rtol=0, atol=1e-5
    )


def test_bad_directories(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither edgesplit.json nor config.json"):
        model_spec_from_name(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ConfigError, match="model_type 't5' is not supported"):
        model_spec_from_name(str(tmp_path))
    directory = save_checkpoint(model_spec_from_name("vit-tiny"), tmp_path / "ckpt")
    (directory / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"no \*\.safetensors"):
        build_stage(model_spec_from_name(str(directory)), 0, 1)
