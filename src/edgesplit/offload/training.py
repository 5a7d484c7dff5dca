"""Train the offloading models (MAE, then a reconstruction-robust ViT) on Fashion-MNIST.

Owns the training loops behind `make models` (scripts/train_offload_models.py). Single-thread
CPU, minutes. The classifier sees half full images and half MAE reconstructions (with the real
patches pasted back) so that it stays accurate on what the server actually classifies.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from edgesplit.offload.data import IMAGE_SIZE, load_fashion_mnist, upscale
from edgesplit.offload.models import (
    MaeConfig,
    MaskedAutoencoder,
    VitClassifier,
    VitConfig,
    cosine_lr,
    save_model,
    to_model_pixels,
)
from edgesplit.offload.patches import grid_order

if TYPE_CHECKING:
    from edgesplit.offload.photos import PixelNorm

__all__ = ["VALIDATION_SIZE", "patch_importance_order", "train_all", "train_photo_mae"]

log = logging.getLogger(__name__)

# The last VALIDATION_SIZE training images are held out: the policy's accuracy tables are
# measured on them, never on the test split that the benchmark reports.
VALIDATION_SIZE = 2000


def patch_importance_order(images: np.ndarray, patch_size: int) -> np.ndarray:
    """Patch indices by decreasing mean pixel standard deviation over `images` (n, H, W).

    This is the "server" sampling order: the server publishes it and clients send its prefix.
    """
    n, _height, width = images.shape
    side = width // patch_size
    x = images.reshape(n, side, patch_size, side, patch_size).astype(np.float32)
    spread = x.std(axis=(2, 4)).mean(axis=0).reshape(-1)  # (N,)
    return np.argsort(-spread, kind="stable").astype(np.int64)


def _visible_indices(
    rng: np.random.Generator, batch: int, num_patches: int, k: int, orders: list[np.ndarray]
) -> np.ndarray:
    """(batch, k) visible patch indices: 70 % random, 30 % a fixed order's prefix."""
    if rng.random() < 0.7:
        return np.argsort(rng.random((batch, num_patches)), axis=1)[:, :k]
    order = orders[int(rng.integers(len(orders)))]
    return np.broadcast_to(order[:k], (batch, k)).copy()


