"""A small byte-level GPT-2 trained here on the KJV text (quality checks for generation).

Owns the model shape, the training loop (AdamW, cosine schedule, fixed seed, one torch thread)
and the checkpoint it writes (config.json + model.safetensors + edgesplit.json + metrics.json,
~3 MB), loadable with `model_spec_from_name(directory)`. Built by
`scripts/build_generation_models.py` (`make models`), never at import. Imports torch and
models.build; never ray.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from edgesplit.models.build import build_model, save_checkpoint
from edgesplit.models.spec import ModelSpec
from edgesplit.models.textdata import encode_bytes, kjv_text, split_text

__all__ = ["KJV_GPT2_NAME", "TrainConfig", "kjv_gpt2_spec", "train_kjv_gpt2"]

logger = logging.getLogger(__name__)
KJV_GPT2_NAME = "gpt2-kjv"


@dataclass(frozen=True)
class TrainConfig:
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    context: int = 128
    batch_size: int = 16
    steps: int = 400
    learning_rate: float = 3e-3
    seed: int = 0
    eval_batches: int = 8


def kjv_gpt2_spec(config: TrainConfig = TrainConfig()) -> ModelSpec:
    return ModelSpec(
        family="gpt2",
        preset=KJV_GPT2_NAME,
        seed=config.seed,
        overrides=dict(
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            vocab_size=256,
            n_positions=512,
            bos_token_id=10,  # "\n": a verse starts after a newline
            eos_token_id=10,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        ),
    )


def _batch(data: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(
        0, len(data) - config.context - 1, (config.batch_size,), generator=generator
    )
    return torch.stack([data[s : s + config.context + 1] for s in starts.tolist()])  # (B, T+1)


@torch.no_grad()
def _bits_per_byte(model: torch.nn.Module, data: torch.Tensor, config: TrainConfig) -> float:
    generator = torch.Generator().manual_seed(config.seed + 1)
    losses = []
    for _ in range(config.eval_batches):
        batch = _batch(data, config, generator)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        losses.append(float(loss))
    return sum(losses) / len(losses) / math.log(2)


def train_kjv_gpt2(directory: Path | str, config: TrainConfig = TrainConfig()) -> dict[str, float]:
    """Train on the KJV (95 % train / 5 % validation) and write the checkpoint to `directory`.

    Returns the metrics also written to `metrics.json` (validation bits/byte before and after,
    steps, CPU and wall seconds).
    """
    torch.set_num_threads(1)
    spec = kjv_gpt2_spec(config)
    model = build_model(spec).train()
    train_text, val_text = split_text(kjv_text())
    train = torch.tensor(encode_bytes(train_text), dtype=torch.long)
    val = torch.tensor(encode_bytes(val_text), dtype=torch.long)
    initial = _bits_per_byte(model.eval(), val, config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(config.seed)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(config.steps):
        batch = _batch(train, config, generator)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            logger.info("step %d loss %.3f", step, loss.item())
    metrics = {
        "validation_bits_per_byte_initial": initial,
        "validation_bits_per_byte": _bits_per_byte(model.eval(), val, config),
        "steps": float(config.steps),
        "train_wall_s": time.perf_counter() - wall0,
        "train_cpu_s": time.process_time() - cpu0,
        "num_parameters": float(sum(p.numel() for p in model.parameters())),
    }
    directory = Path(directory)
    save_checkpoint(spec, directory, model.eval())
    (directory / "metrics.json").write_text(
        json.dumps({"metrics": metrics, "config": asdict(config)}, indent=2, sort_keys=True)
    )
    return metrics
