"""The co-search design space: transformer-encoder configurations and how they are sampled.

Owns `EncoderConfig` (what we build, train and profile here: BERT-style text or ViT-style image
encoders, optionally with per-layer head and FFN counts), `Architecture`/`LayerSpec`/`OpSpec` (the
per-layer operator view shared with ProTran's heterogeneous FlexiBERT models) and `SearchSpace`
(the choices, sampling with an injected generator, BERT-Base/ViT-Base-shaped baselines).
Pure: pydantic and numpy only, never torch.

[Note: attention type] HF transformers offers two implementations of the same softmax attention
on CPU, `eager` and `sdpa`; they differ in speed and memory, not in maths. Those are our attention
types. ProTran's data adds FlexiBERT operators (weighted multiplicative attention, DFT/DCT token
mixing, dynamic convolutions); they appear in `OpSpec` so that ProTran architectures and ours share
one feature encoding, but only `sa_sdp` heads are built here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from edgesplit.core.schema import FrozenModel, content_hash
from edgesplit.errors import ConfigError

__all__ = [
    "Architecture",
    "AttentionImpl",
    "EncoderConfig",
    "LayerSpec",
    "Modality",
    "OpKind",
    "OpSpec",
    "SearchSpace",
]

Modality = Literal["text", "image"]
AttentionImpl = Literal["sdpa", "eager"]
# FlexiBERT/ProTran operators: scaled dot-product and weighted multiplicative attention heads,
# DFT/DCT token-mixing heads and dynamic-convolution heads ("c_<kernel>_<dim>" upstream).
OpKind = Literal["sa_sdp", "sa_wma", "l_dft", "l_dct", "conv"]
OP_KINDS: tuple[OpKind, ...] = ("sa_sdp", "sa_wma", "l_dft", "l_dct", "conv")


class OpSpec(FrozenModel):
    """One head of a layer: its operator, its width (`dim`) and, for convolutions, the kernel."""

    kind: OpKind
    dim: int = Field(gt=0)
    kernel_size: int = Field(default=0, ge=0)


class LayerSpec(FrozenModel):
    """One encoder layer: hidden size, its heads and its feed-forward stack (hidden sizes)."""

    hidden_size: int = Field(gt=0)
    ops: tuple[OpSpec, ...]
    ffn_sizes: tuple[int, ...]


class Architecture(FrozenModel):
    """Per-layer operator view of an encoder at a given sequence length (tokens incl. CLS)."""

    layers: tuple[LayerSpec, ...]
    seq_len: int = Field(gt=0)
    vocab_size: int = Field(default=0, ge=0)  # text: token embedding rows
    patch_pixels: int = Field(default=0, ge=0)  # image: values per patch (patch² x channels)


class EncoderConfig(FrozenModel):
    """A buildable encoder: constant hidden size and head width, per-layer heads/FFN optional.

    `heads_per_layer`/`ffn_per_layer` override `num_heads`/`ffn_size` layer by layer (they come
    from the heterogeneous space or from grow-and-prune); the head width is always
    `hidden_size // num_heads`, so pruning a head keeps the others' width.
    """

    modality: Modality
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=8)
    num_heads: int = Field(ge=1)
    ffn_size: int = Field(ge=1)
    attention: AttentionImpl = "sdpa"
    heads_per_layer: tuple[int, ...] | None = None
    ffn_per_layer: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> EncoderConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        for name, values in (
            ("heads_per_layer", self.heads_per_layer),
            ("ffn_per_layer", self.ffn_per_layer),
        ):
            if values is not None and len(values) != self.num_layers:
                raise ValueError(f"{name} has {len(values)} entries for {self.num_layers} layers")
            if values is not None and min(values) < 1:
                raise ValueError(f"{name} must be >= 1 per layer, got {values}")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def layer_heads(self) -> tuple[int, ...]:
        return self.heads_per_layer or (self.num_heads,) * self.num_layers

    def layer_ffn(self) -> tuple[int, ...]:
        return self.ffn_per_layer or (self.ffn_size,) * self.num_layers

    @property
    def heterogeneous(self) -> bool:
        return len(set(self.layer_heads())) > 1 or len(set(self.layer_ffn())) > 1

    def key(self) -> str:
        """Stable short id (content hash), used for caches and resumable result files."""
        return content_hash(self.normalized())

    def normalized(self) -> EncoderConfig:
        """Same model with per-layer tuples dropped when they are uniform (one canonical form)."""
        heads, ffn = self.layer_heads(), self.layer_ffn()
        return self.model_copy(
            update={
                "num_heads": self.num_heads,
                "heads_per_layer": None
                if len(set(heads)) == 1 and heads[0] == self.num_heads
                else heads,
                "ffn_per_layer": None if len(set(ffn)) == 1 and ffn[0] == self.ffn_size else ffn,
            }
        )

    def architecture(
        self, seq_len: int, *, vocab_size: int = 0, patch_pixels: int = 0
    ) -> Architecture:
        """The per-layer operator view (every head is an `sa_sdp` op of width `head_dim`)."""
        op = OpSpec(kind="sa_sdp", dim=self.head_dim)
        layers = tuple(
            LayerSpec(hidden_size=self.hidden_size, ops=(op,) * heads, ffn_sizes=(ffn,))
            for heads, ffn in zip(self.layer_heads(), self.layer_ffn(), strict=True)
        )
        return Architecture(
            layers=layers, seq_len=seq_len, vocab_size=vocab_size, patch_pixels=patch_pixels
        )

    def describe(self) -> str:
        """Short human label, e.g. `text L6 H256 A4 F1024 sdpa`.

        Per-layer counts that agree across the layers are shown in place: `A6/12` is 6 heads per
        layer of the 12 that fix the head width (hidden / 12; pruned from 12), `F216` 216 FFN
        neurons per layer. Counts that differ by layer follow as `heads=[...]` / `ffn=[...]`.
        """
        heads, ffn = self.layer_heads(), self.layer_ffn()
        uniform_heads, uniform_ffn = len(set(heads)) == 1, len(set(ffn)) == 1
        label_heads = (
            f"A{self.num_heads}"
            if uniform_heads and heads[0] == self.num_heads
            else f"A{heads[0]}/{self.num_heads}"
            if uniform_heads
            else f"A{self.num_heads}"
        )
        label = (
            f"{self.modality} L{self.num_layers} H{self.hidden_size} {label_heads} "
            f"F{ffn[0] if uniform_ffn else self.ffn_size} {self.attention}"
        )
        if not uniform_heads:
            label += f" heads={list(heads)}"
        if not uniform_ffn:
            label += f" ffn={list(ffn)}"
        return label


class SearchSpace(FrozenModel):
    """Discrete choices for each dimension; the defaults cover ProTran's measured range.

    Invalid combinations (heads not dividing hidden) are never produced: the head count is drawn
    among the choices that divide the drawn hidden size.
    """

    modality: Modality = "text"
    num_layers: tuple[int, ...] = (2, 4, 6, 8, 10, 12)
    hidden_size: tuple[int, ...] = (128, 256, 512, 768)
    num_heads: tuple[int, ...] = (2, 4, 8, 12)
    ffn_size: tuple[int, ...] = (256, 512, 1024, 2048, 3072, 4096)
    attention: tuple[AttentionImpl, ...] = ("sdpa", "eager")
    heterogeneous: bool = False  # sample per-layer heads and FFN sizes

    def heads_for(self, hidden_size: int) -> tuple[int, ...]:
        valid = tuple(h for h in self.num_heads if hidden_size % h == 0)
        if not valid:
            raise ConfigError(
                f"no head count in {self.num_heads} divides hidden size {hidden_size}; "
                "add a divisor to num_heads"
            )
        return valid

    def size(self) -> int:
        """Number of homogeneous configurations in the space."""
        per_hidden = sum(len(self.heads_for(h)) for h in self.hidden_size)
        return len(self.num_layers) * per_hidden * len(self.ffn_size) * len(self.attention)

    def homogeneous_configs(self) -> list[EncoderConfig]:
        """Every homogeneous configuration of the space (`size()` of them), in a fixed order."""
        return [
            EncoderConfig(
                modality=self.modality,
                num_layers=layers,
                hidden_size=hidden,
                num_heads=heads,
                ffn_size=ffn,
                attention=attention,
            )
            for layers in self.num_layers
            for hidden in self.hidden_size
            for heads in self.heads_for(hidden)
            for ffn in self.ffn_size
            for attention in self.attention
        ]

    def sample(self, rng: np.random.Generator) -> EncoderConfig:
        """One configuration drawn uniformly per dimension."""
        hidden = int(rng.choice(self.hidden_size))
        num_layers = int(rng.choice(self.num_layers))
        heads_choices = self.heads_for(hidden)
        num_heads = int(rng.choice(heads_choices))
        ffn = int(rng.choice(self.ffn_size))
        attention: AttentionImpl = self.attention[int(rng.integers(len(self.attention)))]
        heads_per_layer: tuple[int, ...] | None = None
        ffn_per_layer: tuple[int, ...] | None = None
        if self.heterogeneous:
            # Per-layer counts may not exceed the head count that fixes the head width.
            smaller = [h for h in heads_choices if h <= num_heads]
            heads_per_layer = tuple(int(rng.choice(smaller)) for _ in range(num_layers))
            ffn_per_layer = tuple(int(rng.choice(self.ffn_size)) for _ in range(num_layers))
        return EncoderConfig(
            modality=self.modality,
            num_layers=num_layers,
            hidden_size=hidden,
            num_heads=num_heads,
            ffn_size=ffn,
            attention=attention,
            heads_per_layer=heads_per_layer,
            ffn_per_layer=ffn_per_layer,
        ).normalized()

    def sample_unique(
        self, rng: np.random.Generator, count: int, *, exclude: Sequence[str] = ()
    ) -> list[EncoderConfig]:
        """`count` distinct configurations (by `key()`), none of whose keys is in `exclude`."""
        seen = set(exclude)
        out: list[EncoderConfig] = []
        for _ in range(count * 50):
            config = self.sample(rng)
            if config.key() not in seen:
                seen.add(config.key())
                out.append(config)
                if len(out) == count:
                    return out
        raise ConfigError(
            f"could only draw {len(out)} distinct configs of {count}; the space is too small"
        )

    def base_shaped(self) -> EncoderConfig:
        """The BERT-Base/ViT-Base shape inside this space: deepest, widest, 12 heads, FFN = 4x.

        With the default choices this is exactly BERT-Base (L12 H768 A12 F3072); in a scaled-down
        space it is the same proportions at the largest hidden size offered.
        """
        hidden = max(self.hidden_size)
        heads = self.heads_for(hidden)
        num_heads = 12 if 12 in heads else max(heads)
        ffn = min(self.ffn_size, key=lambda f: abs(f - 4 * hidden))
        return EncoderConfig(
            modality=self.modality,
            num_layers=max(self.num_layers),
            hidden_size=hidden,
            num_heads=num_heads,
            ffn_size=ffn,
            attention=self.attention[0],
        )

    def contains(self, config: EncoderConfig) -> bool:
        """Whether a homogeneous config uses only this space's choices."""
        return (
            config.num_layers in self.num_layers
            and config.hidden_size in self.hidden_size
            and config.num_heads in self.num_heads
            and config.ffn_size in self.ffn_size
            and config.attention in self.attention
        )
