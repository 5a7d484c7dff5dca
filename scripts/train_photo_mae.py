"""Train the photo MAE (RGB, 64x64 crops, 8x8 patches) on scikit-image's bundled photos.

Writes mae.safetensors (fp16) + mae.json (config) + meta.json (training figures, photo split)
into src/edgesplit/offload/weights/photo/ (or --out). Training crops come only from
photos.TRAIN_PHOTOS; photos.HELDOUT_PHOTOS (astronaut, chelsea, coffee) are never seen.
One torch thread, about 4 CPU-minutes with the defaults. Needs scikit-image (its wheel carries
the photos; nothing is downloaded).

Usage: .venv/bin/python scripts/train_photo_mae.py [--out DIR] [--steps N] [--batch-size N]
       [--seed N]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from edgesplit.offload.models import MaeConfig, save_model
from edgesplit.offload.photos import (
    CROP_SIZE,
    DEFAULT_PIXEL_NORM,
    HELDOUT_PHOTOS,
    MIN_CROP_STD,
    PATCH_SIZE,
    PHOTO_MEAN,
    PHOTO_STD,
    SCALES,
    TRAIN_PHOTOS,
    fill_linear,
    heldout_crops,
    mae_reconstruct,
    random_indices,
)
from edgesplit.offload.training import train_photo_mae

DEFAULT_OUT = (
    Path(__file__).resolve().parent.parent / "src" / "edgesplit" / "offload" / "weights" / "photo"
)
PHOTO_MAE_CONFIG = MaeConfig(
    image_size=CROP_SIZE,
    patch_size=PATCH_SIZE,
    dim=96,
    depth=3,
    num_heads=3,
    decoder_dim=64,
    decoder_depth=2,
    decoder_num_heads=2,
    channels=3,
)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float(10.0 * np.log10(255.0**2 / max(mse, 1e-10)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pixel-norm", choices=["global", "visible"], default=DEFAULT_PIXEL_NORM)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    wall, cpu = time.perf_counter(), time.process_time()
    mae = train_photo_mae(
        PHOTO_MAE_CONFIG,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        pixel_norm=args.pixel_norm,
    )
    cpu_s, wall_s = time.process_time() - cpu, time.perf_counter() - wall
    save_model(mae, args.out, "mae")
    # A quick held-out check recorded beside the weights (the benchmark does the full study).
    crops = heldout_crops(64, seed=1).pixels
    indices = random_indices(np.random.default_rng(1), len(crops), mae.config.num_patches, 32)
    check = {
        "kept_fraction": 0.5,
        "num_crops": len(crops),
        "psnr_db_mae": round(
            _psnr(mae_reconstruct(mae, crops, indices, pixel_norm=args.pixel_norm), crops), 2
        ),
        "psnr_db_linear": round(_psnr(fill_linear(crops, indices), crops), 2),
    }
    meta = {
        "kind": "edgesplit.offload_photo_mae",
        "schema_version": 1,
        "data": "RGB crops of scikit-image's bundled photos (skimage/data, read from the wheel)",
        "train_photos": list(TRAIN_PHOTOS),
        "heldout_photos": list(HELDOUT_PHOTOS),
        "crop_size": CROP_SIZE,
        "scales": list(SCALES),
        "min_crop_std": MIN_CROP_STD,
        "pixel_norm": args.pixel_norm,
        "pixel_mean": PHOTO_MEAN,
        "pixel_std": PHOTO_STD,
        "visible_patches": "k ~ U[4, 56] of 64, uniformly random per crop",
        "config": asdict(mae.config),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "train_cpu_s": round(cpu_s, 1),
        "train_wall_s": round(wall_s, 1),
        "torch_threads": 1,
        "heldout_check": check,
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}: {cpu_s:.0f} CPU-s, held-out check {check}")


if __name__ == "__main__":
    main()
