"""Accuracy of a configuration from a short real training, cached by configuration.

Owns `TrainSettings`, `proxy_config` (the width-reduced model that is actually trained),
`train_encoder` (seeded AdamW training on a `Task`, one torch thread) and `AccuracyCache` (a JSON
file of results keyed by config x task x settings, so searches and re-runs never train twice).
Imports torch; never ray or planners.

[Note: width proxy] Training BERT-Base-sized candidates for every trial is out of reach on a
2-core CPU (one epoch of digits takes minutes). By default candidates are trained at 1/8 width
(hidden and FFN divided by `width_divisor`, same depth and head count; head width shrinks with
hidden), a reduced-width proxy as used by cheap NAS. Latency, energy and power are always those of
the full-width config. `width_divisor=1` trains the real model when compute allows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgesplit.core.schema import FrozenModel, content_hash, stable_json
from edgesplit.cosearch.encoder import Encoder
from edgesplit.cosearch.space import EncoderConfig
from edgesplit.cosearch.tasks import Task

__all__ = [
    "AccuracyCache",
    "AccuracyRecord",
    "TrainSettings",
    "build_encoder",
    "evaluate",
    "proxy_config",
    "train_encoder",
]

log = logging.getLogger(__name__)


class TrainSettings(FrozenModel):
    """A short training run; everything that changes the result is here (it keys the cache)."""

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    width_divisor: int = 8
    seed: int = 0
    # Pre-LN layers (+ final norm). The search keeps BERT's post-LN; the final-model comparison
    # trains both the final model and the Base-shaped baseline pre-LN (stable at depth 12).
    norm_first: bool = False

    def cache_hash(self) -> str:
        """Cache-key hash; fields added later are left out at their defaults (old keys hold)."""
        if self.norm_first:
            return content_hash(self)
        payload = self.model_dump(mode="json", exclude={"norm_first"})
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))  # as content_hash
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class AccuracyRecord(FrozenModel):
    """One training result."""

    config_key: str
    config: EncoderConfig
    trained_config: EncoderConfig  # the proxy actually trained
    task: str
    accuracy: float
    train_cpu_s: float
    num_params_trained: int


def proxy_config(config: EncoderConfig, width_divisor: int) -> EncoderConfig:
    """Same depth and heads (per layer too) at hidden/width_divisor and FFN/width_divisor."""
    if width_divisor <= 1:
        return config
    heads = config.num_heads
    hidden = max(heads, config.hidden_size // width_divisor)
    hidden -= hidden % heads  # keep heads dividing hidden
    return config.model_copy(
        update={
            "hidden_size": max(hidden, heads),
            "ffn_size": max(4, config.ffn_size // width_divisor),
            "ffn_per_layer": None
            if config.ffn_per_layer is None
            else tuple(max(4, f // width_divisor) for f in config.ffn_per_layer),
        }
    )


def build_encoder(
    config: EncoderConfig, task: Task, seed: int, *, norm_first: bool = False
) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(
        config,
        num_classes=task.num_classes,
        seq_len=task.seq_len,
        vocab_size=task.vocab_size,
        patch_pixels=task.patch_pixels,
        norm_first=norm_first,
    )


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x)


@torch.no_grad()
def evaluate(model: Encoder, task: Task, *, batch_size: int = 256) -> float:
    """Test accuracy."""
    model.eval()
    correct = 0
    for start in range(0, len(task.y_test), batch_size):
        logits = model(_tensor(task.x_test[start : start + batch_size]))
        correct += int(
            (logits.argmax(-1) == _tensor(task.y_test[start : start + batch_size])).sum()
        )
    return correct / len(task.y_test)


def train_encoder(
    model: Encoder, task: Task, settings: TrainSettings, *, epochs: int | None = None
) -> float:
    """Train in place with AdamW and a linear-decay schedule; returns test accuracy."""
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    num_epochs = settings.epochs if epochs is None else epochs
    steps_per_epoch = max(1, len(task.y_train) // settings.batch_size)
    total = max(1, num_epochs * steps_per_epoch)
    warmup = max(1, total // 10)  # post-LN layers diverge without warm-up when deep

    def factor(step: int) -> float:
        return (
            (step + 1) / warmup
            if step < warmup
            else max(0.0, (total - step) / (total - warmup + 1))
        )

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    x_all, y_all = _tensor(task.x_train), _tensor(task.y_train)
    for _ in range(num_epochs):
        model.train()
        order = torch.randperm(len(y_all), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            loss = F.cross_entropy(model(x_all[batch]), y_all[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    return evaluate(model, task)


class AccuracyCache:
    """A JSON file of `AccuracyRecord`s keyed by config x task x settings; evaluates on a miss.

    The file is rewritten atomically after each new record, so an interrupted search resumes
    without re-training what it already has.
    """

    def __init__(
        self, path: Path | None, task: Task, settings: TrainSettings | None = None
    ) -> None:
        self.path = None if path is None else Path(path)
        self.task = task
        self.settings = settings or TrainSettings()
        self._records: dict[str, AccuracyRecord] = {}
        if self.path is not None and self.path.is_file():
            for key, value in json.loads(self.path.read_text()).get("records", {}).items():
                self._records[key] = AccuracyRecord.model_validate(value)
        self.num_trained = 0

    def _key(self, config: EncoderConfig) -> str:
        # eager and sdpa attention compute the same function: one training serves both.
        same_maths = config.model_copy(update={"attention": "sdpa"})
        return f"{same_maths.key()}:{self.task.name}:{self.settings.cache_hash()}"

    def __len__(self) -> int:
        return len(self._records)

    def cached(self, config: EncoderConfig) -> AccuracyRecord | None:
        """The cached record, or None (never trains)."""
        config = config.normalized()
        cached = self._records.get(self._key(config))
        if cached is None or cached.config == config:
            return cached
        return cached.model_copy(update={"config": config, "config_key": config.key()})

    def get(self, config: EncoderConfig) -> AccuracyRecord:
        """The cached record, training the proxy first on a miss."""
        config = config.normalized()
        key = self._key(config)
        hit = self.cached(config)
        if hit is not None:
            return hit
        trained = proxy_config(config, self.settings.width_divisor).model_copy(
            update={"attention": "sdpa"}
        )
        model = build_encoder(
            trained, self.task, self.settings.seed, norm_first=self.settings.norm_first
        )
        start = time.thread_time()
        accuracy = train_encoder(model, self.task, self.settings)
        record = AccuracyRecord(
            config_key=config.key(),
            config=config,
            trained_config=trained,
            task=self.task.name,
            accuracy=accuracy,
            train_cpu_s=time.thread_time() - start,
            num_params_trained=sum(p.numel() for p in model.parameters()),
        )
        log.info(
            "trained %s: accuracy %.3f in %.1f CPU-s",
            config.describe(),
            accuracy,
            record.train_cpu_s,
        )
        self._records[key] = record
        self.num_trained += 1
        self._save()
        return record

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        records = {k: v.model_dump(mode="json") for k, v in self._records.items()}
        if self.path.is_file():  # merge: another cache object may share the file
            records = json.loads(self.path.read_text()).get("records", {}) | records
        payload = {
            "kind": "edgesplit.cosearch_accuracy_cache",
            "schema_version": 1,
            "records": records,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(stable_json(payload))
        tmp.replace(self.path)
