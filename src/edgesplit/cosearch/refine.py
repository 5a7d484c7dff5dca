"""Grow-and-prune the chosen model (EdgeTran §3.5, after Tuli & Jha's FlexiBERT 2.0 / EdgeTran).

Owns `RefineSettings`, `RefineStep`, `RefineResult` (`edgesplit.cosearch_refine` file) and
`grow_and_prune`. Starting from a trained model, each step proposes an edit, fine-tunes briefly
and accepts it by accuracy and predicted device cost:
  prune-ffn / prune-heads  drop the least important `prune_fraction` of FFN neurons / heads per
                           layer (importance = accumulated |dL/dgate| over a few batches, Michel
                           et al. 2019); accepted when accuracy stays within `max_accuracy_drop`
                           of the reference and the predicted latency falls.
  grow-ffn / grow-heads    when a prune fails on accuracy, add `grow_fraction` neurons (or a
                           head) to the layer whose units are most important on average, with
                           zero output weights (function-preserving); accepted when accuracy
                           rises and the predicted latency stays below the starting model's.
Stops after `num_steps` or two consecutive rejections. Imports torch.
"""

from __future__ import annotations

import copy
import logging
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from edgesplit.core.schema import FrozenModel, VersionedFile
from edgesplit.cosearch.accuracy import (
    TrainSettings,
    build_encoder,
    proxy_config,
    train_encoder,
)
from edgesplit.cosearch.costs import DeviceCostModel
from edgesplit.cosearch.encoder import Encoder
from edgesplit.cosearch.space import EncoderConfig
from edgesplit.cosearch.tasks import Task

__all__ = ["RefineResult", "RefineSettings", "RefineStep", "grow_and_prune", "importances"]

log = logging.getLogger(__name__)
Action = Literal["start", "prune-ffn", "prune-heads", "grow-ffn", "grow-heads"]


class RefineSettings(FrozenModel):
    """Knobs of grow-and-prune."""

    device: str
    num_steps: int = 6
    prune_fraction: float = 0.25
    grow_fraction: float = 0.25
    finetune_epochs: int = 1
    max_accuracy_drop: float = 0.01
    importance_batches: int = 8
    seed: int = 0


class RefineStep(FrozenModel):
    """One proposed edit and whether it was kept (configs are full width)."""

    index: int
    action: Action
    config: EncoderConfig
    accuracy: float
    latency_s: float
    energy_j: float
    accepted: bool
    reason: str


class RefineResult(VersionedFile):
    """The edit history and the final model."""

    KIND: ClassVar[str] = "edgesplit.cosearch_refine"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: str = KIND
    schema_version: int = SCHEMA_VERSION
    task: str
    settings: RefineSettings
    train_settings: TrainSettings
    start: RefineStep
    final: RefineStep
    steps: tuple[RefineStep, ...]
    # Why it stopped: "steps" (num_steps reached), "rejections" (two in a row), "nothing to
    # prune"; "" in files written before this was recorded.
    stopped: str = ""

    @property
    def still_improving(self) -> bool:
        """Stopped by the step limit right after a kept edit: more steps may prune further."""
        return self.stopped == "steps" and self.steps[-1].accepted and len(self.steps) > 1


