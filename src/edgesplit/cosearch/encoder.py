"""The encoder that co-search builds, trains, profiles, prunes and grows (torch).

Owns `Encoder` (BERT-style post-LN layers, or pre-LN with `norm_first=True`, with per-layer
head and FFN counts, over token ids or
image patches, a classifier on the CLS token), gate hooks for importance scores, and the
structural edits grow-and-prune applies (`prune_heads`, `prune_ffn`, `grow_heads`, `grow_ffn`).
Imports torch and space; never ray or planners.

Why not HF `BertModel`: transformers 5.23 no longer offers `prune_heads`, and a BertConfig
cannot express per-layer head or FFN counts. The layer maths is BERT's (post-LN, GELU FFN) and a
homogeneous `Encoder` has exactly `BertModel`'s encoder parameter count (tested); the attention
type is the same choice HF offers on CPU: `eager` (explicit softmax) or `sdpa`.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from edgesplit.cosearch.space import EncoderConfig

__all__ = ["Encoder", "EncoderLayer"]


class EncoderLayer(nn.Module):
    """Self-attention (heads x head_dim) then FFN, each with residual and a LayerNorm.

    Post-LN (BERT, default) normalises after each residual add; pre-LN (`norm_first`, as in ViT
    and GPT-2) normalises each sub-layer's input and leaves the residual stream untouched, which
    trains stably at depth without a tuned warm-up. Same parameters, same FLOPs.
    """

    num_heads: int
    head_dim: int
    attention: str
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    out: nn.Linear
    fc1: nn.Linear
    fc2: nn.Linear

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        ffn_size: int,
        attention: str,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.attention = num_heads, head_dim, attention
        self.norm_first = norm_first
        self.query = nn.Linear(hidden_size, num_heads * head_dim)
        self.key = nn.Linear(hidden_size, num_heads * head_dim)
        self.value = nn.Linear(hidden_size, num_heads * head_dim)
        self.out = nn.Linear(num_heads * head_dim, hidden_size)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.fc1 = nn.Linear(hidden_size, ffn_size)
        self.fc2 = nn.Linear(ffn_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)

    @property
    def ffn_size(self) -> int:
        return self.fc1.out_features

    def forward(
        self,
        x: torch.Tensor,
        head_gate: torch.Tensor | None = None,
        ffn_gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        residual = x
        if self.norm_first:
            x = self.norm1(x)
        q = self.query(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.key(x).view(B, T, H, D).transpose(1, 2)
        v = self.value(x).view(B, T, H, D).transpose(1, 2)
        if self.attention == "sdpa":
            context = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)  # (B, H, T, T)
            context = scores.softmax(dim=-1) @ v
        if head_gate is not None:
            context = context * head_gate.view(1, H, 1, 1)
        attended = self.out(context.transpose(1, 2).reshape(B, T, H * D))
        if self.norm_first:
            x = residual + attended
            hidden = F.gelu(self.fc1(self.norm2(x)))  # (B, T, F)
        else:
            x = self.norm1(residual + attended)
            hidden = F.gelu(self.fc1(x))
        if ffn_gate is not None:
            hidden = hidden * ffn_gate
        return x + self.fc2(hidden) if self.norm_first else self.norm2(x + self.fc2(hidden))


class Encoder(nn.Module):
    """Token or patch embeddings + CLS + learned positions, the layers, a linear classifier.

    Args:
        config: the architecture (per-layer heads/FFN honoured).
        num_classes: classifier outputs.
        seq_len: tokens per input excluding CLS (text length, or number of patches).
        vocab_size: text only, token embedding rows.
        patch_pixels: image only, values per patch.
        norm_first: pre-LN layers plus a final LayerNorm before the classifier (default post-LN).
    """

    def __init__(
        self,
        config: EncoderConfig,
        *,
        num_classes: int,
        seq_len: int,
        vocab_size: int = 0,
        patch_pixels: int = 0,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.modality = config.modality
        self.attention = config.attention
        self.head_dim = config.head_dim
        self.base_heads = config.num_heads
        self.base_ffn = config.ffn_size
        if config.modality == "text":
            self.embed: nn.Module = nn.Embedding(max(vocab_size, 2), hidden)
        else:
            self.embed = nn.Linear(max(patch_pixels, 1), hidden)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        self.position = nn.Parameter(torch.randn(1, seq_len + 1, hidden) * 0.02)
        self.embed_norm = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(
            EncoderLayer(hidden, heads, config.head_dim, ffn, config.attention, norm_first)
            for heads, ffn in zip(config.layer_heads(), config.layer_ffn(), strict=True)
        )
        # Pre-LN leaves the residual stream unnormalised: one LayerNorm before the head.
        self.final_norm: nn.Module = nn.LayerNorm(hidden) if norm_first else nn.Identity()
        self.classifier = nn.Linear(hidden, num_classes)

    def blocks(self) -> list[EncoderLayer]:
        """The layers, typed."""
        return [cast(EncoderLayer, layer) for layer in self.layers]

    def config(self) -> EncoderConfig:
        """The architecture as it is now (after any prune/grow edits)."""
        heads = tuple(layer.num_heads for layer in self.blocks())
        ffn = tuple(layer.ffn_size for layer in self.blocks())
        return EncoderConfig(
            modality=self.modality,  # type: ignore[arg-type]  # set from a Modality
            num_layers=len(self.layers),
            hidden_size=self.cls.shape[-1],
            num_heads=self.base_heads,
            ffn_size=self.base_ffn,
            attention=self.attention,  # type: ignore[arg-type]
            heads_per_layer=heads,
            ffn_per_layer=ffn,
        ).normalized()

    def forward(
        self,
        inputs: torch.Tensor,
        head_gates: list[torch.Tensor] | None = None,
        ffn_gates: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = self.embed(inputs)  # (B, T, C)
        x = (
            torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
            + self.position[:, : x.shape[1] + 1]
        )
        x = self.embed_norm(x)
        for index, layer in enumerate(self.layers):
            x = layer(
                x,
                None if head_gates is None else head_gates[index],
                None if ffn_gates is None else ffn_gates[index],
            )
        return self.classifier(self.final_norm(x[:, 0]))  # (B, classes)

    # --- structural edits (grow-and-prune); each keeps the listed units' weights exactly ----------

    @torch.no_grad()
    def prune_heads(self, layer_index: int, keep: list[int]) -> None:
        """Keep only heads `keep` (sorted indices) in one layer."""
        layer = self.blocks()[layer_index]
        D = layer.head_dim
        cols = torch.tensor([h * D + d for h in keep for d in range(D)], dtype=torch.long)
        for name in ("query", "key", "value"):
            setattr(layer, name, _select_rows(getattr(layer, name), cols))
        layer.out = _select_cols(layer.out, cols)
        layer.num_heads = len(keep)

    @torch.no_grad()
    def prune_ffn(self, layer_index: int, keep: list[int]) -> None:
        """Keep only FFN neurons `keep` in one layer."""
        layer = self.blocks()[layer_index]
        index = torch.tensor(keep, dtype=torch.long)
        layer.fc1 = _select_rows(layer.fc1, index)
        layer.fc2 = _select_cols(layer.fc2, index)

    @torch.no_grad()
    def grow_ffn(self, layer_index: int, extra: int, generator: torch.Generator) -> None:
        """Add `extra` neurons: random input weights, zero output weights (function-preserving)."""
        layer = self.blocks()[layer_index]
        fc1, fc2 = layer.fc1, layer.fc2
        new_in = torch.randn(extra, fc1.in_features, generator=generator) * 0.02
        layer.fc1 = _stack_rows(fc1, new_in, torch.zeros(extra))
        layer.fc2 = _stack_cols(fc2, torch.zeros(fc2.out_features, extra))

    @torch.no_grad()
    def grow_heads(self, layer_index: int, extra: int, generator: torch.Generator) -> None:
        """Add `extra` heads with random Q/K/V and zero output columns (function-preserving)."""
        layer = self.blocks()[layer_index]
        D = layer.head_dim
        for name in ("query", "key", "value"):
            linear = getattr(layer, name)
            rows = torch.randn(extra * D, linear.in_features, generator=generator) * 0.02
            setattr(layer, name, _stack_rows(linear, rows, torch.zeros(extra * D)))
        layer.out = _stack_cols(layer.out, torch.zeros(layer.out.out_features, extra * D))
        layer.num_heads += extra


def _select_rows(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, len(index))
    new.weight.copy_(linear.weight[index])
    new.bias.copy_(linear.bias[index])
    return new


def _select_cols(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(index), linear.out_features)
    new.weight.copy_(linear.weight[:, index])
    new.bias.copy_(linear.bias)
    return new


def _stack_rows(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, linear.out_features + weight.shape[0])
    new.weight.copy_(torch.cat([linear.weight, weight]))
    new.bias.copy_(torch.cat([linear.bias, bias]))
    return new


def _stack_cols(linear: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features + weight.shape[1], linear.out_features)
    new.weight.copy_(torch.cat([linear.weight, weight], dim=1))
    new.bias.copy_(linear.bias)
    return new
