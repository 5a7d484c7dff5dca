"""Patch geometry and patch sampling orders for offloading.

Owns cutting a (H, W) uint8 image into row-major square patches, pasting patches back, and the
orders a client may send patches in (random, grid, server-requested). numpy only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "SamplingName",
    "grid_order",
    "num_patches",
    "paste_patches",
    "patchify",
    "sample_indices",
    "unpatchify",
]

SamplingName = Literal["random", "grid", "server"]


def num_patches(image_size: int, patch_size: int) -> int:
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of patch size {patch_size}")
    return (image_size // patch_size) ** 2


def patchify(image: np.ndarray, patch_size: int) -> np.ndarray:
    """(H, W) -> (N, p, p), patches in row-major order (index = row * W/p + col)."""
    height, width = image.shape
    rows, cols = height // patch_size, width // patch_size
    x = image.reshape(rows, patch_size, cols, patch_size).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(x.reshape(rows * cols, patch_size, patch_size))


def unpatchify(patches: np.ndarray, image_size: int) -> np.ndarray:
    """(N, p, p) -> (H, W); inverse of `patchify`."""
    patch_size = patches.shape[-1]
    side = image_size // patch_size
    x = patches.reshape(side, side, patch_size, patch_size).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(x.reshape(image_size, image_size))


def paste_patches(image: np.ndarray, indices: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """A copy of (H, W) `image` with patches[i] written at patch position indices[i]."""
    patch_size = patches.shape[-1]
    side = image.shape[1] // patch_size
    out = image.copy()
    for index, patch in zip(indices.tolist(), patches, strict=True):
        row, col = divmod(int(index), side)
        out[
            row * patch_size : (row + 1) * patch_size, col * patch_size : (col + 1) * patch_size
        ] = patch
    return out


def grid_order(side: int) -> np.ndarray:
    """All side*side patch indices, ordered so that every prefix is spread evenly.

    Greedy farthest-point order on the patch grid, starting at the centre, ties broken by
    index: the first 4 patches are near the centre and the corners' quadrants, and so on. Any
    prefix of length k is the "grid" sample of k patches.
    """
    rows, cols = np.divmod(np.arange(side * side), side)
    points = np.stack([rows, cols], axis=1).astype(np.float64)
    centre = (side - 1) / 2.0
    first = int(np.argmin(((points - centre) ** 2).sum(axis=1)))
    order = [first]
    distance = ((points - points[first]) ** 2).sum(axis=1)
    for _ in range(side * side - 1):
        distance[order[-1]] = -1.0
        nxt = int(np.argmax(distance))  # argmax takes the lowest index on ties
        order.append(nxt)
        distance = np.minimum(distance, ((points - points[nxt]) ** 2).sum(axis=1))
        distance[np.array(order)] = -1.0
    return np.array(order, dtype=np.int64)


def sample_indices(
    sampling: SamplingName,
    num_total: int,
    k: int,
    *,
    rng: np.random.Generator | None = None,
    server_order: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Choose k patch indices out of num_total (not in `exclude`), in sending order.

    random: uniform without replacement (needs `rng`); grid: prefix of `grid_order`;
    server: prefix of the order the server asked for (`server_order`).
    """
    excluded = set() if exclude is None else {int(i) for i in exclude}
    if sampling == "random":
        if rng is None:
            raise ValueError("random sampling needs an explicit numpy Generator")
        candidates = np.array([i for i in range(num_total) if i not in excluded], dtype=np.int64)
        return rng.permutation(candidates)[:k]
    if sampling == "grid":
        order = grid_order(round(num_total**0.5))
    else:
        if server_order is None:
            raise ValueError("server sampling needs the server's patch order")
        order = np.asarray(server_order, dtype=np.int64)
    return np.array([i for i in order.tolist() if i not in excluded][:k], dtype=np.int64)
