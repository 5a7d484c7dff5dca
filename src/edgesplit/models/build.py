"""Building models and stages: seeded from a preset config, or from a local checkpoint directory.

Both paths first construct the HF model on the meta device (no memory), pick the units, and then
materialize only the modules those units hold:

- seeded: each module gets HF's own `_init_weights` under a generator seeded by
  (spec.seed, module path), so a module's weights do not depend on which other modules are built.
  `build_stage(spec, s, e)` therefore allocates only units [s, e) and still equals the slice of
  `build_model(spec)` bit for bit; a stage's peak memory is its own weights, not the model's.
- checkpoint: each parameter is read on its own with safetensors `safe_open` (all `*.safetensors`
  files of the directory are indexed; tied embeddings may be stored under either name).
  Floating tensors are converted to float32.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_model
from torch import nn

from edgesplit.core.precision import StageDtype
from edgesplit.errors import ConfigError
from edgesplit.models.one_row import route_linears, setting, tune
from edgesplit.models.precision import apply_dtype, compute_dtype, weight_bytes
from edgesplit.models.spec import CHECKPOINT_META, ModelSpec, default_seq_len
from edgesplit.models.units import Activation, Unit, crossing, make_units

__all__ = [
    "StageModule",
    "build_model",
    "build_stage",
    "example_input",
    "save_checkpoint",
    "tune_kernels",
    "unit_names",
    "unsplit_output",
]

WEIGHTS_FILE = "model.safetensors"
ATTENTION_IMPLEMENTATION = "sdpa"  # used by stages and the unsplit reference alike


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
        for key, value in spec.overrides.items():
            setattr(config, key, value)
    else:
        config = config_cls(**spec.config_kwargs())
    config._attn_implementation = ATTENTION_IMPLEMENTATION
    return config


def _meta_model(spec: ModelSpec) -> tuple[Any, Any]:
    """The config and the model's skeleton on the meta device (no weights allocated)."""
    config = _config(spec)
    with torch.device("meta"):
        model = _classes(spec.family)[1](config)
    return config, model


# --- materializing selected modules -----------------------------------------------------------


