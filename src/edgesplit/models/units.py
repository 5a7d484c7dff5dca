"""Cutting HF transformers models into units: embedding, attention half, MLP half, head.

Each unit is an `nn.Module` mapping an `Activation` (a dict of named tensors) to the next one and
holding, as its children, only the HF submodules it runs (a half-block never holds the other
half's weights), so a stage's parameters are exactly its units' parameters. A block is split
where a cut is legal without extra traffic: after the attention half (norm + attention + residual
add) and after the MLP half. What crosses a cut (`crossing`): the hidden state (B, T, C), the
2-D `attention_mask` when the input had one, and `position_ids` for decoders. The 4-D attention
mask is built inside each stage by its first attention unit (key "mask", never sent).

Decoders (GPT-2, Llama) accept an optional HF `Cache` (`past_key_values`) so a stage can keep
its layers' key/value cache across decoding steps; the caller passes `position_ids`.
Families: ViT/DeiT, BERT, GPT-2, Llama. Block lists are found by structure (`block_list`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgesplit.errors import ConfigError
from edgesplit.models import one_row

__all__ = ["LOCAL_KEYS", "Activation", "Unit", "block_list", "crossing", "make_units"]

Activation = dict[str, torch.Tensor]

LOCAL_KEYS = frozenset({"mask"})  # rebuilt in each stage, never crosses a cut


def crossing(act: Activation) -> Activation:
    """The part of an activation that is sent across a cut."""
    return {k: v for k, v in act.items() if k not in LOCAL_KEYS}


class Unit(nn.Module):
    """One cuttable piece of a model; its children are exactly the HF modules it runs."""

    unit_name: str = "unit"

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        raise NotImplementedError  # pragma: no cover - abstract


def _carry(act: Activation, hidden: torch.Tensor, **extra: torch.Tensor) -> Activation:
    """The same activation with a new hidden state (masks and positions travel along)."""
    return {**act, **extra, "hidden": hidden}


def _positions(input_ids: torch.Tensor) -> torch.Tensor:
    return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)  # (1, T)


class _MaskMixin:
    """Builds the 4-D attention mask once per stage (sdpa: None when `is_causal` suffices)."""

    config: Any
    causal: bool
    layer_index: int

    def _mask(self, act: Activation, past_key_values: Any) -> torch.Tensor | None:
        if "mask" in act:
            return act["mask"]
        from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

        if self.causal:
            mask = create_causal_mask(
                config=self.config,
                inputs_embeds=act["hidden"],
                attention_mask=act.get("attention_mask"),
                past_key_values=past_key_values,
                position_ids=act.get("position_ids"),
                layer_idx=self.layer_index if past_key_values is not None else None,
            )
        else:
            mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=act["hidden"],
                attention_mask=act.get("attention_mask"),
            )
        return mask if isinstance(mask, torch.Tensor) else None


def _with_mask(act: Activation, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {"mask": mask} if mask is not None and "mask" not in act else {}


# --- ViT / DeiT (pre-norm encoder) ------------------------------------------------------------


class _VitEmbed(Unit):
    def __init__(self, embeddings: nn.Module) -> None:
        super().__init__()
        self.embeddings: Any = embeddings

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        pixels = act["pixel_values"]
        dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        return {"hidden": self.embeddings(pixels.to(dtype))}  # (B, T, C)


class _VitAttention(Unit):
    """x + dropout(attention(layernorm_before(x)))."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.layernorm_before: Any = layer.layernorm_before
        self.attention: Any = layer.attention
        self.dropout: Any = layer.dropout

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        hidden = act["hidden"]
        out, _ = self.attention(self.layernorm_before(hidden), None)
        return _carry(act, self.dropout(out) + hidden)


class _VitMlp(Unit):
    """x + dropout(mlp(layernorm_after(x)))."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.layernorm_after: Any = layer.layernorm_after
        self.mlp: Any = layer.mlp
        self.dropout: Any = layer.dropout

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        hidden = act["hidden"]
        return _carry(act, self.dropout(self.mlp(self.layernorm_after(hidden))) + hidden)


class _VitHead(Unit):
    """Final layernorm, then the classifier on the [CLS] token."""

    def __init__(self, norm: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.norm: Any = norm
        self.classifier: Any = classifier

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        return {"logits": self.classifier(self.norm(act["hidden"])[:, 0, :])}


# --- BERT (post-norm encoder) -----------------------------------------------------------------


class _BertEmbed(Unit):
    def __init__(self, embeddings: nn.Module) -> None:
        super().__init__()
        self.embeddings: Any = embeddings

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        hidden = self.embeddings(
            input_ids=act["input_ids"], token_type_ids=act.get("token_type_ids")
        )
        out: Activation = {"hidden": hidden}
        if "attention_mask" in act:
            out["attention_mask"] = act["attention_mask"]
        return out


class _BertAttention(_MaskMixin, Unit):
    """LayerNorm(x + attention(x)): BertAttention's output sublayer adds the residual."""

    def __init__(self, layer: Any, config: Any) -> None:
        super().__init__()
        self.attention: Any = layer.attention
        self.config = config
        self.causal = False
        self.layer_index = 0

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        mask = self._mask(act, None)
        out, _ = self.attention(act["hidden"], mask)
        return _carry(act, out, **_with_mask(act, mask))


