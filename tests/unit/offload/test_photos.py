"""Photo crops (scikit-image's bundled photos) and the committed photo MAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesplit.offload import DEFAULT_WEIGHTS_DIR
from edgesplit.offload.models import MaeConfig, MaskedAutoencoder
from edgesplit.offload.photos import (
    CROP_SIZE,
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    fill_linear,
    fill_mean,
    fill_nearest,
    heldout_crops,
    mae_reconstruct,
    patchify_rgb,
    photos_available,
    random_indices,
    sample_crops,
    unpatchify_rgb,
)

PHOTO_WEIGHTS = DEFAULT_WEIGHTS_DIR / "photo"
needs_photos = pytest.mark.skipif(
    not photos_available(),
    reason="needs scikit-image (its wheel carries the photos in skimage/data; requirements.lock)",
)


def _psnr(ref: np.ndarray, img: np.ndarray) -> float:
    mse = float(np.mean((ref.astype(np.float64) - img.astype(np.float64)) ** 2))
    return 10.0 * np.log10(255.0**2 / mse)


def test_photo_split_is_by_whole_photo() -> None:
    assert not set(TRAIN_PHOTOS) & set(HELDOUT_PHOTOS)


@needs_photos
def test_training_and_heldout_crops_come_from_disjoint_photos() -> None:
    train = sample_crops(np.random.default_rng(0), 200)
    held = heldout_crops(60, seed=0)
    assert set(train.photos) <= set(TRAIN_PHOTOS)
    assert set(held.photos) <= set(HELDOUT_PHOTOS)
    assert len(set(train.photos)) > 5  # many training photos are actually used
    assert train.pixels.shape == (200, CROP_SIZE, CROP_SIZE, 3)
    assert train.pixels.dtype == np.uint8
    # seeded: the same evaluation crops every time
    assert np.array_equal(held.pixels, heldout_crops(60, seed=0).pixels)


def test_rgb_patches_round_trip() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    patches = patchify_rgb(images)
    assert patches.shape == (2, 64, 8 * 8 * 3)
    assert np.array_equal(patches[0, 9].reshape(8, 8, 3), images[0, 8:16, 8:16])
    assert np.array_equal(unpatchify_rgb(patches), images)


@pytest.mark.parametrize("fill", ["mae", "linear", "nearest", "mean"])
def test_kept_patches_are_pasted_back_exactly(fill: str) -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoder(MaeConfig(channels=3, depth=1, decoder_depth=1)).eval()
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    indices = random_indices(rng, 3, 64, 20)
    fills = {
        "mae": lambda c, i: mae_reconstruct(mae, c, i),
        "linear": fill_linear,
        "nearest": fill_nearest,
        "mean": fill_mean,
    }
    recon = fills[fill](crops, indices)
    assert recon.shape == crops.shape
    assert recon.dtype == np.uint8
    got = np.take_along_axis(patchify_rgb(recon), indices[..., None], axis=1)
    want = np.take_along_axis(patchify_rgb(crops), indices[..., None], axis=1)
    assert np.array_equal(got, want)
    missing = np.ones((3, 64), dtype=bool)
    np.put_along_axis(missing, indices, False, axis=1)
    assert not np.array_equal(patchify_rgb(recon)[missing], patchify_rgb(crops)[missing])


@needs_photos
@pytest.mark.skipif(
    not (PHOTO_WEIGHTS / "mae.safetensors").exists(),
    reason="no photo MAE checkpoint (run scripts/train_photo_mae.py)",
)
def test_committed_photo_mae_beats_mean_fill_on_heldout_crops() -> None:
    from edgesplit.offload.models import load_mae

    mae = load_mae(PHOTO_WEIGHTS)
    assert mae.config.channels == 3
    crops = heldout_crops(24, seed=5).pixels
    indices = random_indices(np.random.default_rng(5), len(crops), mae.config.num_patches, 32)
    mae_psnr = _psnr(crops, mae_reconstruct(mae, crops, indices))
    mean_psnr = _psnr(crops, fill_mean(crops, indices))
    # measured: 19.6 vs 16.8 dB; an untrained MAE is at or below the mean fill
    assert mae_psnr > mean_psnr + 1.5, (mae_psnr, mean_psnr)