def _module_seed(seed: int, path: str) -> int:
    digest = hashlib.blake2b(f"{seed}/{path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=value.is_floating_point())
    else:
        owner._buffers[leaf] = value


def _known_buffer(name: str, buffer: torch.Tensor, config: Any) -> torch.Tensor:
    """Values of the non-persistent buffers our families have (never stored in checkpoints)."""
    leaf = name.rpartition(".")[2]
    if leaf == "position_ids":
        return torch.arange(buffer.shape[-1]).expand(buffer.shape).to(buffer.dtype).contiguous()
    if leaf == "token_type_ids":
        return torch.zeros(buffer.shape, dtype=buffer.dtype)
    if leaf in ("inv_freq", "original_inv_freq"):
        from edgesplit.models.units import _rotary_for

        rotary: Any = _rotary_for(config)
        return rotary.inv_freq.clone().to(buffer.dtype)
    raise ConfigError(f"buffer '{name}' has no known value; this model layout is not supported")


def _seeded(model: Any, modules: dict[str, nn.Module], seed: int, config: Any) -> None:
    """Allocate `modules` on the CPU and run HF's init on each submodule with its own seed."""
    with torch.random.fork_rng(devices=[]):
        for path, module in modules.items():
            module.to_empty(device="cpu")
            with torch.no_grad():
                for tensor in module.parameters():
                    tensor.fill_(float("nan"))  # anything HF's init skips is caught below
            subs = list(module.named_modules(prefix=path))
            for sub_path, sub in reversed(subs):  # children before parents, as HF's init does
                torch.manual_seed(_module_seed(seed, sub_path))
                model._init_weights(sub)
            for name, buffer in list(module.named_buffers()):
                if name.rpartition(".")[2] in _BUFFERS_NOT_FROM_INIT:
                    _set_tensor(module, name, _known_buffer(f"{path}.{name}", buffer, config))
            for name, tensor in module.named_parameters():
                if torch.isnan(tensor).any():
                    raise ConfigError(f"HF's init left '{path}.{name}' uninitialized")


_BUFFERS_NOT_FROM_INIT = frozenset(
    {"position_ids", "token_type_ids", "inv_freq", "original_inv_freq"}
)


class _TensorIndex:
    """Every tensor key of a checkpoint directory's `*.safetensors` files, read one at a time."""

    def __init__(self, directory: Path, stack: ExitStack) -> None:
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise ConfigError(f"checkpoint {directory} has no *.safetensors file")
        self.handles: dict[str, Any] = {}
        for file in files:
            handle = stack.enter_context(safe_open(str(file), framework="pt"))
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                self.handles.setdefault(key, handle)

    def get(self, key: str) -> torch.Tensor | None:
        handle = self.handles.get(key)
        return None if handle is None else handle.get_tensor(key)

    def keys(self) -> Iterator[str]:
        return iter(self.handles)


_TIED_GROUPS = (
    ("lm_head.weight", "transformer.wte.weight"),
    ("lm_head.weight", "model.embed_tokens.weight"),
)


def _candidate_keys(key: str, tied: bool) -> list[str]:
    """Where a tensor may be stored: its own name, a tied twin, or a base model's name."""
    names = [key]
    if tied:
        for group in _TIED_GROUPS:
            if key in group:
                names += [k for k in group if k != key]
    # A checkpoint of the base model (e.g. BertModel) lacks the task wrapper's first component.
    names += [n.partition(".")[2] for n in list(names) if "." in n]
    return names


def _from_checkpoint(spec: ModelSpec, modules: dict[str, nn.Module], config: Any) -> None:
    """Read exactly the tensors of `modules` from the checkpoint; name any that is missing."""
    assert spec.checkpoint is not None
    directory = Path(spec.checkpoint)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    with ExitStack() as stack:
        index = _TensorIndex(directory, stack)
        for path, module in modules.items():
            persistent = set(module.state_dict(keep_vars=True))
            for name, buffer in list(module.named_buffers()):
                key = f"{path}.{name}"
                stored = index.get(key) if name in persistent else None
                known = stored if stored is not None else _known_buffer(key, buffer, config)
                _set_tensor(module, name, known)
            for name, param in list(module.named_parameters()):
                key = f"{path}.{name}"
                value = next(
                    (v for k in _candidate_keys(key, tied) if (v := index.get(k)) is not None),
                    None,
                )
                if value is None:
                    raise ConfigError(
                        f"checkpoint {directory} is missing tensor '{key}' (needed by this "
                        "stage); the checkpoint is incomplete or for another model; re-export "
                        "it with edgesplit.models.save_checkpoint"
                    )
                if tuple(value.shape) != tuple(param.shape):
                    raise ConfigError(
                        f"checkpoint tensor '{key}' has shape {tuple(value.shape)}, the model "
                        f"expects {tuple(param.shape)} (config.json does not match the weights)"
                    )
                _set_tensor(module, name, value.float() if value.is_floating_point() else value)


def _materialize(spec: ModelSpec, model: Any, config: Any, wanted: list[nn.Module]) -> None:
    paths = {id(m): p for p, m in model.named_modules(remove_duplicate=False)}
    modules: dict[str, nn.Module] = {}
    for module in wanted:
        if id(module) not in paths:
            raise ConfigError(f"internal: module {type(module).__name__} is not in the model")
        modules.setdefault(paths[id(module)], module)
    if spec.checkpoint:
        _from_checkpoint(spec, modules, config)
    else:
        _seeded(model, modules, spec.seed, config)


# --- public surface ---------------------------------------------------------------------------


def build_model(spec: ModelSpec, dtype: StageDtype = "float32") -> Any:
    """The full, unsplit model in eval mode (seeded weights, or loaded from the checkpoint).

    `dtype` converts it as `build_stage` converts a stage: the reference a split bfloat16/int8
    model is compared with. Its inputs stay float32 for int8; for bfloat16 pass floating inputs
    (ViT pixels) as bfloat16.
    """
    config, model = _meta_model(spec)
    _materialize(spec, model, config, list(model.children()))
    if getattr(config, "tie_word_embeddings", False) and spec.family in ("gpt2", "llama"):
        model.lm_head.weight = model.get_input_embeddings().weight
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise ConfigError(f"{spec.preset}: tensors left unbuilt: {leftover[:5]}")
    return apply_dtype(model.eval(), dtype)


def unit_names(spec: ModelSpec) -> list[str]:
    """Ordered unit names: "embed", "block0.attn", "block0.mlp", ..., "head"."""
    _, model = _meta_model(spec)
    return [u.unit_name for u in make_units(model, spec.family)]


class StageModule(nn.Module):
    """Units [start, end) of a model, run in sequence on an Activation.

    `forward(act, past_key_values=None)` returns what crosses the cut after `end` (see
    `units.crossing`): the final stage returns {"logits"}. Decoder stages accept an HF cache from
    `new_cache()` to keep their layers' keys/values across decoding steps (pass `position_ids`).
    A stage of `dtype` bfloat16 computes in bfloat16 but takes and returns float32 activations
    ([Note: stage dtypes and the wire] in models/precision.py); int8 computes in float32.
    """

    def __init__(
        self,
        units: list[Unit],
        start: int,
        end: int,
        family: str,
        config: Any,
        dtype: StageDtype = "float32",
    ) -> None:
        super().__init__()
        self.units = nn.ModuleList(units)
        self.start = start
        self.end = end
        self.family = family
        self.config = config
        self.dtype: StageDtype = dtype

    @property
    def names(self) -> list[str]:
        return [u.unit_name for u in self.units]  # type: ignore[misc]

    def param_bytes(self) -> int:
        """Bytes of this stage's weights in its dtype (int8 weights and their scales included)."""
        return weight_bytes(self)

    def new_cache(self) -> Any:
        """An empty key/value cache for this stage's layers (GPT-2 and Llama only)."""
        if self.family not in ("gpt2", "llama"):
            raise ConfigError(f"{self.family} is not a decoder; it has no key/value cache")
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    @torch.no_grad()
    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        act = crossing(act)
        inner = compute_dtype(self.dtype)
        if inner != torch.float32:
            act = _cast_floats(act, inner)
        for unit in self.units:
            act = unit(act, past_key_values)
        if inner != torch.float32:
            act = _cast_floats(act, torch.float32)
        return crossing(act)


def _cast_floats(act: Activation, dtype: torch.dtype) -> Activation:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in act.items()}


