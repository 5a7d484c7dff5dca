"""Patch geometry, sampling orders and codecs."""

from __future__ import annotations

import numpy as np
import pytest

from edgesplit.offload.codec import decode_patches, encode_patches, mosaic_shape
from edgesplit.offload.patches import (
    grid_order,
    paste_patches,
    patchify,
    sample_indices,
    unpatchify,
)


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (8, 8)).astype(np.float64)
    # a smooth-ish 64x64 image (codecs behave as on real photos, not on white noise)
    return np.kron(base, np.ones((8, 8))).astype(np.uint8)


def test_patchify_roundtrip_and_row_major(image: np.ndarray) -> None:
    patches = patchify(image, 8)
    assert patches.shape == (64, 8, 8)
    assert (patches[9] == image[8:16, 8:16]).all()  # index 9 = row 1, col 1
    assert (unpatchify(patches, 64) == image).all()


def test_paste_writes_only_given_patches(image: np.ndarray) -> None:
    blank = np.zeros_like(image)
    out = paste_patches(blank, np.array([0, 63]), patchify(image, 8)[[0, 63]])
    assert (out[:8, :8] == image[:8, :8]).all()
    assert (out[56:, 56:] == image[56:, 56:]).all()
    assert out[8:56].sum() == 0


def test_grid_order_is_a_spread_permutation() -> None:
    order = grid_order(8)
    assert sorted(order.tolist()) == list(range(64))
    rows, cols = np.divmod(order[:4], 8)
    # the first four patches fall in four different quadrants
    assert len({(r // 4, c // 4) for r, c in zip(rows, cols, strict=True)}) == 4


def test_sample_indices_modes() -> None:
    rng = np.random.default_rng(1)
    random = sample_indices("random", 64, 10, rng=rng, exclude=np.arange(32))
    assert len(set(random.tolist())) == 10
    assert (random >= 32).all()
    assert sample_indices("grid", 64, 5).tolist() == grid_order(8)[:5].tolist()
    server = sample_indices("server", 64, 3, server_order=np.arange(63, -1, -1), exclude=[63])
    assert server.tolist() == [62, 61, 60]
    with pytest.raises(ValueError, match="Generator"):
        sample_indices("random", 64, 3)


@pytest.mark.parametrize("codec", ["raw", "zlib", "png"])
def test_lossless_codecs_roundtrip(image: np.ndarray, codec: str) -> None:
    patches = patchify(image, 8)[[1, 5, 7, 20, 33]]
    payload = encode_patches(patches, codec)  # type: ignore[arg-type]
    assert (decode_patches(payload, codec, 5, 8) == patches).all()  # type: ignore[arg-type]


@pytest.mark.parametrize("codec", ["jpeg", "jpeg_shared", "webp"])
def test_lossy_codecs_are_close_and_quality_matters(image: np.ndarray, codec: str) -> None:
    patches = patchify(image, 8)[:12]
    low = encode_patches(patches, codec, 10)  # type: ignore[arg-type]
    high = encode_patches(patches, codec, 95)  # type: ignore[arg-type]
    assert len(low) < len(high)
    decoded = decode_patches(high, codec, 12, 8, 95).astype(int)  # type: ignore[arg-type]
    assert np.abs(decoded - patches.astype(int)).mean() < 6


def test_full_mosaic_is_the_image(image: np.ndarray) -> None:
    assert mosaic_shape(64) == (8, 8)
    assert mosaic_shape(5) == (2, 3)
    payload = encode_patches(patchify(image, 8), "png")
    assert (unpatchify(decode_patches(payload, "png", 64, 8), 64) == image).all()


def test_decode_rejects_bad_payloads(image: np.ndarray) -> None:
    patches = patchify(image, 8)[:4]
    with pytest.raises(ValueError, match="expected 256"):
        decode_patches(b"\x00" * 10, "raw", 4, 8)
    with pytest.raises(ValueError, match="zlib"):
        decode_patches(b"not zlib", "zlib", 4, 8)
    with pytest.raises(ValueError, match="not a decodable image"):
        decode_patches(b"garbage", "jpeg", 4, 8)
    with pytest.raises(ValueError, match="mosaic is"):
        decode_patches(encode_patches(patches, "png"), "png", 9, 8)


def test_shared_table_jpeg_is_smaller_and_decodes_like_jpeg(image: np.ndarray) -> None:
    patches = patchify(image, 8)[:6]
    shared = encode_patches(patches, "jpeg_shared", 50)
    assert len(shared) + 100 < len(encode_patches(patches, "jpeg", 50))
    assert not shared.startswith(b"\xff\xd8")  # no SOI, no tables
    decoded = decode_patches(shared, "jpeg_shared", 6, 8, 50).astype(int)
    assert np.abs(decoded - patches.astype(int)).mean() < 12
    with pytest.raises(ValueError, match="not a decodable image"):
        decode_patches(b"\x00" * 20, "jpeg_shared", 6, 8, 50)
