"""The two small models behind offloading: a masked autoencoder (MAE) and a ViT classifier.

Owns our own MAE (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners": the
encoder sees only the visible patches, a light decoder fills in the masked ones) with a
per-patch log-variance head (where the reconstruction is least certain) and an encoder that can
extend a round-1 encoding with new patches (reusing round-1 keys/values), plus a small ViT
classifier. Checkpoints are safetensors + a JSON config (no pickle). torch only; no HF.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "PIXEL_MEAN",
    "PIXEL_STD",
    "EncoderState",
    "MaeConfig",
    "MaskedAutoencoder",
    "VitClassifier",
    "VitConfig",
    "load_mae",
    "load_models",
    "save_model",
    "sincos_2d",
]

# Fashion-MNIST pixel statistics (of [0, 1] pixels), used to normalise model inputs.
PIXEL_MEAN = 0.286
PIXEL_STD = 0.353


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position table, (side*side, dim), row-major like the patches."""
    if dim % 4:
        raise ValueError(f"sin-cos table needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(
        torch.arange(side, dtype=torch.float64),
        torch.arange(side, dtype=torch.float64),
        indexing="ij",
    )
    parts = []
    for coord in (rows.reshape(-1), cols.reshape(-1)):
        angle = coord[:, None] * omega[None, :]  # (N, dim/4)
        parts += [torch.sin(angle), torch.cos(angle)]
    table = torch.cat(parts, dim=1).float()
    assert table.abs().sum() > 0, "position table must not be zero"
    return table


class Block(nn.Module):
    """Pre-norm transformer block whose attention can also attend to cached keys/values."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(
        self, x: torch.Tensor, past_kv: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, C) -> (B, T, C) and this call's own (k, v), each (B, H, T, C/H)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, C/H)
        k_all, v_all = k, v
        if past_kv is not None:
            k_all = torch.cat([past_kv[0], k], dim=2)
            v_all = torch.cat([past_kv[1], v], dim=2)
        attn = F.scaled_dot_product_attention(q, k_all, v_all)  # (B, H, T, C/H)
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, tokens, dim))
        x = x + self.mlp(self.norm2(x))
        return x, (k, v)


@dataclass(frozen=True, slots=True)
class MaeConfig:
    image_size: int = 64
    patch_size: int = 8
    dim: int = 96
    depth: int = 4
    num_heads: int = 3
    decoder_dim: int = 64
    decoder_depth: int = 2
    decoder_num_heads: int = 2
    # Colour channels per pixel; a patch vector is (p, p, channels) flattened. 1 (grayscale)
    # is what the Fashion-MNIST checkpoints use (their JSON configs predate this field).
    channels: int = 1

    @property
    def side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.side**2

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size**2


@dataclass(frozen=True, slots=True)
class EncoderState:
    """What round 1 leaves for round 2: visible indices, encoder outputs and per-layer (k, v)."""

    indices: torch.Tensor  # (B, k) long
    latent: torch.Tensor  # (B, k, C) final encoder output (before the last norm)
    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer, each (B, H, k, C/H)


class MaskedAutoencoder(nn.Module):
    """MAE over (B, N, channels*p*p) normalised patches -> pixels + a log-variance per patch."""

    pos: torch.Tensor
    decoder_pos: torch.Tensor

    def __init__(self, config: MaeConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Linear(config.patch_dim, config.dim)
        self.blocks = nn.ModuleList(
            Block(config.dim, config.num_heads) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim)
        self.decoder_embed = nn.Linear(config.dim, config.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(config.decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(config.decoder_dim, config.decoder_num_heads) for _ in range(config.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(config.decoder_dim)
        self.decoder_head = nn.Linear(config.decoder_dim, config.patch_dim + 1)
        # Fixed (not learned) position tables; pitfall in docs/architecture.md §8
        # is why we build them ourselves and check they are non-zero.
        self.register_buffer("pos", sincos_2d(config.side, config.dim), persistent=False)
        self.register_buffer(
            "decoder_pos", sincos_2d(config.side, config.decoder_dim), persistent=False
        )
        nn.init.normal_(self.mask_token, std=0.02)

    def encode(
        self, patches: torch.Tensor, indices: torch.Tensor, past: EncoderState | None = None
    ) -> EncoderState:
        """Encode visible patches (B, k, p*p) at `indices` (B, k).

        With `past`, only the new patches are run through the encoder; at every layer they
        attend to the cached round-1 keys/values as well as to each other, while the round-1
        tokens keep their round-1 states (they do not see the new patches). This costs k_new
        tokens instead of k_old + k_new and is an approximation of a full re-encode.
        """
        x = self.patch_embed(patches) + self.pos[indices]  # (B, k, C)
        layer_kv = []
        for layer, block in enumerate(self.blocks):
            x, kv = block(x, None if past is None else past.kv[layer])
            layer_kv.append(kv)
        if past is None:
            return EncoderState(indices=indices, latent=x, kv=tuple(layer_kv))
        return EncoderState(
            indices=torch.cat([past.indices, indices], dim=1),
            latent=torch.cat([past.latent, x], dim=1),
            kv=tuple(
                (torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2))
                for (pk, pv), (k, v) in zip(past.kv, layer_kv, strict=True)
            ),
        )

    def decode(self, state: EncoderState) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (predicted patches (B, N, p*p) normalised, log-variance (B, N))."""
        latent = self.decoder_embed(self.norm(state.latent))  # (B, k, Cd)
        batch = latent.shape[0]
        n = self.config.num_patches
        tokens = self.mask_token.expand(batch, n, -1).clone()  # (B, N, Cd)
        tokens.scatter_(1, state.indices[..., None].expand(-1, -1, latent.shape[-1]), latent)
        x = tokens + self.decoder_pos
        for block in self.decoder_blocks:
            x, _ = block(x)
        out = self.decoder_head(self.decoder_norm(x))  # (B, N, p*p + 1)
        return out[..., :-1], out[..., -1]

    def forward(
        self, patches: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.encode(patches, indices))


