"""Cutting HF transformers models into units: embedding, attention half, MLP half, head.

Each unit is an `nn.Module` mapping an `Activation` (a dict of named tensors) to the next one.
A block is split where a cut is legal without extra traffic: after the attention half (norm +
attention + residual add) and after the MLP half; only the hidden state (B, T, C) and what the
next units need (mask, position ids) cross a cut. Families: ViT/DeiT, BERT, GPT-2, Llama.
Block lists are located by structure (see `_block_list`), checked by a test against upgrades.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgesplit.errors import ConfigError

__all__ = ["Activation", "Unit", "block_list", "make_units"]

Activation = dict[str, torch.Tensor]


class Unit(nn.Module):
    """One cuttable piece of a model."""

    unit_name: str = "unit"

    def forward(self, act: Activation) -> Activation:  # pragma: no cover - abstract
        raise NotImplementedError


def _carry(act: Activation, hidden: torch.Tensor) -> Activation:
    """The same activation with a new hidden state (masks and positions travel along)."""
    return {**{k: v for k, v in act.items() if k != "hidden"}, "hidden": hidden}


# --- ViT / DeiT ------------------------------------------------------------------------------


class _VitEmbed(Unit):
    def __init__(self, embeddings: nn.Module, config: Any) -> None:
        super().__init__()
        self.embeddings: Any = embeddings
        self.config: Any = config

    def forward(self, act: Activation) -> Activation:
        pixels = act["pixel_values"]
        dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        return {"hidden": self.embeddings(pixels.to(dtype))}  # (B, T, C)


class _PreNormAttention(Unit):
    """ViT/DeiT: x + dropout(attention(layernorm_before(x)))."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer: Any = layer

    def forward(self, act: Activation) -> Activation:
        hidden = act["hidden"]
        out, _ = self.layer.attention(self.layer.layernorm_before(hidden), act.get("mask"))
        return _carry(act, self.layer.dropout(out) + hidden)


class _PreNormMlp(Unit):
    """ViT/DeiT: x + dropout(mlp(layernorm_after(x)))."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer: Any = layer

    def forward(self, act: Activation) -> Activation:
        hidden = act["hidden"]
        out = self.layer.mlp(self.layer.layernorm_after(hidden))
        return _carry(act, self.layer.dropout(out) + hidden)


class _VitHead(Unit):
    def __init__(self, norm: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.norm: Any = norm
        self.classifier: Any = classifier

    def forward(self, act: Activation) -> Activation:
        return {"logits": self.classifier(self.norm(act["hidden"])[:, 0, :])}


# --- BERT (post-norm) -------------------------------------------------------------------------


class _BertEmbed(Unit):
    def __init__(self, embeddings: nn.Module, config: Any) -> None:
        super().__init__()
        self.embeddings: Any = embeddings
        self.config: Any = config

    def forward(self, act: Activation) -> Activation:
        from transformers.masking_utils import create_bidirectional_mask

        hidden = self.embeddings(
            input_ids=act["input_ids"], token_type_ids=act.get("token_type_ids")
        )
        out: Activation = {"hidden": hidden}
        mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=act.get("attention_mask")
        )
        if isinstance(mask, torch.Tensor):  # None when sdpa can use is_causal instead
            out["mask"] = mask
        return out


class _BertAttention(Unit):
    """LayerNorm(x + attention(x)): BertAttention already adds the residual."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer: Any = layer

    def forward(self, act: Activation) -> Activation:
        out, _ = self.layer.attention(act["hidden"], act.get("mask"))
        return _carry(act, out)


class _BertMlp(Unit):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer: Any = layer

    def forward(self, act: Activation) -> Activation:
        hidden = act["hidden"]
        return _carry(act, self.layer.output(self.layer.intermediate(hidden), hidden))


class _BertHead(Unit):
    def __init__(self, pooler: nn.Module, dropout: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.pooler: Any = pooler
        self.dropout: Any = dropout
        self.classifier: Any = classifier

    def forward(self, act: Activation) -> Activation:
        return {"logits": self.classifier(self.dropout(self.pooler(act["hidden"])))}


# --- GPT-2 and Llama (pre-norm decoders) ------------------------------------------------------


def _positions(input_ids: torch.Tensor) -> torch.Tensor:
    return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)  # (1, T)


class _Gpt2Embed(Unit):
    def __init__(self, wte: nn.Module, wpe: nn.Module, drop: nn.Module, config: Any) -> None:
        super().__init__()
        self.wte: Any = wte
        self.wpe: Any = wpe
        self.drop: Any = drop
        self.config: Any = config

    def forward(self, act: Activation) -> Activation:
        from transformers.masking_utils import create_causal_mask

        ids = act["input_ids"]
        positions = act.get("position_ids", _positions(ids))
        embeds = self.wte(ids)
        hidden = self.drop(embeds + self.wpe(positions))
        out: Activation = {"hidden": hidden, "position_ids": positions}
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=embeds,
            attention_mask=act.get("attention_mask"),
            past_key_values=None,
            position_ids=positions,
        )
        if isinstance(mask, torch.Tensor):  # None when sdpa can use is_causal instead
            out["mask"] = mask
        return out


