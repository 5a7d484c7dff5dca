"""Unit importance, surrogate calibration data and failure-aware fine-tuning ("failout").

Owns `ablation_importance` (single-unit ablation on calibration data: Δloss and Δmetric per unit),
`gradient_importance` (first-order estimate −∂L/∂keep_u, one backward pass), `measure_lost_sets`
(real masked evaluations of lost-unit sets, the ground truth a planner's surrogate is calibrated
against) and `finetune` (failout with masks from a sampler, or the unmasked control of equal
steps). Results leave as numpy arrays so planners (no torch) can use them.
Imports torch; never ray or planners (placements come in as mask samplers).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edgesplit.models.robust_tasks import RobustTask

__all__ = [
    "FinetuneResult",
    "ablation_importance",
    "finetune",
    "gradient_importance",
    "measure_lost_sets",
]

log = logging.getLogger(__name__)

KeepSampler = Callable[[np.random.Generator], np.ndarray]


def ablation_importance(task: RobustTask) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit (Δloss, Δmetric) when that single unit is lost, on the calibration split.

    Δloss ≥ 0 usually (a unit that helps); Δmetric is signed in the task's own direction
    (accuracy drop is negative). Cost: num_units + 1 masked evaluations.
    """
    base = task.evaluate(None, "calib")
    n = task.model.num_units
    d_loss, d_metric = np.zeros(n), np.zeros(n)
    keep = torch.ones(n)
    for u in range(n):
        keep[u] = 0.0
        ev = task.evaluate(keep, "calib")
        keep[u] = 1.0
        d_loss[u] = ev.loss - base.loss
        d_metric[u] = ev.metric - base.metric
    return d_loss, d_metric


def gradient_importance(task: RobustTask) -> np.ndarray:
    """First-order ablation estimate: loss(keep_u=0) − loss ≈ −∂L/∂keep_u at keep = 1."""
    keep = torch.ones(task.model.num_units, requires_grad=True)
    total = torch.zeros(())
    for inputs, target in task.calib:
        total = total + task.loss(task.model(inputs, keep), target)
    (total / len(task.calib)).backward()
    assert keep.grad is not None
    return (-keep.grad).detach().numpy().astype(np.float64)


def measure_lost_sets(
    task: RobustTask,
    lost_sets: Sequence[Sequence[int]],
    split: str = "eval",
    cache: dict[tuple[int, ...], tuple[float, float, dict[str, float]]] | None = None,
) -> list[tuple[float, float, dict[str, float]]]:
    """Real masked evaluations (metric, loss, extra) for each lost set; `cache` dedupes."""
    cache = {} if cache is None else cache
    out = []
    for lost in lost_sets:
        key = tuple(sorted(int(u) for u in lost))
        if key not in cache:
            keep = task.model.keep_from_lost(key) if key else None
            ev = task.evaluate(keep, "calib" if split == "calib" else "eval")
            cache[key] = (ev.metric, ev.loss, dict(ev.extra))
        out.append(cache[key])
    return out


@dataclass(frozen=True)
class FinetuneResult:
    task: RobustTask  # a copy of the task whose model was fine-tuned
    steps: int
    masked: bool
    train_s: float
    final_loss: float


def finetune(
    task: RobustTask,
    *,
    steps: int,
    keep_sampler: KeepSampler | None,
    seed: int = 0,
    lr: float = 3e-4,
    kl_weight: float = 0.0,
) -> FinetuneResult:
    """Fine-tune a copy of the task's width model for `steps` batches.

    With `keep_sampler` (failout) every step draws a keep-mask from the failure model (a lost
    unit's term is zeroed in forward and backward); without it (control) the same batches and
    steps run unmasked. `kl_weight` > 0 adds KL(intact ‖ masked) on classifier logits.
    """
    if not task.train:
        raise ValueError(f"task '{task.name}' has no training batches for fine-tuning")
    tuned = copy.deepcopy(task)
    model = tuned.model
    reference = task.model
    params = _trainable(model)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    start = time.process_time()
    loss_value = 0.0
    assert tuned.train is not None
    for step in range(steps):
        inputs, target = tuned.train[step % len(tuned.train)]
        keep = None
        if keep_sampler is not None:
            keep = torch.as_tensor(keep_sampler(rng), dtype=torch.float32)
        out = model(inputs, keep)
        loss = tuned.loss(out, target)
        if kl_weight > 0 and tuned.metric_name == "accuracy":
            with torch.no_grad():
                ref = reference(inputs, None)
            loss = loss + kl_weight * torch.nn.functional.kl_div(
                out.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean"
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
    model.eval()
    return FinetuneResult(
        tuned, steps, keep_sampler is not None, time.process_time() - start, loss_value
    )


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Width tensors, shared norms, embeddings and head; not the HF block weights that the
    width tensors were copied from (they are unused by the width forward)."""
    from edgesplit.models.width import find_block_list

    _, blocks = find_block_list(model.hf_model)  # type: ignore[arg-type]
    block_ids = {id(q) for q in blocks.parameters()}
    layer_ids = {id(q) for q in model.layers.parameters()}  # type: ignore[union-attr]
    return [p for p in model.parameters() if id(p) in layer_ids or id(p) not in block_ids]