@dataclass(frozen=True, slots=True)
class VitConfig:
    image_size: int = 64
    patch_size: int = 16
    dim: int = 96
    depth: int = 4
    num_heads: int = 3
    num_classes: int = 10

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class VitClassifier(nn.Module):
    """Small ViT (Dosovitskiy et al., 2021) on (B, 1, H, W) normalised images -> logits (B, K)."""

    def __init__(self, config: VitConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Conv2d(1, config.dim, config.patch_size, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos = nn.Parameter(torch.randn(1, config.num_patches + 1, config.dim) * 0.02)
        self.blocks = nn.ModuleList(
            Block(config.dim, config.num_heads) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, T, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x, _ = block(x)
        return self.head(self.norm(x[:, 0]))


def save_model(model: MaskedAutoencoder | VitClassifier, directory: Path, name: str) -> None:
    """Write <name>.safetensors (fp16) and <name>.json (config) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(
        json.dumps(asdict(model.config), indent=2, sort_keys=True) + "\n"
    )


def _load(directory: Path, name: str, model: nn.Module) -> None:
    state = {k: v.float() for k, v in load_file(str(directory / f"{name}.safetensors")).items()}
    model.load_state_dict(state)
    model.eval()


def load_mae(directory: Path, name: str = "mae") -> MaskedAutoencoder:
    """Load one MAE checkpoint (<name>.json + <name>.safetensors) written by `save_model`."""
    mae = MaskedAutoencoder(MaeConfig(**json.loads((directory / f"{name}.json").read_text())))
    _load(directory, name, mae)
    return mae


def load_models(directory: Path) -> tuple[MaskedAutoencoder, VitClassifier]:
    """Load the MAE and classifier checkpoints written by `save_model`."""
    mae_config = MaeConfig(**json.loads((directory / "mae.json").read_text()))
    vit_config = VitConfig(**json.loads((directory / "classifier.json").read_text()))
    mae, vit = MaskedAutoencoder(mae_config), VitClassifier(vit_config)
    _load(directory, "mae", mae)
    _load(directory, "classifier", vit)
    return mae, vit


def to_model_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape) -> normalised float tensor."""
    x = torch.as_tensor(images).float() / 255.0
    return (x - PIXEL_MEAN) / PIXEL_STD


def from_model_pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalised float -> uint8-range float in [0, 255] (not rounded)."""
    return ((x * PIXEL_STD + PIXEL_MEAN) * 255.0).clamp(0.0, 255.0)


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
