"""Which model to build: family, preset config, overrides, seed, or a local checkpoint directory.

Owns `ModelSpec`, the preset table and `model_spec_from_name`. No torch import here (specs travel
in plans and over Ray as plain data).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgesplit.core.schema import FrozenModel
from edgesplit.errors import ConfigError, did_you_mean

__all__ = [
    "PRESETS",
    "TEST_PRESETS",
    "Family",
    "ModelSpec",
    "default_seq_len",
    "model_spec_from_name",
]

Family = Literal["vit", "deit", "bert", "gpt2", "llama"]
ConfigValue = int | float | str | bool

# HF config keyword arguments per preset. Tiny presets are for tests (built in milliseconds).
PRESETS: dict[str, tuple[Family, dict[str, ConfigValue]]] = {
    "vit-tiny": (
        "vit",
        dict(
            image_size=32,
            patch_size=8,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            num_labels=10,
        ),
    ),
    "vit-base": ("vit", dict(num_labels=1000)),
    "vit-large": (
        "vit",
        dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            num_labels=1000,
        ),
    ),
    "vit-huge": (  # ViT-H at 224 px with 16 px patches (as PipeEdge and EdgePipe use it)
        "vit",
        dict(
            hidden_size=1280,
            num_hidden_layers=32,
            num_attention_heads=16,
            intermediate_size=5120,
            patch_size=16,
            num_labels=1000,
        ),
    ),
    "deit-tiny": (
        "deit",
        dict(
            hidden_size=192,
            num_hidden_layers=12,
            num_attention_heads=3,
            intermediate_size=768,
            num_labels=1000,
        ),
    ),
    "deit-small": (
        "deit",
        dict(
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
            num_labels=1000,
        ),
    ),
    "deit-base": ("deit", dict(num_labels=1000)),
    "deit-mini": (  # test preset (deit-tiny is the real DeiT-Ti shape)
        "deit",
        dict(
            image_size=32,
            patch_size=8,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=128,
            num_labels=10,
        ),
    ),
    "bert-tiny": (
        "bert",
        dict(
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=1000,
            max_position_embeddings=128,
            num_labels=2,
        ),
    ),
    "bert-base": ("bert", dict(num_labels=2)),
    "bert-large": (
        "bert",
        dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            num_labels=2,
        ),
    ),
    "gpt2-tiny": (
        "gpt2",
        dict(
            n_embd=64,
            n_layer=4,
            n_head=4,
            vocab_size=256,
            n_positions=256,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
    "gpt2": ("gpt2", dict()),
    "gpt2-medium": ("gpt2", dict(n_embd=1024, n_layer=24, n_head=16)),
    "llama-tiny": (
        "llama",
        dict(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=256,
            max_position_embeddings=256,
            bos_token_id=0,
            eos_token_id=0,
            tie_word_embeddings=True,
        ),
    ),
    "smollm2-135m": (
        "llama",
        dict(
            hidden_size=576,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            intermediate_size=1536,
            vocab_size=49152,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            rope_theta=100000.0,
            tie_word_embeddings=True,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
}


# Small presets for tests: built in milliseconds, example inputs of 16 tokens.
TEST_PRESETS = frozenset({"vit-tiny", "deit-mini", "bert-tiny", "gpt2-tiny", "llama-tiny"})


class ModelSpec(FrozenModel):
    """A model to build: a preset with seeded weights, or a local checkpoint directory."""

    family: Family
    preset: str
    overrides: dict[str, ConfigValue] = Field(default_factory=dict)
    seed: int = 0
    checkpoint: str | None = None

    def config_kwargs(self) -> dict[str, Any]:
        base = dict(PRESETS[self.preset][1]) if self.preset in PRESETS else {}
        return {**base, **self.overrides}


CHECKPOINT_META = "edgesplit.json"


def default_seq_len(spec: ModelSpec) -> int:
    """Tokens per sequence of text models' example inputs (and so of their profiles)."""
    return 16 if spec.preset in TEST_PRESETS else 128


def model_spec_from_name(name: str, seed: int = 0) -> ModelSpec:
    """A preset name ("vit-base") or a checkpoint directory written by `save_checkpoint`.

    Presets have random weights (what profiling needs), except `smollm2-135m`: when its
    converted checkpoint exists (`make models`), the name means those weights and tokenizer.
    """
    path = Path(name)
    if path.is_dir():
        return _checkpoint_spec(path)
    if name not in PRESETS:
        if path.exists():  # a file, not a checkpoint directory
            raise ConfigError(f"model '{name}' is a file; give a checkpoint directory or a preset")
        if "/" in name or name.startswith("."):
            raise ConfigError(
                f"no checkpoint directory {path.resolve()}; `make models` builds the ones under "
                f"checkpoints/, or give a preset ({', '.join(sorted(PRESETS))})"
            )
        hint = did_you_mean(name, PRESETS)
        raise ConfigError(
            f"unknown model '{name}'; {hint}use a preset ({', '.join(sorted(PRESETS))}) or a "
            "local checkpoint directory"
        )
    if name == "smollm2-135m":  # the real model's weights once `make models` built them
        from edgesplit.models.smollm2 import find_smollm2_checkpoint

        built = find_smollm2_checkpoint()
        if built is not None:
            return _checkpoint_spec(built)
    return ModelSpec(family=PRESETS[name][0], preset=name, seed=seed)


_MODEL_TYPES: dict[str, Family] = {
    "vit": "vit",
    "deit": "deit",
    "bert": "bert",
    "gpt2": "gpt2",
    "llama": "llama",
}


def _checkpoint_spec(path: Path) -> ModelSpec:
    """A directory from `save_checkpoint` (edgesplit.json) or a plain HF one (config.json)."""
    meta = path / CHECKPOINT_META
    if meta.is_file():
        data = json.loads(meta.read_text())
        return ModelSpec(
            family=data["family"], preset=data.get("preset", "checkpoint"), checkpoint=str(path)
        )
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(
            f"{path} is a directory but has neither {CHECKPOINT_META} nor config.json; write "
            "checkpoints with edgesplit.models.save_checkpoint (or pass a preset name)"
        )
    model_type = str(json.loads(config.read_text()).get("model_type", ""))
    if model_type not in _MODEL_TYPES:
        raise ConfigError(
            f"{config}: model_type '{model_type}' is not supported; supported: "
            f"{', '.join(sorted(_MODEL_TYPES))}"
        )
    return ModelSpec(family=_MODEL_TYPES[model_type], preset=path.name, checkpoint=str(path))