def _gather(patches: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
    index = torch.as_tensor(indices, dtype=torch.long)
    return torch.gather(patches, 1, index[..., None].expand(-1, -1, patches.shape[-1]))


def _patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, H, W) -> (B, N, p*p), row-major patches."""
    b, h, w = images.shape
    s = w // patch_size
    x = images.reshape(b, h // patch_size, patch_size, s, patch_size).permute(0, 1, 3, 2, 4)
    return x.reshape(b, -1, patch_size * patch_size)


def _reconstruct(
    mae: MaskedAutoencoder, patches: torch.Tensor, indices: np.ndarray
) -> torch.Tensor:
    """MAE prediction with visible patches pasted back, as (B, 1, H, W) normalised images."""
    cfg = mae.config
    visible = _gather(patches, indices)
    predicted, _ = mae(visible, torch.as_tensor(indices, dtype=torch.long))
    index = torch.as_tensor(indices, dtype=torch.long)[..., None].expand(-1, -1, cfg.patch_dim)
    predicted = predicted.scatter(1, index, visible)
    b = predicted.shape[0]
    p, s = cfg.patch_size, cfg.side
    return predicted.reshape(b, s, s, p, p).permute(0, 1, 3, 2, 4).reshape(b, 1, s * p, s * p)


def _mae_step(
    mae: MaskedAutoencoder,
    optimizer: torch.optim.Optimizer,
    patches: torch.Tensor,
    indices: np.ndarray,
) -> torch.Tensor:
    """One optimiser step of the MAE objective on (B, N, D) patches with (B, k) visible ones:
    masked-patch MSE + 0.1 x the log-variance head's Gaussian NLL. Returns the loss."""
    batch_size, num_patches = patches.shape[:2]
    predicted, log_variance = mae(
        _gather(patches, indices), torch.as_tensor(indices, dtype=torch.long)
    )
    masked = torch.ones(batch_size, num_patches, dtype=torch.bool)
    masked[np.arange(batch_size)[:, None], indices] = False
    error = (predicted - patches).pow(2).mean(dim=-1)  # (B, N)
    # Heteroscedastic head: Gaussian NLL of the (detached) error, so it learns where the
    # reconstruction is uncertain without changing the pixel loss.
    nll = 0.5 * (error.detach() * torch.exp(-log_variance) + log_variance)
    loss = error[masked].mean() + 0.1 * nll[masked].mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def train_mae(
    images: np.ndarray,
    orders: list[np.ndarray],
    *,
    steps: int,
    batch_size: int,
    seed: int,
) -> MaskedAutoencoder:
    """Train the MAE with a per-step number of visible patches k ~ U[4, 48]."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = MaeConfig(image_size=IMAGE_SIZE)
    mae = MaskedAutoencoder(config)
    assert mae.pos.abs().sum() > 0
    assert mae.decoder_pos.abs().sum() > 0
    optimizer = torch.optim.AdamW(mae.parameters(), lr=2e-3, weight_decay=0.05)
    start = time.process_time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, 2e-3, warmup=30)
        rows = rng.integers(0, len(images), batch_size)
        x = to_model_pixels(upscale(images[rows]))  # (B, H, W)
        patches = _patches(x, config.patch_size)
        k = int(rng.integers(4, 49))
        indices = _visible_indices(rng, batch_size, config.num_patches, k, orders)
        loss = _mae_step(mae, optimizer, patches, indices)
        if step % 100 == 0 or step == steps - 1:
            log.info(
                "mae step %d/%d loss %.4f (cpu %.0f s)",
                step,
                steps,
                loss.item(),
                time.process_time() - start,
            )
    return mae.eval()


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    mae: MaskedAutoencoder,
    orders: list[np.ndarray],
    *,
    steps: int,
    batch_size: int,
    seed: int,
) -> VitClassifier:
    """Train the ViT on half full images, half MAE reconstructions at k ~ U[4, 48]."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    config = VitConfig(image_size=IMAGE_SIZE)
    vit = VitClassifier(config)
    optimizer = torch.optim.AdamW(vit.parameters(), lr=2e-3, weight_decay=0.05)
    start = time.process_time()
    half = batch_size // 2
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, 2e-3, warmup=30)
        rows = rng.integers(0, len(images), batch_size)
        x = to_model_pixels(upscale(images[rows]))  # (B, H, W)
        with torch.no_grad():
            k = int(rng.integers(4, 49))
            indices = _visible_indices(rng, half, mae.config.num_patches, k, orders)
            recon = _reconstruct(mae, _patches(x[:half], mae.config.patch_size), indices)
        batch = torch.cat([recon, x[half:, None]], dim=0)
        loss = F.cross_entropy(vit(batch), torch.as_tensor(labels[rows]), label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log.info(
                "vit step %d/%d loss %.4f (cpu %.0f s)",
                step,
                steps,
                loss.item(),
                time.process_time() - start,
            )
    return vit.eval()


def train_all(
    out_dir: Path,
    *,
    mae_steps: int = 1000,
    vit_steps: int = 2000,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """Train both models, write checkpoints + meta.json into `out_dir`; return timings."""
    torch.set_num_threads(1)
    images, labels = load_fashion_mnist("train")
    train_images, train_labels = images[:-VALIDATION_SIZE], labels[:-VALIDATION_SIZE]
    server_order = patch_importance_order(upscale(train_images[:5000]), MaeConfig().patch_size)
    orders = [grid_order(MaeConfig().side), server_order]
    t0 = time.process_time()
    mae = train_mae(train_images, orders, steps=mae_steps, batch_size=batch_size, seed=seed)
    t1 = time.process_time()
    vit = train_classifier(
        train_images, train_labels, mae, orders, steps=vit_steps, batch_size=batch_size, seed=seed
    )
    t2 = time.process_time()
    save_model(mae, out_dir, "mae")
    save_model(vit, out_dir, "classifier")
    meta = {
        "kind": "edgesplit.offload_models",
        "schema_version": 1,
        "dataset": "fashion-mnist (Debian dataset-fashion-mnist), bilinear 28->64",
        "train_images": len(train_images),
        "validation_images": VALIDATION_SIZE,
        "mae_steps": mae_steps,
        "vit_steps": vit_steps,
        "batch_size": batch_size,
        "seed": seed,
        "mae_cpu_s": round(t1 - t0, 1),
        "vit_cpu_s": round(t2 - t1, 1),
        "server_patch_order": server_order.tolist(),
        "torch_threads": 1,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return {"mae_cpu_s": t1 - t0, "vit_cpu_s": t2 - t1}


def train_photo_mae(
    config: MaeConfig,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    min_visible: int = 4,
    max_visible: int = 56,
    pixel_norm: PixelNorm = "global",
) -> MaskedAutoencoder:
    """Train an RGB MAE on random crops of the training photos (offload/photos.py).

    Same objective as `train_mae` (masked-patch MSE + 0.1 x the log-variance head's NLL), with
    k ~ U[min_visible, max_visible] random visible patches per step. Held-out photos are never
    sampled. `pixel_norm` is photos.patch_norm's mode (statistics of the visible patches).
    """
    from edgesplit.offload.photos import patch_norm, patchify_rgb, sample_crops, to_photo_pixels

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mae = MaskedAutoencoder(config)
    assert mae.pos.abs().sum() > 0
    assert mae.decoder_pos.abs().sum() > 0
    optimizer = torch.optim.AdamW(mae.parameters(), lr=2e-3, weight_decay=0.05)
    start = time.process_time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, 2e-3, warmup=50)
        crops = sample_crops(rng, batch_size).pixels
        raw = patchify_rgb(crops, config.patch_size)  # (B, N, D) uint8
        k = int(rng.integers(min_visible, max_visible + 1))
        indices = np.argsort(rng.random((batch_size, config.num_patches)), axis=1)[:, :k]
        norm = patch_norm(
            np.take_along_axis(raw, indices[..., None], axis=1), pixel_norm, config.channels
        )
        patches = to_photo_pixels(raw, norm)  # (B, N, D), normalised by the visible patches
        loss = _mae_step(mae, optimizer, patches, indices)
        if step % 100 == 0 or step == steps - 1:
            log.info(
                "photo mae step %d/%d loss %.4f (cpu %.0f s)",
                step,
                steps,
                loss.item(),
                time.process_time() - start,
            )
    return mae.eval()
