"""Train the offloading MAE + ViT on Fashion-MNIST, then measure the SLO policy's tables.

Writes mae/classifier checkpoints (fp16 safetensors + JSON config), meta.json and tables.json
into src/edgesplit/offload/weights/ (or --out). `make models` runs this: about 6 CPU-minutes of
training (one thread) plus ~2 minutes of calibration on held-out training images.

Usage: .venv/bin/python scripts/train_offload_models.py [--out DIR] [--mae-steps N]
       [--vit-steps N] [--tables-only]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from edgesplit.core.schema import write_json_file
from edgesplit.offload.calibrate import calibrate_tables
from edgesplit.offload.server import load_pipeline
from edgesplit.offload.training import train_all

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src" / "edgesplit" / "offload" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--mae-steps", type=int, default=1000)
    parser.add_argument("--vit-steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tables-only", action="store_true", help="skip training")
    parser.add_argument("--calibration-images", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.tables_only:
        timings = train_all(
            args.out, mae_steps=args.mae_steps, vit_steps=args.vit_steps, seed=args.seed
        )
        print(f"wrote {args.out}: " + ", ".join(f"{k}={v:.0f}" for k, v in timings.items()))
    pipeline, order = load_pipeline(args.out)
    tables = calibrate_tables(pipeline, np.array(order), num_images=args.calibration_images)
    write_json_file(tables, args.out / "tables.json")
    print(f"wrote {args.out / 'tables.json'}: {len(tables.options)} options")


if __name__ == "__main__":
    main()
