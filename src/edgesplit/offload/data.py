"""Offline image data for offloading: Fashion-MNIST (Debian `dataset-fashion-mnist`) upscaled.

Owns reading the IDX files and the upscaling that turns a 28x28 digit-sized image into the
64x64 "camera frame" the weak device captures. numpy + torch only; no downloads.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from edgesplit.errors import ConfigError

__all__ = [
    "CLASS_NAMES",
    "FASHION_MNIST_DIRS",
    "IMAGE_SIZE",
    "fashion_mnist_available",
    "load_fashion_mnist",
    "upscale",
]

IMAGE_SIZE = 64
FASHION_MNIST_DIRS = (
    Path("/usr/share/datasets/fashion-mnist"),
    Path("/usr/share/fashion-mnist"),
)
CLASS_NAMES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)


def _data_dir() -> Path | None:
    for directory in FASHION_MNIST_DIRS:
        if (directory / "t10k-images-idx3-ubyte.gz").exists():
            return directory
    return None


def fashion_mnist_available() -> bool:
    """True when the Debian package's IDX files are installed."""
    return _data_dir() is not None


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    num_dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * num_dims).reshape(shape)


def load_fashion_mnist(split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (n, 28, 28), labels int64 (n,)) of one split.

    Raises:
        ConfigError: the Debian package is not installed.
    """
    directory = _data_dir()
    if directory is None:
        raise ConfigError(
            "Fashion-MNIST not found in "
            + ", ".join(str(d) for d in FASHION_MNIST_DIRS)
            + "; run `bash scripts/install_data.sh` (installs Debian dataset-fashion-mnist)"
        )
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(directory / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def upscale(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Bilinear upscale of uint8 (n, h, w) images to uint8 (n, size, size)."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)).unsqueeze(1)  # (n, 1, h, w)
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return y.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()