def build_stage(
    spec: ModelSpec, start: int, end: int, dtype: StageDtype = "float32"
) -> StageModule:
    """A stage holding only the weights of units [start, end) (nothing else is allocated).

    `dtype` bfloat16 or int8 converts the stage's weights after loading them as float32
    (`models.precision.apply_dtype`); a split model equals the unsplit model converted the same
    way (`build_model(spec, dtype)`). A float32 stage's Linears go through `models.one_row`
    (one-row inputs take this host's measured kernel: equal up to float summation order).
    """
    config, model = _meta_model(spec)
    units = make_units(model, spec.family)
    _check_range(start, end, len(units))
    chosen = units[start:end]
    _materialize(spec, model, config, [child for unit in chosen for child in unit.children()])
    stage = StageModule(chosen, start, end, spec.family, config, dtype).eval()
    apply_dtype(stage, dtype)
    if dtype == "float32":
        route_linears(stage)  # one-row decode steps use this host's faster kernel (one_row.py)
    return stage


def tune_kernels(spec: ModelSpec, dtype: StageDtype = "float32") -> int:
    """Measure this host's few-row kernel for every Linear shape of the model now, without
    loading a weight; returns how many shapes.

    What `build_stage` would measure for any stage of `spec` (`one_row.route_linears`): a
    standby calls it while it waits (`StageWorker.warm`), so that the stage it takes over after
    a failure is built without that cost. Nothing to do for other dtypes or a forced kernel.
    """
    if dtype != "float32" or setting() != "auto":
        return 0
    _, model = _meta_model(spec)
    shapes = {
        (m.out_features, m.in_features): None for m in model.modules() if type(m) is nn.Linear
    }
    tune(shapes)
    return len(shapes)


def _check_range(start: int, end: int, num_units: int) -> None:
    if not 0 <= start < end <= num_units:
        raise ConfigError(
            f"unit range [{start}, {end}) is outside the model's {num_units} units; "
            "re-plan with a profile of this model"
        )


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


def example_input(
    spec: ModelSpec, batch_size: int, seed: int = 0, seq_len: int | None = None
) -> Activation:
    """A deterministic input activation of the right shape and dtype for the model.

    Text models get `seq_len` tokens (default: `default_seq_len(spec)`, 16 for test presets and
    128 otherwise).
    ViT/DeiT: {"pixel_values"}; BERT: {"input_ids", "attention_mask"} (the last sequence half
    padded, so masks are exercised); GPT-2/Llama: {"input_ids"}.
    """
    generator = torch.Generator().manual_seed(seed)
    config = _config(spec)
    if spec.family in ("vit", "deit"):
        size = config.image_size
        pixels = torch.randn(batch_size, config.num_channels, size, size, generator=generator)
        return {"pixel_values": pixels}
    seq_len = seq_len or default_seq_len(spec)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)
    if spec.family == "bert":
        mask = torch.ones(batch_size, seq_len, dtype=torch.long)
        mask[-1, seq_len // 2 :] = 0
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids}


@torch.no_grad()
def unsplit_output(model: Any, act: Activation) -> torch.Tensor:
    """The reference: the unsplit model's logits for the same input."""
    return model(**act).logits  # type: ignore[no-any-return]
