"""Shared CLI helpers: rich console and tables for plans. Imports core types and rich only."""

from __future__ import annotations

import os
from typing import Protocol

from rich.console import Console, ConsoleDimensions
from rich.table import Table

from edgesplit.core.plan import Plan
from edgesplit.errors import ConfigError

__all__ = ["PIPE_WIDTH", "SolveReport", "console", "parse_stages", "plan_table"]

PIPE_WIDTH = 120  # columns when stdout is not a terminal and $COLUMNS is not set


class _Console(Console):
    """A rich Console that does not squeeze tables to 80 columns in a pipe, `tee` or a CI log.

    Rich falls back to 80 columns when no terminal size is found, cutting device names and
    dtypes to `phon…`; off a terminal this takes at least `PIPE_WIDTH`. $COLUMNS, when set,
    wins (as in rich), and a terminal keeps its own width.
    """

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        chosen = self._width is not None or os.environ.get("COLUMNS", "").isdigit()
        if chosen or self.is_terminal:
            return size
        return ConsoleDimensions(max(PIPE_WIDTH, size.width), size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


console: Console = _Console()


class SolveReport(Protocol):
    """What a planner reports during a long search (the planners' SolveProgress)."""

    @property
    def elapsed_s(self) -> float: ...
    @property
    def best(self) -> float: ...
    @property
    def bound(self) -> float: ...
    @property
    def gap(self) -> float: ...


def plan_table(plan: Plan, title: str | None = None, caption: str | None = None) -> Table:
    """Stage-by-device table with the cost model's predictions (`caption`: instead of the
    pipeline figures, e.g. a generation plan's own)."""
    override = caption
    predicted = plan.predicted
    optimality = "optimal" if predicted.optimal else "heuristic"
    if predicted.gap is not None and not predicted.optimal:
        optimality += f", gap to lower bound ≤ {predicted.gap:.1%}"
    caption = (
        f"period {predicted.period_s:.4f} s · throughput {predicted.throughput_per_s:.3f}/s · "
        f"latency {predicted.latency_s:.4f} s · in {predicted.input_transfer_s:.4f} s · "
        f"out {predicted.output_transfer_s:.4f} s · planned in {plan.planner.elapsed_s:.3f} s"
    )
    quality = predicted.quality
    if quality is not None:
        unit = "%" if quality.loss_unit == "percent" else " points"
        budget = "" if quality.max_loss is None else f" (budget {quality.max_loss:g}{unit})"
        caption += f"\npredicted {quality.metric} loss {quality.loss:.3g}{unit}{budget}"
    precision = quality is not None or any(
        s.dtype != "float32" or s.link_encoding != "float32" for s in plan.stages
    )
    table = Table(
        title=title
        or (
            f"{plan.model} (batch {plan.batch_size}) — planner '{plan.planner.name}' "
            f"({optimality}), objective {plan.objective}"
        ),
        caption=caption if override is None else override,
    )
    columns = ["stage", "device", "units", "#"]
    columns += ["dtype", "link out"] if precision else []
    columns += ["compute s", "hop out s", "memory MB", "cap MB"]
    for column in columns:
        left = column in ("device", "units", "dtype", "link out")
        table.add_column(column, justify="left" if left else "right")
    for index, (stage, pred) in enumerate(zip(plan.stages, predicted.stages, strict=True)):
        bottleneck = max(pred.compute_s, pred.transfer_s) >= predicted.period_s * 0.999
        cells = [str(index), stage.device, f"[{stage.start}, {stage.end})", str(stage.num_units)]
        cells += [stage.dtype, stage.link_encoding] if precision else []
        cells += [
            f"{pred.compute_s:.4f}",
            f"{pred.transfer_s:.4f}",
            f"{pred.memory_bytes / 1e6:.1f}",
            f"{pred.memory_capacity_bytes / 1e6:.0f}",
        ]
        table.add_row(*cells, style="bold red" if bottleneck else None)
    return table


def parse_stages(text: str) -> list[tuple[str, int, int]]:
    """'a:0-10,b:10-22' -> [("a", 0, 10), ("b", 10, 22)]."""
    stages = []
    for part in text.split(","):
        device, _, span = part.partition(":")
        start, _, end = span.partition("-")
        try:
            stages.append((device.strip(), int(start), int(end)))
        except ValueError:
            raise ConfigError(f"--stages expects DEVICE:START-END,..., got {part!r}") from None
    return stages
