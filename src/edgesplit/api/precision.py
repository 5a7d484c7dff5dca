"""The low-precision capability: stage dtypes, link encodings and what they cost in quality.

Owns the glue `edgesplit quality` calls: `measure_quality` (a `QualityTable` for one task on
real weights) and the parsers of the CLI's comma lists. Per-dtype unit profiles come from
`api.profile(..., dtypes=...)`; planning with dtypes is `api.plan(..., dtypes=,
link_encodings=, quality=, max_quality_loss=)`; `with_stage_dtype` is `--dtype` on run, generate
and serve (one dtype for every stage of a plan). Used as `edgesplit.api.precision`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from edgesplit.api.pipeline import prepare_profile
from edgesplit.core.cluster import Cluster
from edgesplit.core.cost import CostModel
from edgesplit.core.link_codec import parse_link_encoding
from edgesplit.core.plan import Plan
from edgesplit.core.precision import LINK_ENCODINGS, STAGE_DTYPES, LinkEncoding, StageDtype
from edgesplit.core.profile import ModelProfile
from edgesplit.core.quality import QualityTable
from edgesplit.core.schema import read_json_file
from edgesplit.errors import ConfigError

__all__ = [
    "LINK_ENCODINGS",
    "QUALITY_TASKS",
    "STAGE_DTYPES",
    "load_quality_table",
    "measure_quality",
    "parse_dtype",
    "parse_dtypes",
    "parse_link_encodings",
    "with_stage_dtype",
]

QUALITY_TASKS: tuple[str, ...] = ("smollm2", "minilm", "vit-digits", "vit-fashion")


def parse_dtypes(text: str) -> tuple[StageDtype, ...]:
    """ "float32,int8" -> ("float32", "int8"); a ConfigError names an unknown entry."""
    return tuple(dict.fromkeys(_parse_dtype(p.strip()) for p in text.split(",") if p.strip()))


def parse_dtype(name: str) -> StageDtype:
    """One stage dtype (`--dtype` of run / generate / serve); ConfigError when unknown."""
    return _parse_dtype(name.strip())


def _parse_dtype(name: str) -> StageDtype:
    for dtype in STAGE_DTYPES:  # torch-free, so `plan --dtype` does not import torch
        if name == dtype:
            return dtype
    raise ConfigError(f"unknown stage dtype '{name}'; choose one of {', '.join(STAGE_DTYPES)}")


def parse_link_encodings(text: str) -> tuple[LinkEncoding, ...]:
    """ "float16,int8-token" -> ("float16", "int8-token")."""
    return tuple(
        dict.fromkeys(parse_link_encoding(p.strip()) for p in text.split(",") if p.strip())
    )


def measure_quality(
    task: str,
    *,
    dtypes: Sequence[StageDtype] = ("bfloat16", "int8"),
    encodings: Sequence[LinkEncoding] = ("float16", "int8-tensor", "int8-token"),
    boundaries: Sequence[int] | None = None,
    num_samples: int | None = None,
    checkpoint: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> QualityTable:
    """A quality table for `task` (one of `QUALITY_TASKS`) on its real weights and data.

    Raises:
        ConfigError: unknown task, or its model/data is not installed (the message says how).
    """
    import torch

    from edgesplit.profile import quality

    if task not in QUALITY_TASKS:
        raise ConfigError(f"unknown quality task '{task}'; choose one of {list(QUALITY_TASKS)}")
    name: quality.QualityTaskName = task  # type: ignore[assignment]  # checked just above
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loaded = quality.load_quality_task(name, num_samples=num_samples, checkpoint=checkpoint)
        return quality.measure_quality(
            loaded, dtypes=dtypes, encodings=encodings, boundaries=boundaries, progress=progress
        )
    finally:
        torch.set_num_threads(previous)


def load_quality_table(path: Path | str) -> QualityTable:
    return read_json_file(QualityTable, Path(path))


def with_stage_dtype(
    plan: Plan,
    dtype: StageDtype,
    profile: ModelProfile | None = None,
    cluster: Cluster | None = None,
) -> Plan:
    """`plan` with every stage's weights in `dtype` (`--dtype` on run / generate / serve).

    Link encodings are kept. With `profile` and `cluster` the predictions are recomputed when
    the profile has figures for `dtype` (otherwise the plan's own stay, as for real compute the
    runtime uses them only as time allowances); the predicted quality is dropped (the table's
    rule would need the table again).
    """
    stages = tuple(s.with_precision(dtype) for s in plan.stages)
    predicted = plan.predicted.model_copy(update={"quality": None})
    if profile is not None and cluster is not None and dtype in profile.dtypes:
        prepared = prepare_profile(profile, cluster)  # the cluster's derived kinds, as `plan`
        predicted = CostModel(prepared, cluster).predict(
            stages,
            optimal=False,
            lower_bound_s=plan.predicted.lower_bound_s,
            objective=plan.objective,
        )
    data = plan.model_dump()
    data["stages"] = [s.model_dump() for s in stages]
    data["predicted"] = predicted.model_dump()
    return Plan.model_validate(data)
