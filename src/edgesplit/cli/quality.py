"""`edgesplit quality`: what each stage dtype and link encoding costs a model (a quality table).

Imports `edgesplit.api.precision` and core types only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgesplit.cli.common import console
from edgesplit.core.quality import QualityTable

__all__ = ["quality_table", "register"]


def quality_table(table: QualityTable) -> Table:
    """One row per dtype and per (link encoding, boundary), with the value and the loss."""
    unit = "%" if table.loss_unit == "percent" else " pts"
    out = Table(
        title=f"{table.model}: {table.metric} ({table.dataset})",
        caption=f"loss vs float32 in {table.loss_unit}; planners read this file",
    )
    for column in ("weights", "link", "value", "loss"):
        out.add_column(column, justify="left" if column in ("weights", "link") else "right")
    for row in table.dtypes:
        out.add_row(row.dtype, "float32", f"{row.value:.4f}", f"{row.loss:+.3f}{unit}")
    for link in table.links:
        cut = f"{link.encoding} after {table.unit_names[link.boundary - 1]}"
        out.add_row("float32", cut, f"{link.value:.4f}", f"{link.loss:+.3f}{unit}")
    return out


def register(app: typer.Typer) -> None:
    @app.command("quality")
    def quality(
        task: Annotated[
            str,
            typer.Option(
                "--task",
                "-t",
                help="smollm2 (perplexity, held-out KJV), minilm (embedding cosine to float32), "
                "vit-digits / vit-fashion (test accuracy of a trained tiny ViT).",
            ),
        ],
        output: Annotated[Path, typer.Option("--output", "-o", help="Quality table JSON.")],
        dtype: Annotated[
            str, typer.Option(help="Stage dtypes to measure, comma-separated.")
        ] = "bfloat16,int8",
        link: Annotated[
            str, typer.Option(help="Link encodings to measure at each boundary.")
        ] = "float16,int8-tensor,int8-token",
        boundary: Annotated[
            list[int] | None,
            typer.Option(
                help="Cut after units [0, B), B in 1..units-1 (repeat; default: 3 block "
                "boundaries)."
            ),
        ] = None,
        samples: Annotated[
            int | None,
            typer.Option(min=1, help="Windows / sentences / images (default per task)."),
        ] = None,
        checkpoint: Annotated[
            Path | None,
            typer.Option(
                help="SmolLM2 checkpoint directory (default: the first of "
                "$EDGESPLIT_HOME/models/smollm2-135m, ./checkpoints/smollm2-135m and the source "
                "tree's checkpoints/smollm2-135m, where `make models` writes it).",
            ),
        ] = None,
    ) -> None:
        """Measure quality per stage dtype and per link encoding on real weights and data.

        Example: edgesplit quality -t smollm2 -o smollm2-quality.json
        """
        from edgesplit.api import precision

        dtypes = precision.parse_dtypes(dtype)
        encodings = precision.parse_link_encodings(link)
        with console.status(f"[bold]quality[/] {task}") as status:
            table = precision.measure_quality(
                task,
                dtypes=dtypes,
                encodings=encodings,
                boundaries=boundary,
                num_samples=samples,
                checkpoint=checkpoint,
                progress=lambda message: status.update(f"[bold]quality[/] {task}: {message}"),
            )
        from edgesplit import api

        api.save(table, output)
        console.print(quality_table(table))
        console.print(f"quality table written to [bold]{output}[/]")
