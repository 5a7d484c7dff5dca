"""Train the offloading MAE + ViT on Fashion-MNIST and write src/edgesplit/offload/weights/.

Usage: .venv/bin/python scripts/train_offload_models.py [--out DIR] [--mae-steps N] [--vit-steps N]
(`make models` runs this; a few CPU-minutes with one thread.)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from edgesplit.offload.training import train_all

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src" / "edgesplit" / "offload" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--mae-steps", type=int, default=600)
    parser.add_argument("--vit-steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    timings = train_all(
        args.out, mae_steps=args.mae_steps, vit_steps=args.vit_steps, seed=args.seed
    )
    print(f"wrote {args.out}: " + ", ".join(f"{k}={v:.0f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