class _Gpt2Attention(Unit):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block: Any = block

    def forward(self, act: Activation) -> Activation:
        hidden = act["hidden"]
        out, _ = self.block.attn(
            self.block.ln_1(hidden),
            past_key_values=None,
            attention_mask=act.get("mask"),
            use_cache=False,
            position_ids=act.get("position_ids"),
        )
        return _carry(act, out + hidden)


class _Gpt2Mlp(Unit):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block: Any = block

    def forward(self, act: Activation) -> Activation:
        hidden = act["hidden"]
        return _carry(act, hidden + self.block.mlp(self.block.ln_2(hidden)))


class _LmHead(Unit):
    def __init__(self, norm: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.norm: Any = norm
        self.lm_head: Any = lm_head

    def forward(self, act: Activation) -> Activation:
        return {"logits": self.lm_head(self.norm(act["hidden"]))}  # (B, T, V)


class _LlamaEmbed(Unit):
    def __init__(self, embed_tokens: nn.Module, config: Any) -> None:
        super().__init__()
        self.embed_tokens: Any = embed_tokens
        self.config: Any = config

    def forward(self, act: Activation) -> Activation:
        from transformers.masking_utils import create_causal_mask

        ids = act["input_ids"]
        positions = act.get("position_ids", _positions(ids))
        hidden = self.embed_tokens(ids)
        out: Activation = {"hidden": hidden, "position_ids": positions}
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=act.get("attention_mask"),
            past_key_values=None,
            position_ids=positions,
        )
        if isinstance(mask, torch.Tensor):  # None when sdpa can use is_causal instead
            out["mask"] = mask
        return out


class _LlamaAttention(Unit):
    """x + self_attn(input_layernorm(x)) with rotary embeddings computed from position ids."""

    def __init__(self, layer: nn.Module, rotary: nn.Module) -> None:
        super().__init__()
        self.layer: Any = layer
        # Not a submodule: the rotary table has no weights and is shared, not stage state.
        self._rotary = [rotary]

    def forward(self, act: Activation) -> Activation:
        hidden = act["hidden"]
        positions = act["position_ids"]
        cos_sin = self._rotary[0](hidden, position_ids=positions)
        out, _ = self.layer.self_attn(
            hidden_states=self.layer.input_layernorm(hidden),
            attention_mask=act.get("mask"),
            position_ids=positions,
            past_key_values=None,
            use_cache=False,
            position_embeddings=cos_sin,
        )
        return _carry(act, hidden + out)


class _LlamaMlp(Unit):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer: Any = layer

    def forward(self, act: Activation) -> Activation:
        hidden = act["hidden"]
        return _carry(act, hidden + self.layer.mlp(self.layer.post_attention_layernorm(hidden)))


# --- locating parts and building the unit list ------------------------------------------------


def block_list(model: Any, family: str) -> nn.ModuleList:
    """The model's list of transformer blocks, found by structure (transformers 5.x layout)."""
    candidates = {
        "vit": ("vit.layers", "vit.encoder.layer"),
        "deit": ("deit.layers", "deit.encoder.layer"),
        "bert": ("bert.encoder.layer", "bert.encoder.layers"),
        "gpt2": ("transformer.h",),
        "llama": ("model.layers",),
    }[family]
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


def make_units(model: Any, family: str, rotary: nn.Module | None = None) -> list[Unit]:
    """All units of `model` in order: embed, block{i}.attn, block{i}.mlp, ..., head."""
    blocks = block_list(model, family)
    config = model.config
    units: list[Unit] = []
    if family in ("vit", "deit"):
        base = getattr(model, family)
        units.append(_named(_VitEmbed(base.embeddings, config), "embed"))
        for i, layer in enumerate(blocks):
            units.append(_named(_PreNormAttention(layer), f"block{i}.attn"))
            units.append(_named(_PreNormMlp(layer), f"block{i}.mlp"))
        units.append(_named(_VitHead(base.layernorm, model.classifier), "head"))
    elif family == "bert":
        units.append(_named(_BertEmbed(model.bert.embeddings, config), "embed"))
        for i, layer in enumerate(blocks):
            units.append(_named(_BertAttention(layer), f"block{i}.attn"))
            units.append(_named(_BertMlp(layer), f"block{i}.mlp"))
        units.append(_named(_BertHead(model.bert.pooler, model.dropout, model.classifier), "head"))
    elif family == "gpt2":
        base = model.transformer
        units.append(_named(_Gpt2Embed(base.wte, base.wpe, base.drop, config), "embed"))
        for i, block in enumerate(blocks):
            units.append(_named(_Gpt2Attention(block), f"block{i}.attn"))
            units.append(_named(_Gpt2Mlp(block), f"block{i}.mlp"))
        units.append(_named(_LmHead(base.ln_f, model.lm_head), "head"))
    elif family == "llama":
        if rotary is None:
            rotary = model.model.rotary_emb
        units.append(_named(_LlamaEmbed(model.model.embed_tokens, config), "embed"))
        for i, layer in enumerate(blocks):
            units.append(_named(_LlamaAttention(layer, rotary), f"block{i}.attn"))
            units.append(_named(_LlamaMlp(layer), f"block{i}.mlp"))
        units.append(_named(_LmHead(model.model.norm, model.lm_head), "head"))
    else:
        raise ConfigError(f"unknown model family '{family}'")
    return units