def importances(
    model: Encoder, task: Task, num_batches: int, batch_size: int = 64
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-layer head and FFN-neuron importances: Σ |∂loss/∂gate| over `num_batches` batches."""
    model.eval()
    head_gates = [torch.ones(layer.num_heads, requires_grad=True) for layer in model.blocks()]
    ffn_gates = [torch.ones(layer.ffn_size, requires_grad=True) for layer in model.blocks()]
    head_score = [torch.zeros(layer.num_heads) for layer in model.blocks()]
    ffn_score = [torch.zeros(layer.ffn_size) for layer in model.blocks()]
    x, y = torch.from_numpy(task.x_train), torch.from_numpy(task.y_train)
    for index in range(num_batches):
        rows = slice(index * batch_size, (index + 1) * batch_size)
        if len(y[rows]) == 0:
            break
        loss = F.cross_entropy(model(x[rows], head_gates, ffn_gates), y[rows])
        grads = torch.autograd.grad(loss, head_gates + ffn_gates)
        for i in range(len(model.layers)):
            head_score[i] += grads[i].abs()
            ffn_score[i] += grads[len(model.layers) + i].abs()
    return [s.numpy() for s in head_score], [s.numpy() for s in ffn_score]


def _full_config(start: EncoderConfig, model: Encoder, divisor: int) -> EncoderConfig:
    """Map the proxy's per-layer heads/FFN back to the full-width config."""
    proxy = model.config()
    return start.model_copy(
        update={
            "heads_per_layer": proxy.layer_heads(),
            "ffn_per_layer": tuple(f * max(divisor, 1) for f in proxy.layer_ffn()),
        }
    ).normalized()


def _propose(
    action: Action, model: Encoder, task: Task, settings: RefineSettings, generator: torch.Generator
) -> Encoder | None:
    heads, ffn = importances(model, task, settings.importance_batches)
    edited = copy.deepcopy(model)
    changed = False
    for index, layer in enumerate(edited.blocks()):
        if action == "prune-ffn":
            drop = int(layer.ffn_size * settings.prune_fraction)
            if drop >= 1 and layer.ffn_size - drop >= 4:
                keep = sorted(
                    np.argsort(-ffn[index], kind="stable")[: layer.ffn_size - drop].tolist()
                )
                edited.prune_ffn(index, keep)
                changed = True
        elif action == "prune-heads":
            drop = int(layer.num_heads * settings.prune_fraction)
            if drop >= 1 and layer.num_heads - drop >= 1:
                keep = sorted(
                    np.argsort(-heads[index], kind="stable")[: layer.num_heads - drop].tolist()
                )
                edited.prune_heads(index, keep)
                changed = True
    if action in ("grow-ffn", "grow-heads"):
        # Grow where the remaining units work hardest: the highest mean importance.
        scores = [float(s.mean()) for s in (ffn if action == "grow-ffn" else heads)]
        target = int(np.argmax(scores))
        layer = edited.blocks()[target]
        if action == "grow-ffn":
            edited.grow_ffn(target, max(4, int(layer.ffn_size * settings.grow_fraction)), generator)
        else:
            edited.grow_heads(target, 1, generator)
        changed = True
    return edited if changed else None


def grow_and_prune(
    config: EncoderConfig,
    task: Task,
    costs: DeviceCostModel,
    settings: RefineSettings,
    train_settings: TrainSettings | None = None,
) -> RefineResult:
    """Train `config` (at the proxy width), then prune and grow it step by step. See module doc."""
    train_settings = train_settings or TrainSettings()
    divisor = train_settings.width_divisor
    finetune = train_settings.model_copy(update={"learning_rate": train_settings.learning_rate / 3})
    generator = torch.Generator().manual_seed(settings.seed)
    model = build_encoder(
        proxy_config(config, divisor),
        task,
        train_settings.seed,
        norm_first=train_settings.norm_first,
    )
    accuracy = train_encoder(model, task, train_settings)

    def step(
        index: int, action: Action, m: Encoder, acc: float, accepted: bool, reason: str
    ) -> RefineStep:
        full = _full_config(config, m, divisor)
        cost = costs.predict(full, settings.device)
        return RefineStep(
            index=index,
            action=action,
            config=full,
            accuracy=acc,
            latency_s=cost.latency_s,
            energy_j=cost.energy_j,
            accepted=accepted,
            reason=reason,
        )

    start = step(0, "start", model, accuracy, True, "trained from scratch")
    reference, current = accuracy, start
    history = [start]
    rejections = 0
    stopped = "steps"
    prune_actions: list[Action] = ["prune-ffn", "prune-heads"]
    for index in range(1, settings.num_steps + 1):
        action = prune_actions[(index - 1) % 2]
        candidate = _propose(action, model, task, settings, generator)
        if candidate is None:
            action = prune_actions[index % 2]
            candidate = _propose(action, model, task, settings, generator)
        if candidate is None:
            stopped = "nothing to prune"
            break
        acc = train_encoder(candidate, task, finetune, epochs=settings.finetune_epochs)
        proposal = step(index, action, candidate, acc, False, "")
        if acc >= reference - settings.max_accuracy_drop and proposal.latency_s < current.latency_s:
            proposal = proposal.model_copy(
                update={"accepted": True, "reason": "accuracy kept, latency down"}
            )
            model, current, rejections = candidate, proposal, 0
            history.append(proposal)
            continue
        reason = (
            f"accuracy {acc:.3f} < {reference - settings.max_accuracy_drop:.3f}"
            if acc < reference - settings.max_accuracy_drop
            else "latency not lower"
        )
        history.append(proposal.model_copy(update={"reason": reason}))
        # Accuracy suffered: grow the pruned kind where importance is highest.
        grow: Action = "grow-ffn" if action == "prune-ffn" else "grow-heads"
        grown = _propose(grow, model, task, settings, generator)
        assert grown is not None
        acc_grown = train_encoder(grown, task, finetune, epochs=settings.finetune_epochs)
        grown_step = step(index, grow, grown, acc_grown, False, "")
        if acc_grown > current.accuracy and grown_step.latency_s <= start.latency_s:
            grown_step = grown_step.model_copy(
                update={"accepted": True, "reason": "accuracy up within the starting latency"}
            )
            model, current, rejections = grown, grown_step, 0
            reference = max(reference, acc_grown)
        else:
            grown_step = grown_step.model_copy(
                update={"reason": "no accuracy gain or latency above start"}
            )
            rejections += 1
        history.append(grown_step)
        if rejections >= 2:
            stopped = "rejections"
            break
    log.info("grow-and-prune: %s -> %s", start.config.describe(), current.config.describe())
    return RefineResult(
        task=task.name,
        settings=settings,
        train_settings=train_settings,
        start=start,
        final=current,
        steps=tuple(history),
        stopped=stopped,
    )
