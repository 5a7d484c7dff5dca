"""Quality-loss tables: what each stage dtype and link encoding costs a model, as planners read it.

Owns `QualityTable` (`kind: edgesplit.quality_table`, written by `edgesplit quality`), its rows
`DtypeQuality` / `LinkQuality`, `PredictedQuality` (what a plan records) and the additive
prediction rule `QualityTable.predicted_loss`. No torch, no ray.

[Note: quality loss] A loss is measured against the same model in float32 with float32 links,
on held-out data, in the table's `loss_unit`: perplexity -> percent increase, embedding cosine ->
percent cosine distance (1 - mean cosine) x 100, accuracy -> points dropped. A plan's predicted
loss adds, per stage, the whole-model loss of its dtype times the stage's share of the model's
weight bytes, and per cut the loss measured for that encoding at that boundary (the worst
measured boundary when that one was not measured). Negative measured losses count as 0, so the
sum never promises a gain. docs/precision.md compares the rule with measured mixed plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from edgesplit.core.precision import LinkEncoding, StageDtype
from edgesplit.core.schema import FrozenModel, VersionedFile, content_hash
from edgesplit.errors import ConfigError

__all__ = [
    "DtypeQuality",
    "LinkQuality",
    "LossUnit",
    "PredictedQuality",
    "QualityMetric",
    "QualityTable",
    "loss_from_values",
]

QualityMetric = Literal["perplexity", "embedding_cosine", "accuracy"]
LossUnit = Literal["percent", "points"]
_LOSS_UNIT: dict[QualityMetric, LossUnit] = {
    "perplexity": "percent",
    "embedding_cosine": "percent",
    "accuracy": "points",
}


def loss_from_values(metric: QualityMetric, reference: float, value: float) -> float:
    """The loss of `value` against the float32 `reference` ([Note: quality loss]).

    perplexity: 100 (value / reference - 1); embedding_cosine (value = mean cosine to the
    float32 embedding, reference 1): 100 (1 - value); accuracy (fractions in [0, 1]): 100
    (reference - value) points.
    """
    if metric == "perplexity":
        return 100.0 * (value / reference - 1.0)
    if metric == "embedding_cosine":
        return 100.0 * (reference - value)
    return 100.0 * (reference - value)


class DtypeQuality(FrozenModel):
    """Every unit of the model held in `dtype` (links float32)."""

    dtype: StageDtype
    value: float
    loss: float


class LinkQuality(FrozenModel):
    """Float32 weights; activations crossing `boundary` (after units [0, boundary)) encoded."""

    encoding: LinkEncoding
    boundary: Annotated[int, Field(ge=1)]
    value: float
    loss: float


class PredictedQuality(FrozenModel):
    """A plan's predicted quality loss under one table (`Predicted.quality`)."""

    metric: QualityMetric
    loss: float
    loss_unit: LossUnit
    max_loss: float | None = None
    table_hash: str


class QualityTable(VersionedFile):
    """Measured quality per stage dtype and per link encoding for one model and one metric."""

    KIND: ClassVar[str] = "edgesplit.quality_table"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: Literal["edgesplit.quality_table"] = "edgesplit.quality_table"
    schema_version: Literal[1] = 1
    model: str
    metric: QualityMetric
    loss_unit: LossUnit
    dataset: str
    num_samples: Annotated[int, Field(ge=1)]
    float32_value: float
    unit_names: Annotated[tuple[str, ...], Field(min_length=1)]
    unit_param_bytes: tuple[Annotated[float, Field(ge=0)], ...]
    dtypes: tuple[DtypeQuality, ...]
    links: tuple[LinkQuality, ...] = ()
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> QualityTable:
        if self.loss_unit != _LOSS_UNIT[self.metric]:
            raise ValueError(
                f"metric {self.metric} is measured in {_LOSS_UNIT[self.metric]}, "
                f"not {self.loss_unit}"
            )
        if len(self.unit_param_bytes) != len(self.unit_names):
            raise ValueError(
                f"{len(self.unit_names)} unit names but {len(self.unit_param_bytes)} "
                "unit_param_bytes"
            )
        for link in self.links:
            if link.boundary >= len(self.unit_names):
                raise ValueError(
                    f"link boundary {link.boundary} is not inside the model's "
                    f"{len(self.unit_names)} units"
                )
        return self

    @property
    def num_units(self) -> int:
        return len(self.unit_names)

    def digest(self) -> str:
        return content_hash(self)

    def dtype_loss(self, dtype: StageDtype) -> float:
        """Whole-model loss of `dtype` (0 for float32); ConfigError when it was not measured."""
        if dtype == "float32":
            return 0.0
        for row in self.dtypes:
            if row.dtype == dtype:
                return max(0.0, row.loss)
        measured = sorted({r.dtype for r in self.dtypes})
        raise ConfigError(
            f"quality table of '{self.model}' has no figure for dtype {dtype} (measured: "
            f"{measured}); run `edgesplit quality --dtype {dtype}` or leave {dtype} out"
        )

    def link_loss(self, boundary: int, encoding: LinkEncoding) -> float:
        """Loss of `encoding` at `boundary`: measured there, else the worst measured boundary."""
        if encoding == "float32":
            return 0.0
        rows = [r for r in self.links if r.encoding == encoding]
        if not rows:
            raise ConfigError(
                f"quality table of '{self.model}' has no figure for link encoding {encoding}; "
                f"run `edgesplit quality --link {encoding}` or leave it out"
            )
        exact = [r.loss for r in rows if r.boundary == boundary]
        return max(0.0, *(exact or [r.loss for r in rows]))

    def predicted_loss(
        self,
        stages: Sequence[tuple[int, int, StageDtype]],
        cuts: Sequence[tuple[int, LinkEncoding]] = (),
    ) -> float:
        """[Note: quality loss] for stages `(start, end, dtype)` and cuts `(boundary, encoding)`.

        Example: SmolLM2 with int8 loss 2 % and stages [(0, 30, "int8"), (30, 62, "float32")]
        holding 40 % of the weight bytes in [0, 30) predicts 0.8 %, plus the cut at 30's figure.
        """
        total_bytes = sum(self.unit_param_bytes) or 1.0
        loss = 0.0
        for start, end, dtype in stages:
            if not 0 <= start < end <= self.num_units:
                raise ConfigError(
                    f"stage [{start}, {end}) is outside the {self.num_units} units of the "
                    f"quality table of '{self.model}'; measure the table for this model"
                )
            share = sum(self.unit_param_bytes[start:end]) / total_bytes
            loss += self.dtype_loss(dtype) * share
        for boundary, encoding in cuts:
            loss += self.link_loss(boundary, encoding)
        return loss
