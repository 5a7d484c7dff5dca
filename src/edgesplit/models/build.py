"""Building models and stages: seeded from a preset config, or from a local checkpoint directory.

`build_model` returns the full HF model (eval mode); `build_stage(spec, start, end)` returns a
`StageModule` holding only units [start, end). From a checkpoint, a stage reads only its own
tensors (safetensors `safe_open`), so a device's peak memory is its stage, not the model. From a
seed, the full model is built (same RNG order as the unsplit reference) and the rest dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_model
from torch import nn

from edgesplit.errors import ConfigError
from edgesplit.models.spec import CHECKPOINT_META, ModelSpec
from edgesplit.models.units import Activation, Unit, make_units

__all__ = [
    "StageModule",
    "build_model",
    "build_stage",
    "example_input",
    "save_checkpoint",
    "unit_names",
    "unsplit_output",
]

WEIGHTS_FILE = "model.safetensors"


def _classes(family: str) -> tuple[Any, Any]:
    import transformers as tf

    return {
        "vit": (tf.ViTConfig, tf.ViTForImageClassification),
        "deit": (tf.DeiTConfig, tf.DeiTForImageClassification),
        "bert": (tf.BertConfig, tf.BertForSequenceClassification),
        "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel),
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
    }[family]


def _config(spec: ModelSpec) -> Any:
    config_cls, _ = _classes(spec.family)
    if spec.checkpoint:
        path = Path(spec.checkpoint) / "config.json"
        if not path.is_file():
            raise ConfigError(f"checkpoint {spec.checkpoint} has no config.json")
        config = config_cls.from_json_file(path)
    else:
        config = config_cls(**spec.config_kwargs())
    config._attn_implementation = "sdpa"
    return config


def build_model(spec: ModelSpec) -> Any:
    """The full, unsplit model in eval mode (seeded weights, or loaded from the checkpoint)."""
    _, model_cls = _classes(spec.family)
    config = _config(spec)
    if spec.checkpoint:
        with torch.device("meta"):
            model = model_cls(config)
        names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        _load_into(model, spec, names, prefix_map=None)
        _fix_buffers(model, config, spec.family)
        if getattr(config, "tie_word_embeddings", False):
            model.tie_weights()
    else:
        torch.manual_seed(spec.seed)
        model = model_cls(config)
    return model.eval()


def unit_names(spec: ModelSpec) -> list[str]:
    with torch.device("meta"):
        model = _classes(spec.family)[1](_config(spec))
    return [u.unit_name for u in make_units(model, spec.family)]


class StageModule(nn.Module):
    """Units [start, end) of a model, run in sequence on an Activation."""

    def __init__(self, units: list[Unit], start: int, end: int) -> None:
        super().__init__()
        self.units = nn.ModuleList(units)
        self.start = start
        self.end = end

    @property
    def names(self) -> list[str]:
        return [u.unit_name for u in self.units]  # type: ignore[misc]

    @torch.no_grad()
    def forward(self, act: Activation) -> Activation:
        for unit in self.units:
            act = unit(act)
        return act


def build_stage(spec: ModelSpec, start: int, end: int) -> StageModule:
    """A stage holding only the weights of units [start, end)."""
    _, model_cls = _classes(spec.family)
    config = _config(spec)
    if spec.checkpoint:
        with torch.device("meta"):
            model = model_cls(config)
        rotary = _cpu_rotary(config) if spec.family == "llama" else None
        units = make_units(model, spec.family, rotary)
    else:
        model = build_model(spec)
        units = make_units(model, spec.family)
    _check_range(start, end, len(units))
    stage = StageModule(units[start:end], start, end).eval()
    if spec.checkpoint:
        full_names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        wanted = {
            name: full_names[id(p)] for name, p in stage.named_parameters(remove_duplicate=False)
        }
        _load_into(stage, spec, set(wanted), prefix_map=wanted)
        _fix_buffers(stage, config, spec.family)
    return stage


def _check_range(start: int, end: int, num_units: int) -> None:
    if not 0 <= start < end <= num_units:
        raise ConfigError(
            f"unit range [{start}, {end}) is outside the model's {num_units} units; "
            "re-plan with a profile of this model"
        )


def _cpu_rotary(config: Any) -> nn.Module:
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    with torch.device("cpu"):
        return LlamaRotaryEmbedding(config=config)


def _load_into(
    module: nn.Module, spec: ModelSpec, names: set[str], prefix_map: dict[str, str] | None
) -> None:
    """Read only the tensors `module` needs from the checkpoint (assign, no full-model copy)."""
    assert spec.checkpoint is not None
    path = Path(spec.checkpoint) / WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"checkpoint {spec.checkpoint} has no {WEIGHTS_FILE}")
    config = _config(spec)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as handle:
        available = set(handle.keys())
        for local in sorted(names):
            key = prefix_map[local] if prefix_map else local
            source = key if key in available else _tied_source(key, available, tied)
            if source is None:
                raise ConfigError(
                    f"checkpoint {spec.checkpoint} is missing tensor '{key}' (needed by this "
                    "stage); the checkpoint is incomplete or for another model — re-export it "
                    "with edgesplit.models.save_checkpoint"
                )
            state[local] = handle.get_tensor(source)
    missing, _ = module.load_state_dict(state, strict=False, assign=True)
    not_loaded = [m for m in missing if m in names]
    if not_loaded:
        raise ConfigError(f"could not load {not_loaded[:5]} from {spec.checkpoint}")


def _tied_source(key: str, available: set[str], tied: bool) -> str | None:
    """Tied input/output embeddings are stored once, under either name (safetensors dedups)."""
    if not tied:
        return None
    group = ("lm_head.weight", "transformer.wte.weight", "model.embed_tokens.weight")
    if key not in group:
        return None
    return next((candidate for candidate in group if candidate in available), None)


def _fix_buffers(module: nn.Module, config: Any, family: str) -> None:
    """Recreate non-persistent buffers left on the meta device (not stored in checkpoints)."""
    for owner in module.modules():
        for name, buffer in list(owner.named_buffers(recurse=False)):
            if not buffer.is_meta:
                continue
            if name == "position_ids":
                value = torch.arange(buffer.shape[-1]).expand(buffer.shape)
            elif name == "token_type_ids":
                value = torch.zeros(buffer.shape, dtype=torch.long)
            elif name in ("inv_freq", "original_inv_freq"):
                rotary: Any = _cpu_rotary(config)
                value = rotary.inv_freq.clone()
            else:
                raise ConfigError(f"{family}: buffer '{name}' is not in the checkpoint")
            owner.register_buffer(name, value.to(buffer.dtype), persistent=False)
    leftover = [n for n, p in module.named_parameters() if p.is_meta]
    if leftover:
        raise ConfigError(f"parameters not loaded from the checkpoint: {leftover[:5]}")


def save_checkpoint(spec: ModelSpec, directory: Path | str, model: Any = None) -> Path:
    """Write config.json + model.safetensors + edgesplit.json; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else build_model(spec)
    model.config.to_json_file(directory / "config.json")
    save_model(model, str(directory / WEIGHTS_FILE))
    (directory / CHECKPOINT_META).write_text(
        json.dumps({"family": spec.family, "preset": spec.preset, "seed": spec.seed}, indent=2)
    )
    return directory


def example_input(spec: ModelSpec, batch_size: int, seed: int = 0, seq_len: int = 16) -> Activation:
    """A deterministic input activation of the right shape and dtype for the model."""
    generator = torch.Generator().manual_seed(seed)
    config = _config(spec)
    if spec.family in ("vit", "deit"):
        size = config.image_size
        pixels = torch.randn(batch_size, config.num_channels, size, size, generator=generator)
        return {"pixel_values": pixels}
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)
    if spec.family == "bert":
        mask = torch.ones(batch_size, seq_len, dtype=torch.long)
        mask[-1, seq_len // 2 :] = 0  # one padded sequence, so the mask is exercised
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids}


@torch.no_grad()
def unsplit_output(model: Any, act: Activation) -> torch.Tensor:
    """The reference: the unsplit model's logits for the same input."""
    return model(**act).logits  # type: ignore[no-any-return]
