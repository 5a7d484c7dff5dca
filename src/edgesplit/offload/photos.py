"""Photo crops for MAE reconstruction demos: the photos bundled inside the scikit-image wheel.

Owns the photo data (64x64 RGB crops of `skimage/data/*.png|jpg` at several scales, read from
the installed package files with Pillow: no pooch, no downloads), the split by whole photo
(training photos vs held-out photos that training never sees), RGB patch geometry, and the
reconstructions compared in docs/offload.md: MAE with the kept patches pasted back, and the
baselines (constant mean, nearest kept patch, linear interpolation of the kept pixels).
numpy + Pillow + torch; scipy for the interpolation baseline; scikit-image only for its files.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from edgesplit.errors import ConfigError
from edgesplit.offload.models import MaskedAutoencoder

__all__ = [
    "CROP_SIZE",
    "DEFAULT_PIXEL_NORM",
    "HELDOUT_PHOTOS",
    "MIN_CROP_STD",
    "PATCH_SIZE",
    "PHOTO_MEAN",
    "PHOTO_STD",
    "SCALES",
    "TRAIN_PHOTOS",
    "PhotoCrops",
    "PixelNorm",
    "fill_linear",
    "fill_mean",
    "fill_nearest",
    "from_photo_pixels",
    "heldout_crops",
    "load_photo",
    "mae_reconstruct",
    "patch_norm",
    "patchify_rgb",
    "photo_dir",
    "photos_available",
    "random_indices",
    "sample_crops",
    "to_photo_pixels",
    "unpatchify_rgb",
]

CROP_SIZE = 64
PATCH_SIZE = 8
# Photos are downscaled by one of these factors before cropping, so a 64x64 crop holds anything
# from a texture detail (1.0) to a quarter of a 512x512 scene (0.25).
SCALES = (1.0, 0.7, 0.5, 0.35, 0.25)
# Nearly flat crops (pixel std below this, in uint8 units) are rejected: sky, black background.
MIN_CROP_STD = 8.0
# Held out as whole photos: never cropped for training; every reported figure is on them.
HELDOUT_PHOTOS = ("astronaut", "chelsea", "coffee")
TRAIN_PHOTOS = (
    "brick",
    "camera",
    "cell",
    "clock_motion",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "ihc",
    "moon",
    "motorcycle_left",
    "motorcycle_right",
    "page",
    "retina",
    "rocket",
    "text",
)
# Normalisation of [0, 1] pixels for the photo MAE (rounded statistics of the training crops).
PHOTO_MEAN = 0.45
PHOTO_STD = 0.25
# How pixels are normalised for the MAE (see `patch_norm`); the committed checkpoint's choice.
# "visible" was tried with the same budget and was worse on held-out crops at 50 % kept
# (18.9 vs 19.5 dB PSNR, 64 crops).
PixelNorm = Literal["global", "visible"]
DEFAULT_PIXEL_NORM: PixelNorm = "global"
MIN_VISIBLE_STD = 0.05


def photo_dir() -> Path | None:
    """scikit-image's bundled data directory, or None when scikit-image is not installed."""
    try:
        import skimage
    except ImportError:
        return None
    directory = Path(skimage.__file__).resolve().parent / "data"
    return directory if directory.is_dir() else None


def _photo_path(name: str) -> Path | None:
    directory = photo_dir()
    if directory is None:
        return None
    for suffix in (".png", ".jpg"):
        if (directory / f"{name}{suffix}").exists():
            return directory / f"{name}{suffix}"
    return None


def photos_available() -> bool:
    """True when every training and held-out photo is in the installed scikit-image."""
    return all(_photo_path(name) is not None for name in TRAIN_PHOTOS + HELDOUT_PHOTOS)


