"""The low-precision capability: stage dtypes, link encodings and what they cost in quality.

Owns the glue `edgesplit quality` calls: `measure_quality` (a `QualityTable` for one task on
real weights) and the parsers of the CLI's comma lists. Per-dtype unit profiles come from
`api.profile(..., dtypes=...)`. Used as `edgesplit.api.precision`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from edgesplit.core.link_codec import parse_link_encoding
from edgesplit.core.precision import LINK_ENCODINGS, STAGE_DTYPES, LinkEncoding, StageDtype
from edgesplit.core.quality import QualityTable
from edgesplit.core.schema import read_json_file
from edgesplit.errors import ConfigError

__all__ = [
    "LINK_ENCODINGS",
    "QUALITY_TASKS",
    "STAGE_DTYPES",
    "load_quality_table",
    "measure_quality",
    "parse_dtypes",
    "parse_link_encodings",
]

QUALITY_TASKS: tuple[str, ...] = ("smollm2", "minilm", "vit-digits", "vit-fashion")


def parse_dtypes(text: str) -> tuple[StageDtype, ...]:
    """ "float32,int8" -> ("float32", "int8"); a ConfigError names an unknown entry."""
    from edgesplit.models.precision import parse_dtype

    return tuple(dict.fromkeys(parse_dtype(p.strip()) for p in text.split(",") if p.strip()))


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