class _BertMlp(Unit):
    """LayerNorm(x + output(intermediate(x)))."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.intermediate: Any = layer.intermediate
        self.output: Any = layer.output

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        hidden = act["hidden"]
        return _carry(act, self.output(self.intermediate(hidden), hidden))


class _BertHead(Unit):
    def __init__(self, pooler: nn.Module, dropout: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.pooler: Any = pooler
        self.dropout: Any = dropout
        self.classifier: Any = classifier

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        return {"logits": self.classifier(self.dropout(self.pooler(act["hidden"])))}


# --- GPT-2 and Llama (pre-norm decoders) ------------------------------------------------------


class _Gpt2Embed(Unit):
    def __init__(self, wte: nn.Module, wpe: nn.Module, drop: nn.Module) -> None:
        super().__init__()
        self.wte: Any = wte
        self.wpe: Any = wpe
        self.drop: Any = drop

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        ids = act["input_ids"]
        positions = act.get("position_ids", _positions(ids))
        hidden = self.drop(self.wte(ids) + self.wpe(positions))
        return _decoder_start(act, hidden, positions)


def _decoder_start(act: Activation, hidden: torch.Tensor, positions: torch.Tensor) -> Activation:
    out: Activation = {"hidden": hidden, "position_ids": positions}
    if "attention_mask" in act:
        out["attention_mask"] = act["attention_mask"]
    return out


class _Gpt2Attention(_MaskMixin, Unit):
    def __init__(self, block: Any, config: Any, layer_index: int) -> None:
        super().__init__()
        self.ln_1: Any = block.ln_1
        self.attn: Any = block.attn
        self.config = config
        self.causal = True
        self.layer_index = layer_index

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        hidden = act["hidden"]
        mask = self._mask(act, past_key_values)
        out, _ = self.attn(
            self.ln_1(hidden),
            past_key_values=past_key_values,
            attention_mask=mask,
            use_cache=past_key_values is not None,
        )
        return _carry(act, out + hidden, **_with_mask(act, mask))


class _Gpt2Mlp(Unit):
    def __init__(self, block: Any) -> None:
        super().__init__()
        self.ln_2: Any = block.ln_2
        self.mlp: Any = block.mlp

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        hidden = act["hidden"]
        return _carry(act, hidden + self.mlp(self.ln_2(hidden)))


class _LmHead(Unit):
    """Final norm + LM head; with tied embeddings it holds the embedding (one copy of V x C)."""

    def __init__(self, norm: nn.Module, lm_head: nn.Module, tied_embedding: nn.Module | None):
        super().__init__()
        self.norm: Any = norm
        if tied_embedding is None:
            self.lm_head: Any = lm_head
        else:
            self.tied_embedding: Any = tied_embedding

    def untie(self) -> None:
        """Hold the head as its own `lm_head` Linear (sharing the embedding's weight tensor).

        For int8 (models/precision.py): a Linear can be quantized, a functional call on the
        embedding cannot; the quantized head then holds its own int8 copy.
        """
        if not hasattr(self, "tied_embedding"):
            return
        weight = self.tied_embedding.weight  # (V, C)
        head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        head.weight = weight
        del self.tied_embedding
        self.lm_head = head

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        hidden = self.norm(act["hidden"])
        if hasattr(self, "tied_embedding"):
            return {"logits": one_row.linear(hidden, self.tied_embedding.weight)}
        return {"logits": self.lm_head(hidden)}  # (B, T, V)


class _LlamaEmbed(Unit):
    def __init__(self, embed_tokens: nn.Module) -> None:
        super().__init__()
        self.embed_tokens: Any = embed_tokens

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        ids = act["input_ids"]
        return _decoder_start(act, self.embed_tokens(ids), act.get("position_ids", _positions(ids)))


class _LlamaAttention(_MaskMixin, Unit):
    """x + self_attn(input_layernorm(x)) with rotary embeddings computed from position ids."""

    def __init__(self, layer: Any, rotary: nn.Module, config: Any, layer_index: int) -> None:
        super().__init__()
        self.input_layernorm: Any = layer.input_layernorm
        self.self_attn: Any = layer.self_attn
        # Not a submodule: the rotary table has no weights and is rebuilt from the config.
        self._rotary = [rotary]
        self.config = config
        self.causal = True
        self.layer_index = layer_index

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        hidden = act["hidden"]
        positions = act["position_ids"]
        mask = self._mask(act, past_key_values)
        out, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
            position_embeddings=self._rotary[0](hidden, position_ids=positions),
        )
        return _carry(act, hidden + out, **_with_mask(act, mask))


class _LlamaMlp(Unit):
    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.post_attention_layernorm: Any = layer.post_attention_layernorm
        self.mlp: Any = layer.mlp

    def forward(self, act: Activation, past_key_values: Any = None) -> Activation:
        hidden = act["hidden"]
        return _carry(act, hidden + self.mlp(self.post_attention_layernorm(hidden)))


# --- locating parts and building the unit list ------------------------------------------------

BLOCK_PATHS: dict[str, tuple[str, ...]] = {
    "vit": ("vit.layers", "vit.encoder.layer"),
    "deit": ("deit.layers", "deit.encoder.layer"),
    "bert": ("bert.encoder.layer", "bert.encoder.layers"),
    "gpt2": ("transformer.h",),
    "llama": ("model.layers",),
}


def block_list(model: Any, family: str) -> nn.ModuleList:
    """The model's list of transformer blocks, found by structure (transformers 5.x layout)."""
    candidates = BLOCK_PATHS[family]
    for path in candidates:
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise ConfigError(
        f"cannot find the block list of this {family} model (tried {candidates}); the installed "
        "transformers version has a layout edgesplit does not know (pinned: 5.23.0)"
    )


def _named(unit: Unit, name: str) -> Unit:
    unit.unit_name = name
    return unit


def _rotary_for(config: Any) -> nn.Module:
    """Llama's rotary table, built on the CPU from the config (even under a meta device)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    with torch.device("cpu"):
        return LlamaRotaryEmbedding(config=config)


def make_units(model: Any, family: str) -> list[Unit]:
    """All units of `model` in order: embed, block{i}.attn, block{i}.mlp, ..., head."""
    blocks = block_list(model, family)
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    units: list[Unit] = []
    if family in ("vit", "deit"):
        base = getattr(model, family)
        if family == "deit" and not hasattr(model, "classifier"):
            raise ConfigError("deit: only DeiTForImageClassification (one classifier) is supported")
        units.append(_named(_VitEmbed(base.embeddings), "embed"))
        for i, layer in enumerate(blocks):
            units.append(_named(_VitAttention(layer), f"block{i}.attn"))
            units.append(_named(_VitMlp(layer), f"block{i}.mlp"))
        units.append(_named(_VitHead(base.layernorm, model.classifier), "head"))
    elif family == "bert":
        units.append(_named(_BertEmbed(model.bert.embeddings), "embed"))
        for i, layer in enumerate(blocks):
            units.append(_named(_BertAttention(layer, config), f"block{i}.attn"))
            units.append(_named(_BertMlp(layer), f"block{i}.mlp"))
        units.append(_named(_BertHead(model.bert.pooler, model.dropout, model.classifier), "head"))
    elif family == "gpt2":
        base = model.transformer
        units.append(_named(_Gpt2Embed(base.wte, base.wpe, base.drop), "embed"))
        for i, block in enumerate(blocks):
            units.append(_named(_Gpt2Attention(block, config, i), f"block{i}.attn"))
            units.append(_named(_Gpt2Mlp(block), f"block{i}.mlp"))
        head = _LmHead(base.ln_f, model.lm_head, base.wte if tied else None)
        units.append(_named(head, "head"))
    elif family == "llama":
        rotary = _rotary_for(config)
        embed = model.model.embed_tokens
        units.append(_named(_LlamaEmbed(embed), "embed"))
        for i, layer in enumerate(blocks):
            units.append(_named(_LlamaAttention(layer, rotary, config, i), f"block{i}.attn"))
            units.append(_named(_LlamaMlp(layer), f"block{i}.mlp"))
        head = _LmHead(model.model.norm, model.lm_head, embed if tied else None)
        units.append(_named(head, "head"))
    else:
        raise ConfigError(f"unknown model family '{family}'")
    return units
