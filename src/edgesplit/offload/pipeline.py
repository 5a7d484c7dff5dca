"""Server-side inference: reconstruct the image from received patches, paste, classify.

Owns the round-1 / round-2 computation on tensors (batched; the server uses batch 1) and what
round 2 reuses from round 1. No HTTP, no codecs. torch + numpy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from edgesplit.offload.models import (
    EncoderState,
    MaskedAutoencoder,
    VitClassifier,
    from_model_pixels,
    to_model_pixels,
)

__all__ = ["OffloadPipeline", "RoundResult"]

ReuseMode = Literal["incremental", "recompute"]


@dataclass(frozen=True, slots=True)
class RoundResult:
    """One round's output for a batch."""

    probabilities: np.ndarray  # (B, K)
    image: np.ndarray  # (B, H, W) float pixels in [0, 255], real patches pasted
    uncertainty: np.ndarray  # (B, N) predicted log-variance, -inf at received patches
    state: EncoderState
    pixels: torch.Tensor  # (B, k_total, p*p) normalised received patches
    timings_s: dict[str, float]


class OffloadPipeline:
    """MAE reconstruction + paste + ViT classification, with round-2 reuse of round-1 work."""

    def __init__(self, mae: MaskedAutoencoder, classifier: VitClassifier) -> None:
        self.mae = mae.eval()
        self.classifier = classifier.eval()
        self.image_size = mae.config.image_size
        self.patch_size = mae.config.patch_size
        self.num_patches = mae.config.num_patches

    @torch.no_grad()
    def run(
        self,
        patches: np.ndarray,
        indices: np.ndarray,
        previous: RoundResult | None = None,
        reuse: ReuseMode = "incremental",
    ) -> RoundResult:
        """Run one round on uint8 patches (B, k, p, p) at `indices` (B, k).

        With `previous` (round 1 of the same images), `patches`/`indices` are only the new
        patches. Reused from round 1: the decoded, normalised round-1 patches (no re-decode) and,
        with reuse="incremental", the encoder state (keys/values and outputs of the round-1
        tokens), so only the new tokens pass through the encoder. reuse="recompute" re-encodes
        all k1 + k2 patches from scratch (the reference the saving is measured against).
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        batch, k = indices.shape
        new_pixels = to_model_pixels(patches).reshape(batch, k, -1)  # (B, k, p*p)
        # a copy: indices may be a read-only view (e.g. of a decoded frame's buffer)
        new_index = torch.from_numpy(np.array(indices, dtype=np.int64))
        if previous is None:
            state = self.mae.encode(new_pixels, new_index)
            pixels = new_pixels
        elif reuse == "incremental":
            state = self.mae.encode(new_pixels, new_index, past=previous.state)
            pixels = torch.cat([previous.pixels, new_pixels], dim=1)
        else:
            pixels = torch.cat([previous.pixels, new_pixels], dim=1)
            state = self.mae.encode(pixels, torch.cat([previous.state.indices, new_index], dim=1))
        timings["encode_s"] = time.perf_counter() - start
        t = time.perf_counter()
        predicted, log_variance = self.mae.decode(state)  # (B, N, p*p), (B, N)
        # Paste the real (received) patches over the prediction.
        predicted.scatter_(1, state.indices[..., None].expand(-1, -1, pixels.shape[-1]), pixels)
        log_variance.scatter_(1, state.indices, float("-inf"))
        side = self.image_size // self.patch_size
        p = self.patch_size
        image = (
            predicted.reshape(batch, side, side, p, p)
            .permute(0, 1, 3, 2, 4)
            .reshape(batch, 1, self.image_size, self.image_size)
        )  # (B, 1, H, W) normalised
        timings["decode_s"] = time.perf_counter() - t
        t = time.perf_counter()
        logits = self.classifier(image)
        timings["classify_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - start
        return RoundResult(
            probabilities=torch.softmax(logits, dim=-1).numpy(),
            image=from_model_pixels(image[:, 0]).numpy(),
            uncertainty=log_variance.numpy(),
            state=state,
            pixels=pixels,
            timings_s=timings,
        )

    @torch.no_grad()
    def classify_images(self, images: np.ndarray) -> np.ndarray:
        """Full uint8 (or float 0..255) images (B, H, W) -> probabilities (B, K)."""
        x = to_model_pixels(images)[:, None]  # (B, 1, H, W)
        return torch.softmax(self.classifier(x), dim=-1).numpy()

    @staticmethod
    def most_uncertain(result: RoundResult, k: int) -> np.ndarray:
        """(B, k) indices of the not-yet-received patches with the largest predicted variance."""
        order = np.argsort(-result.uncertainty, axis=1, kind="stable")
        return order[:, :k].astype(np.int64)


def tiny_pipeline(seed: int = 0) -> OffloadPipeline:
    """A randomly initialised, very small pipeline (64x64, 8x8 patches) for protocol tests."""
    from edgesplit.offload.models import MaeConfig, VitConfig

    torch.manual_seed(seed)
    mae = MaskedAutoencoder(
        MaeConfig(
            dim=16, depth=1, num_heads=2, decoder_dim=16, decoder_depth=1, decoder_num_heads=2
        )
    )
    classifier = VitClassifier(VitConfig(dim=16, depth=1, num_heads=2))
    return OffloadPipeline(mae, classifier)
