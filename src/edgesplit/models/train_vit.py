"""Tiny ViT classifiers trained here on real offline data (sklearn digits, Fashion-MNIST).

Owns the datasets' loading (`load_image_dataset`), a short single-thread training loop, and a
checkpoint cache under `$EDGESPLIT_HOME/models/` (config.json + model.safetensors), so the
robustness study trains each model once. Imports torch, transformers, sklearn; never ray.
"""

from __future__ import annotations

import gzip
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import ViTConfig, ViTForImageClassification

from edgesplit.errors import ConfigError

__all__ = [
    "FASHION_MNIST_DIR",
    "ImageDataset",
    "cache_dir",
    "fashion_mnist_available",
    "load_image_dataset",
    "train_vit",
    "vit_config",
]

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
ImageDatasetName = Literal["digits", "fashion"]


@dataclass(frozen=True)
class ImageDataset:
    """Images (N, 1, H, W) float32 normalised, labels (N,) int64, train/test split fixed."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def cache_dir() -> Path:
    """`$EDGESPLIT_HOME/models` (default ~/.cache/edgesplit/models); read at call time."""
    home = os.environ.get("EDGESPLIT_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "edgesplit"
    return base / "models"


def fashion_mnist_available() -> bool:
    return (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_image_dataset(name: ImageDatasetName) -> ImageDataset:
    """Load sklearn digits (8×8, 20 % test) or Fashion-MNIST (28×28, official test split)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
        y = torch.tensor(bunch.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = (x - 0.5) / 0.5, y
        x, y = x[order], y[order]
        cut = int(0.8 * len(y))
        return ImageDataset("digits", x[:cut], y[:cut], x[cut:], y[cut:])
    if not fashion_mnist_available():
        raise ConfigError(
            f"Fashion-MNIST not found under {FASHION_MNIST_DIR}; install the Debian package "
            "dataset-fashion-mnist (make data)"
        )
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        xs = (torch.tensor(images, dtype=torch.float32)[:, None] / 255.0 - 0.286) / 0.353
        parts[split] = (xs, torch.tensor(labels.astype(np.int64)))
    return ImageDataset("fashion", *parts["train"], *parts["test"])


def vit_config(name: ImageDatasetName) -> ViTConfig:
    """Tiny ViT: 4 blocks, 4 heads, hidden 64, FFN 128; 16 patches + CLS for both datasets."""
    image_size, patch_size = (8, 2) if name == "digits" else (28, 7)
    return ViTConfig(  # type: ignore[call-arg]  # num_labels goes through **kwargs
        image_size=image_size,
        patch_size=patch_size,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def train_vit(
    name: ImageDatasetName,
    *,
    steps: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    use_cache: bool = True,
) -> tuple[ViTForImageClassification, dict[str, float]]:
    """Train (or load from the cache) a tiny ViT on `name`; returns (model in eval mode, info).

    Single torch thread, AdamW with cosine decay; digits ~600 steps (~15 CPU-s), Fashion-MNIST
    ~2500 steps (a few CPU-minutes). `info` has test accuracy and training seconds.
    """
    steps = steps or (600 if name == "digits" else 2500)
    path = cache_dir() / f"vit-{name}-s{seed}-n{steps}"
    data = load_image_dataset(name)
    if use_cache and (path / "model.safetensors").is_file():
        model = ViTForImageClassification.from_pretrained(path)
        model.eval()
        return model, {"test_accuracy": _accuracy(model, data), "train_s": 0.0, "cached": 1.0}
    torch.manual_seed(seed)
    model = ViTForImageClassification(vit_config(name))
    model.config._attn_implementation = "eager"  # type: ignore[attr-defined]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    start = time.process_time()
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(data.train_y), (batch_size,), generator=gen)
        logits = model(pixel_values=data.train_x[idx]).logits
        loss = torch.nn.functional.cross_entropy(logits, data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0:
            log.info("vit-%s step %d loss %.3f", name, step, float(loss.detach()))
    train_s = time.process_time() - start
    model.eval()
    if use_cache:
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
    return model, {"test_accuracy": _accuracy(model, data), "train_s": train_s, "cached": 0.0}


@torch.no_grad()
def _accuracy(model: ViTForImageClassification, data: ImageDataset) -> float:
    correct = 0
    for i in range(0, len(data.test_y), 1000):
        logits = model(pixel_values=data.test_x[i : i + 1000]).logits
        correct += int((logits.argmax(-1) == data.test_y[i : i + 1000]).sum())
    return correct / len(data.test_y)
