"""Photo reconstruction (issue 5): MAE vs interpolation vs JPEG on held-out scikit-image photos.

On 64x64 RGB crops of photos the photo MAE never saw (astronaut, chelsea, coffee), keep 10 / 25 /
50 / 75 % of the 64 patches (uniformly random, or the evenly spread "grid" order of
offload/patches.py) and fill in the rest with: the MAE (kept patches pasted back exactly),
linear (Delaunay) interpolation of the kept pixels, the nearest kept patch, or the crop's mean
colour. Then at matched bytes: the kept patches sent as a JPEG mosaic (quality 75) and filled in
by the MAE or by interpolation, vs the whole crop as one JPEG at the highest quality that fits
the same byte count. PSNR / SSIM from skimage.metrics. Writes
benchmarks/results/offload_photos.json, docs/offload_photo_reconstructions.png and
docs/offload_photo_psnr.png.

    .venv/bin/python benchmarks/offload_photos.py            # ~3 min, one thread
    .venv/bin/python benchmarks/offload_photos.py --replot   # plots from the JSON
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from common import DOCS, RESULTS, ROOT, write_result
from edgesplit.offload import DEFAULT_WEIGHTS_DIR
from edgesplit.offload.codec import mosaic_shape
from edgesplit.offload.models import load_mae
from edgesplit.offload.patches import grid_order
from edgesplit.offload.photos import (
    CROP_SIZE,
    HELDOUT_PHOTOS,
    PATCH_SIZE,
    TRAIN_PHOTOS,
    fill_linear,
    fill_mean,
    fill_nearest,
    heldout_crops,
    mae_reconstruct,
    patchify_rgb,
    random_indices,
    unpatchify_rgb,
)

NAME = "offload_photos"
FRACTIONS = (0.10, 0.25, 0.50, 0.75)
MOSAIC_QUALITY = 75
FULL_JPEG_QUALITIES = (5, 10, 20, 30, 50, 70, 90)
WEIGHTS = DEFAULT_WEIGHTS_DIR / "photo"
Fill = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _psnr(ref: np.ndarray, img: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(ref, img, data_range=255))  # type: ignore[no-untyped-call]


def _ssim(ref: np.ndarray, img: np.ndarray) -> float:
    return float(structural_similarity(ref, img, data_range=255, channel_axis=-1))  # type: ignore[no-untyped-call]


def _scores(crops: np.ndarray, recon: np.ndarray, indices: np.ndarray) -> dict[str, Any]:
    """Mean over crops of whole-crop PSNR / SSIM and PSNR over the missing pixels only."""
    missing_psnr = []
    for crop, rec, idx in zip(crops, recon, indices, strict=True):
        mask = np.ones(crop.shape[0] // PATCH_SIZE * (crop.shape[1] // PATCH_SIZE), dtype=bool)
        mask[idx] = False
        if mask.any():
            a = patchify_rgb(crop[None])[0][mask].astype(np.float64)
            b = patchify_rgb(rec[None])[0][mask].astype(np.float64)
            mse = max(float(np.mean((a - b) ** 2)), 1e-10)
            missing_psnr.append(10 * math.log10(255.0**2 / mse))
    return {
        "psnr_db": round(
            float(np.mean([_psnr(c, r) for c, r in zip(crops, recon, strict=True)])), 3
        ),
        "ssim": round(float(np.mean([_ssim(c, r) for c, r in zip(crops, recon, strict=True)])), 4),
        "psnr_missing_db": round(float(np.mean(missing_psnr)), 3) if missing_psnr else None,
        "psnr_db_per_crop": [round(_psnr(c, r), 2) for c, r in zip(crops, recon, strict=True)],
    }


def _indices(sampling: str, num_crops: int, num_kept: int, seed: int) -> np.ndarray:
    if sampling == "random":
        return random_indices(np.random.default_rng(seed), num_crops, 64, num_kept)
    order = np.sort(grid_order(CROP_SIZE // PATCH_SIZE)[:num_kept])
    return np.broadcast_to(order, (num_crops, num_kept)).copy()


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _unjpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _mosaic_roundtrip(crop: np.ndarray, idx: np.ndarray, quality: int) -> tuple[np.ndarray, int]:
    """Kept patches of one crop as an RGB JPEG mosaic -> (crop with decoded patches, bytes)."""
    p = PATCH_SIZE
    patches = patchify_rgb(crop[None])[0][idx].reshape(-1, p, p, 3)
    k = len(idx)
    rows, cols = mosaic_shape(k)
    tiles = np.concatenate([patches, np.repeat(patches[-1:], rows * cols - k, axis=0)])
    mosaic = tiles.reshape(rows, cols, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(rows * p, -1, 3)
    data = _jpeg(np.ascontiguousarray(mosaic), quality)
    decoded = _unjpeg(data).reshape(rows, p, cols, p, 3).transpose(0, 2, 1, 3, 4)
    decoded = decoded.reshape(rows * cols, p * p * 3)[:k]
    out = patchify_rgb(crop[None])[0].copy()
    out[idx] = decoded
    return unpatchify_rgb(out[None], crop.shape[0])[0], len(data)


def _jpeg_within(crop: np.ndarray, budget: int) -> tuple[np.ndarray, int, int, bool]:
    """Whole crop as JPEG at the highest quality whose size <= budget (q=1 if none fits)."""
    lo, hi, best = 1, 95, None
    while lo <= hi:
        q = (lo + hi) // 2
        data = _jpeg(crop, q)
        if len(data) <= budget:
            best, lo = (q, data), q + 1
        else:
            hi = q - 1
    fits = best is not None
    q, data = best if best is not None else (1, _jpeg(crop, 1))
    return _unjpeg(data), len(data), q, fits


def _timed(fill: Fill, crops: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.process_time()
    out = fill(crops, idx)
    return out, (time.process_time() - start) / len(crops) * 1000.0


def run(num_crops: int, seed: int, weights: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    mae = load_mae(weights)
    meta = json.loads((weights / "meta.json").read_text())
    crops_info = heldout_crops(num_crops, seed=seed)
    crops = crops_info.pixels
    fills: dict[str, Fill] = {
        "mae": lambda c, i: mae_reconstruct(mae, c, i),
        "linear": fill_linear,
        "nearest": fill_nearest,
        "mean": fill_mean,
    }
    fill_in: list[dict[str, Any]] = []
    for sampling in ("random", "grid"):
        for fraction in FRACTIONS:
            k = round(fraction * 64)
            idx = _indices(sampling, len(crops), k, seed + 1000 + k)
            row: dict[str, Any] = {"sampling": sampling, "kept_fraction": fraction, "k": k}
            for name, fill in fills.items():
                recon, ms = _timed(fill, crops, idx)
                row[name] = {**_scores(crops, recon, idx), "cpu_ms_per_crop": round(ms, 2)}
            fill_in.append(row)
            print(
                f"{sampling:6s} {fraction:.2f}: "
                + " ".join(f"{n} {row[n]['psnr_db']:.2f}/{row[n]['ssim']:.3f}" for n in fills)
            )
    # Matched bytes: kept patches as a JPEG mosaic vs the whole crop as a JPEG of <= the bytes.
    matched: list[dict[str, Any]] = []
    for fraction in FRACTIONS:
        k = round(fraction * 64)
        idx = _indices("random", len(crops), k, seed + 1000 + k)
        decoded, sizes = zip(
            *(_mosaic_roundtrip(c, i, MOSAIC_QUALITY) for c, i in zip(crops, idx, strict=True)),
            strict=True,
        )
        lossy = np.stack(decoded)
        full = [_jpeg_within(c, b) for c, b in zip(crops, sizes, strict=True)]
        row = {
            "kept_fraction": fraction,
            "k": k,
            "mosaic_quality": MOSAIC_QUALITY,
            "bytes_sampled": round(float(np.mean(sizes)), 1),
            "mae": _scores(crops, mae_reconstruct(mae, lossy, idx), idx),
            "linear": _scores(crops, fill_linear(lossy, idx), idx),
            "full_jpeg": {
                **_scores(crops, np.stack([f[0] for f in full]), idx),
                "bytes": round(float(np.mean([f[1] for f in full])), 1),
                "mean_quality": round(float(np.mean([f[2] for f in full])), 1),
                "fits_budget_share": round(float(np.mean([f[3] for f in full])), 3),
            },
        }
        matched.append(row)
        print(
            f"matched {fraction:.2f}: {row['bytes_sampled']:.0f} B mae {row['mae']['psnr_db']:.2f}"
            f" linear {row['linear']['psnr_db']:.2f} jpeg {row['full_jpeg']['psnr_db']:.2f}"
            f" ({row['full_jpeg']['bytes']:.0f} B, fits {row['full_jpeg']['fits_budget_share']})"
        )
    full_curve = []
    for q in FULL_JPEG_QUALITIES:
        data = [_jpeg(c, q) for c in crops]
        recon = np.stack([_unjpeg(d) for d in data])
        full_curve.append(
            {
                "quality": q,
                "bytes": round(float(np.mean([len(d) for d in data])), 1),
                "psnr_db": round(
                    float(np.mean([_psnr(c, r) for c, r in zip(crops, recon, strict=True)])), 3
                ),
                "ssim": round(
                    float(np.mean([_ssim(c, r) for c, r in zip(crops, recon, strict=True)])), 4
                ),
            }
        )
    # Per held-out photo at 50 % random: where the MAE wins and where it does not.
    half = next(r for r in fill_in if r["sampling"] == "random" and r["kept_fraction"] == 0.5)
    per_photo = {}
    for photo in HELDOUT_PHOTOS:
        rows = [i for i, p in enumerate(crops_info.photos) if p == photo]
        per_photo[photo] = {
            "num_crops": len(rows),
            "psnr_db_mae": round(
                float(np.mean([half["mae"]["psnr_db_per_crop"][i] for i in rows])), 2
            ),
            "psnr_db_linear": round(
                float(np.mean([half["linear"]["psnr_db_per_crop"][i] for i in rows])), 2
            ),
            "mae_beats_linear_share": round(
                float(
                    np.mean(
                        [
                            half["mae"]["psnr_db_per_crop"][i]
                            > half["linear"]["psnr_db_per_crop"][i]
                            for i in rows
                        ]
                    )
                ),
                3,
            ),
        }
    for row in [*fill_in, *matched]:  # per-crop lists only feed per_photo; keep the JSON small
        for value in row.values():
            if isinstance(value, dict):
                value.pop("psnr_db_per_crop", None)
    return {
        "fill_in": fill_in,
        "matched_bytes": matched,
        "full_jpeg_curve": full_curve,
        "per_photo_50_random": per_photo,
        "crops": {
            "photos": list(crops_info.photos),
            "scales": list(crops_info.scales),
            "corners": [list(c) for c in crops_info.corners],
        },
        "model": {
            "weights": str(weights.resolve().relative_to(ROOT))
            if weights.resolve().is_relative_to(ROOT)
            else str(weights),
            "meta": meta,
        },
        "method": {
            "heldout_photos": list(HELDOUT_PHOTOS),
            "train_photos": list(TRAIN_PHOTOS),
            "num_crops": len(crops),
            "seed": seed,
            "crop": f"{CROP_SIZE}x{CROP_SIZE} RGB, {PATCH_SIZE}x{PATCH_SIZE} patches (N = 64), "
            "photo downscaled by a random factor in photos.SCALES, crops with pixel std < "
            "photos.MIN_CROP_STD rejected",
            "fractions": list(FRACTIONS),
            "sampling": "random: uniform per crop (seeded); grid: prefix of patches.grid_order",
            "metrics": "skimage.metrics peak_signal_noise_ratio / structural_similarity "
            "(data_range 255, channel_axis -1) per crop, averaged; psnr_missing_db over the "
            "missing patches only",
            "fills": "mae: photo MAE, kept patches pasted back exactly; linear: Delaunay-linear "
            "interpolation of all kept pixels (nearest outside their hull); nearest: copy of the "
            "nearest kept patch; mean: the kept pixels' mean colour",
            "matched_bytes": f"kept patches as one RGB JPEG mosaic (Pillow, quality "
            f"{MOSAIC_QUALITY}, optimize) then filled in; vs the whole crop as JPEG at the "
            "highest quality <= the mosaic's bytes (per crop; q = 1 when nothing fits)",
            "cpu_ms_per_crop": "process time of the fill over all crops / crops, one thread "
            "(MAE batched by 64)",
            "torch_threads": 1,
        },
    }


def plot(data: dict[str, Any], num_examples: int = 4) -> None:
    # Curves: PSNR vs kept fraction (lossless kept patches), and PSNR vs bytes.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for sampling, style in (("random", "-"), ("grid", ":")):
        rows = [r for r in data["fill_in"] if r["sampling"] == sampling]
        for name, colour in (("mae", "C0"), ("linear", "C1"), ("nearest", "C2"), ("mean", "C7")):
            axes[0].plot(
                [100 * r["kept_fraction"] for r in rows],
                [r[name]["psnr_db"] for r in rows],
                style,
                marker="o",
                color=colour,
                label=f"{name} ({sampling})",
            )
    axes[0].set_xlabel("patches kept (%)")
    axes[0].set_ylabel("PSNR (dB), held-out crops")
    axes[0].set_title("fill-in from exact kept patches")
    axes[0].legend(fontsize=7, ncol=2)
    curve = data["full_jpeg_curve"]
    axes[1].plot(
        [c["bytes"] for c in curve],
        [c["psnr_db"] for c in curve],
        "k-",
        marker="s",
        label="whole crop JPEG (q 5-90)",
    )
    m = data["matched_bytes"]
    for name, colour in (("mae", "C0"), ("linear", "C1")):
        axes[1].plot(
            [r["bytes_sampled"] for r in m],
            [r[name]["psnr_db"] for r in m],
            "-",
            marker="o",
            color=colour,
            label=f"kept patches JPEG q{m[0]['mosaic_quality']} + {name}",
        )
    for r in m:
        axes[1].annotate(
            f"{100 * r['kept_fraction']:.0f}%",
            (r["bytes_sampled"], r["mae"]["psnr_db"]),
            fontsize=7,
            xytext=(3, -9),
            textcoords="offset points",
        )
    axes[1].set_xlabel("bytes per 64x64 RGB crop")
    axes[1].set_ylabel("PSNR (dB)")
    axes[1].set_title("at matched bytes")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "offload_photo_psnr.png", dpi=110)
    plt.close(fig)


def plot_examples(num_examples: int, seed: int, weights: Path) -> None:
    """Original / kept patches / MAE / linear for a few held-out crops at 10, 25, 50 % kept."""
    mae = load_mae(weights)
    info = heldout_crops(64, seed=seed)
    picks: list[int] = []
    for photo in HELDOUT_PHOTOS + HELDOUT_PHOTOS:  # one per photo first, then a second
        for i, p in enumerate(info.photos):
            if p == photo and i not in picks and info.scales[i] <= 0.5:
                picks.append(i)
                break
        if len(picks) == num_examples:
            break
    crops = info.pixels[picks]
    fractions = (0.10, 0.25, 0.50)
    cols = 1 + 3 * len(fractions)
    fig, axes = plt.subplots(len(picks), cols, figsize=(1.45 * cols, 1.6 * len(picks)))
    for f_index, fraction in enumerate(fractions):
        k = round(fraction * 64)
        idx = random_indices(np.random.default_rng(seed + k), len(crops), 64, k)
        kept = patchify_rgb(crops).copy()
        for b in range(len(crops)):
            hidden = np.ones(64, dtype=bool)
            hidden[idx[b]] = False
            kept[b][hidden] = 128
        shown = (unpatchify_rgb(kept), mae_reconstruct(mae, crops, idx), fill_linear(crops, idx))
        for b in range(len(crops)):
            for j, (image, label) in enumerate(zip(shown, ("kept", "MAE", "linear"), strict=True)):
                ax = axes[b, 1 + 3 * f_index + j]
                ax.imshow(image[b])
                title = f"{label} {100 * fraction:.0f}%"
                if label != "kept":
                    title += f"\n{_psnr(crops[b], image[b]):.1f} dB"
                ax.set_title(title, fontsize=7)
    for b in range(len(crops)):
        axes[b, 0].imshow(crops[b])
        axes[b, 0].set_title(f"{info.photos[picks[b]]}\n(held out)", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(DOCS / "offload_photo_reconstructions.png", dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-crops", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="photo MAE directory")
    parser.add_argument("--replot", action="store_true", help="redraw plots from the JSON")
    args = parser.parse_args()
    if args.replot:
        data = json.loads((RESULTS / f"{NAME}.json").read_text())
    else:
        start, cpu = time.perf_counter(), time.process_time()
        data = run(args.num_crops, args.seed, args.weights)
        data["wall_s"] = round(time.perf_counter() - start, 1)
        data["cpu_s"] = round(time.process_time() - cpu, 1)
        command = "python benchmarks/offload_photos.py"
        if args.num_crops != 120 or args.seed:
            command += f" --num-crops {args.num_crops} --seed {args.seed}"
        print(f"wrote {write_result(NAME, data, command)}")
    plot(data)
    plot_examples(4, args.seed, args.weights)


if __name__ == "__main__":
    main()