@functools.lru_cache(maxsize=32)
def load_photo(name: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels of one bundled photo (grayscale photos are replicated).

    Raises:
        ConfigError: scikit-image (or that photo file) is not installed.
    """
    path = _photo_path(name)
    if path is None:
        raise ConfigError(
            f"photo {name!r} not found in scikit-image's bundled data "
            f"({photo_dir() or 'scikit-image not installed'}); install scikit-image "
            "(requirements.lock) — its wheel carries the photos, nothing is downloaded"
        )
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    pixels.setflags(write=False)
    return pixels


@functools.lru_cache(maxsize=256)
def _scaled(name: str, scale: float) -> np.ndarray:
    photo = load_photo(name)
    if scale == 1.0:
        return photo
    height, width = photo.shape[:2]
    size = (max(CROP_SIZE, round(width * scale)), max(CROP_SIZE, round(height * scale)))
    with Image.fromarray(photo) as image:
        out = np.asarray(image.resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, slots=True)
class PhotoCrops:
    """A batch of crops and where each came from."""

    pixels: np.ndarray  # uint8 (n, CROP_SIZE, CROP_SIZE, 3)
    photos: tuple[str, ...]  # source photo of each crop
    scales: tuple[float, ...]
    corners: tuple[tuple[int, int], ...]  # (row, col) of the crop in the scaled photo


def _crops(
    rng: np.random.Generator, num_crops: int, names: tuple[str, ...], *, flip: bool
) -> PhotoCrops:
    pixels: list[np.ndarray] = []
    photos: list[str] = []
    scales: list[float] = []
    corners: list[tuple[int, int]] = []
    while len(pixels) < num_crops:
        name = names[int(rng.integers(len(names)))]
        scale = SCALES[int(rng.integers(len(SCALES)))]
        image = _scaled(name, scale)
        row = int(rng.integers(image.shape[0] - CROP_SIZE + 1))
        col = int(rng.integers(image.shape[1] - CROP_SIZE + 1))
        crop = image[row : row + CROP_SIZE, col : col + CROP_SIZE]
        if crop.std() < MIN_CROP_STD:
            continue
        if flip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        pixels.append(crop)
        photos.append(name)
        scales.append(scale)
        corners.append((row, col))
    return PhotoCrops(
        pixels=np.ascontiguousarray(np.stack(pixels)),
        photos=tuple(photos),
        scales=tuple(scales),
        corners=tuple(corners),
    )


def sample_crops(rng: np.random.Generator, num_crops: int) -> PhotoCrops:
    """Random training crops (random photo, scale, position, horizontal flip) of TRAIN_PHOTOS."""
    return _crops(rng, num_crops, TRAIN_PHOTOS, flip=True)


def heldout_crops(num_crops: int, seed: int = 0) -> PhotoCrops:
    """Seeded evaluation crops of HELDOUT_PHOTOS only (the same crops for the same seed)."""
    return _crops(np.random.default_rng(seed), num_crops, HELDOUT_PHOTOS, flip=False)


def patchify_rgb(images: np.ndarray, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """(B, H, W, C) -> (B, N, p*p*C), row-major patches, each flattened as (p, p, C)."""
    batch, height, width, channels = images.shape
    rows, cols = height // patch_size, width // patch_size
    x = images.reshape(batch, rows, patch_size, cols, patch_size, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(x.reshape(batch, rows * cols, patch_size * patch_size * channels))


def unpatchify_rgb(patches: np.ndarray, image_size: int = CROP_SIZE) -> np.ndarray:
    """(B, N, p*p*C) -> (B, H, W, C); inverse of `patchify_rgb`."""
    batch, num, dim = patches.shape
    side = round(num**0.5)
    patch_size = image_size // side
    channels = dim // (patch_size * patch_size)
    x = patches.reshape(batch, side, side, patch_size, patch_size, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(x.reshape(batch, image_size, image_size, channels))


def patch_norm(
    kept: np.ndarray, pixel_norm: PixelNorm, channels: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift (B, 1, D), scale (B, 1, 1)) in [0, 1] units for patches (B, k, D) of one batch.

    "global": the fixed PHOTO_MEAN / PHOTO_STD. "visible": each crop's own per-channel mean and
    overall std of its kept pixels (the server knows them), so the MAE works on
    brightness- and contrast-normalised crops.
    """
    batch, _k, dim = kept.shape
    if pixel_norm == "global":
        return torch.full((batch, 1, dim), PHOTO_MEAN), torch.full((batch, 1, 1), PHOTO_STD)
    x = kept.reshape(batch, -1, channels).astype(np.float32) / 255.0
    mean = np.tile(x.mean(axis=1), (1, dim // channels))  # (B, D): channel-last patch layout
    scale = np.maximum(x.std(axis=(1, 2)), MIN_VISIBLE_STD)
    return torch.from_numpy(mean[:, None, :]), torch.from_numpy(scale[:, None, None])


def to_photo_pixels(patches: np.ndarray, norm: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """uint8 patches (B, n, D) -> normalised float tensor for the photo MAE."""
    shift, scale = norm
    return (torch.as_tensor(np.asarray(patches, dtype=np.float32)) / 255.0 - shift) / scale


def from_photo_pixels(x: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
    """Normalised float (B, n, D) -> uint8 pixels (rounded, clipped)."""
    shift, scale = norm
    y = ((x * scale + shift) * 255.0).round().clamp(0.0, 255.0)
    return y.to(torch.uint8).numpy()


def random_indices(
    rng: np.random.Generator, batch: int, num_patches: int, num_kept: int
) -> np.ndarray:
    """(batch, num_kept) kept patch indices, uniform without replacement per row, sorted."""
    return np.sort(np.argsort(rng.random((batch, num_patches)), axis=1)[:, :num_kept], axis=1)


def _paste(patches: np.ndarray, kept: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Copy of patches (B, N, D) with kept (B, k, D) written at indices (B, k)."""
    out = patches.copy()
    np.put_along_axis(out, indices[..., None], kept, axis=1)
    return out


def _kept(crops: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    patches = patchify_rgb(crops)
    return patches, np.take_along_axis(patches, indices[..., None], axis=1)


@torch.no_grad()
def mae_reconstruct(
    mae: MaskedAutoencoder,
    crops: np.ndarray,
    indices: np.ndarray,
    batch_size: int = 64,
    pixel_norm: PixelNorm = DEFAULT_PIXEL_NORM,
) -> np.ndarray:
    """MAE fill-in of uint8 crops (B, H, W, C) from the patches at indices (B, k).

    Only the kept patches reach the model; they are pasted back exactly (uint8) over its
    prediction, so only the missing patches are the model's.
    """
    if crops.shape[-1] != mae.config.channels:
        raise ValueError(f"crops have {crops.shape[-1]} channels, MAE {mae.config.channels}")
    patches, kept = _kept(crops, indices)
    predicted: list[np.ndarray] = []
    for start in range(0, len(crops), batch_size):
        sl = slice(start, start + batch_size)
        norm = patch_norm(kept[sl], pixel_norm, mae.config.channels)
        visible = to_photo_pixels(kept[sl], norm)
        out, _ = mae(visible, torch.as_tensor(indices[sl], dtype=torch.long))
        predicted.append(from_photo_pixels(out, norm))
    filled = np.concatenate(predicted).reshape(patches.shape)
    return unpatchify_rgb(_paste(filled, kept, indices), crops.shape[1])


def fill_mean(crops: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Missing patches = the mean colour of the kept pixels of the same crop."""
    patches, kept = _kept(crops, indices)
    channels = crops.shape[-1]
    mean = kept.reshape(len(crops), -1, channels).mean(axis=1)  # (B, C)
    filled = np.broadcast_to(
        np.rint(mean).astype(np.uint8)[:, None, None, :],
        (len(crops), patches.shape[1], PATCH_SIZE * PATCH_SIZE, channels),
    ).reshape(patches.shape)
    return unpatchify_rgb(_paste(filled, kept, indices), crops.shape[1])


def _patch_centres(num_patches: int) -> np.ndarray:
    side = round(num_patches**0.5)
    rows, cols = np.divmod(np.arange(num_patches), side)
    return np.stack([rows, cols], axis=1).astype(np.float64)


def fill_nearest(crops: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Each missing patch copies the nearest kept patch (patch-grid distance, lowest index)."""
    patches, kept = _kept(crops, indices)
    centres = _patch_centres(patches.shape[1])
    out = patches.copy()
    for b in range(len(crops)):
        dist = ((centres[:, None, :] - centres[indices[b]][None, :, :]) ** 2).sum(-1)  # (N, k)
        out[b] = kept[b][np.argmin(dist, axis=1)]
    return unpatchify_rgb(_paste(out, kept, indices), crops.shape[1])


def fill_linear(crops: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Missing pixels linearly interpolated (Delaunay) from all kept pixels; nearest outside
    the kept pixels' convex hull. The scattered-data form of bilinear interpolation."""
    from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator
    from scipy.spatial import QhullError

    size = crops.shape[1]
    side = size // PATCH_SIZE
    rows, cols = np.mgrid[0:size, 0:size]
    grid = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.float64)
    patch_of_pixel = (rows // PATCH_SIZE * side + cols // PATCH_SIZE).ravel()
    out = np.empty_like(crops)
    for b in range(len(crops)):
        known = np.isin(patch_of_pixel, indices[b])
        values = crops[b].reshape(-1, crops.shape[-1]).astype(np.float64)
        points = grid[known]
        filled = values.copy()
        if known.all():
            out[b] = crops[b]
            continue
        try:
            linear = LinearNDInterpolator(points, values[known])(grid[~known])
        except QhullError:  # degenerate kept pixels: no triangulation, nearest below
            linear = np.full((int((~known).sum()), crops.shape[-1]), np.nan)
        holes = np.isnan(linear).any(axis=1)
        if holes.any():
            linear[holes] = NearestNDInterpolator(points, values[known])(grid[~known][holes])
        filled[~known] = linear
        out[b] = np.rint(filled).clip(0, 255).astype(np.uint8).reshape(crops.shape[1:])
    return out
