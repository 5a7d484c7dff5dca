"""`edgesplit profile`: measure every unit of a model on this host (progress bar, JSON out)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgesplit import api
from edgesplit.cli.common import console
from edgesplit.core.precision import StageDtype
from edgesplit.core.profile import ModelProfile
from edgesplit.errors import ConfigError

__all__ = ["profile_with_progress", "register"]


def profile_with_progress(
    model: str,
    batch_size: int,
    *,
    repeats: int = 5,
    warmup: int = 2,
    threads: int = 1,
    device_kind: str | None = None,
    seq_len: int | None = None,
    dtypes: tuple[StageDtype, ...] = ("float32",),
) -> ModelProfile:
    with Progress(
        TextColumn("[bold]profiling[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} units"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(model, total=None)

        def report(done: int, total: int, name: str) -> None:
            progress.update(task, completed=done, total=total, description=f"{model}: {name}")

        return api.profile(
            model,
            batch_size,
            repeats=repeats,
            warmup=warmup,
            num_threads=threads,
            device_kind=device_kind,
            progress=report,
            seq_len=seq_len,
            dtypes=dtypes,
        )


def _check_distinct_kinds(paths: list[Path], profiles: list[ModelProfile]) -> None:
    """Each device kind in one input only: a merge keeps one set of times per kind, so a kind
    in two files would silently lose the first file's times.

    Raises:
        ConfigError: a file given twice, or a kind in two files (the message says how to fix).
    """
    owner: dict[str, Path] = {}
    for index, (path, profile) in enumerate(zip(paths, profiles, strict=True)):
        if any(Path(path).resolve() == Path(p).resolve() for p in paths[:index]):
            raise ConfigError(f"{path} is given twice; give each board kind's profile once")
        kinds = sorted({kind for unit in profile.units for kind in unit.time_s})
        for kind in kinds:
            if kind in owner:
                raise ConfigError(
                    f"device kind '{kind}' is in both {owner[kind]} and {path}; a merge keeps "
                    f"one set of times per kind, so {owner[kind]}'s would be dropped. Different "
                    "boards: re-profile each with `edgesplit profile --device-kind NAME` (one "
                    "name per board kind, e.g. rpi4, jetson-nano); the same board kind: give "
                    "only one of the files"
                )
            owner[kind] = path


def register(app: typer.Typer) -> None:
    @app.command("profile-merge")
    def merge(
        inputs: Annotated[list[Path], typer.Argument(help="Profiles of one model, one per kind.")],
        output: Annotated[Path, typer.Option("--output", "-o", help="Merged profile JSON.")],
    ) -> None:
        """Merge profiles measured on different device kinds into one (all kinds' times).

        Profile each board kind with `edgesplit profile --device-kind NAME`, copy the files
        to one machine, merge them; cluster.toml's device kinds are then those names (the
        multi-board recipe: docs/models.md, "Several board kinds"). PipeEdge's published
        profiles are read by `plan -p pipeedge:MODEL` directly, not merged.

        Example: edgesplit profile-merge pi4.json jetson.json -o vit-base.json
        """
        from edgesplit.core.profile import merge_profiles

        for path in inputs:
            if str(path).startswith("pipeedge:"):
                raise ConfigError(
                    f"profile-merge reads profile files; PipeEdge's published profiles are "
                    f"used directly: `edgesplit plan -p {path} ...`"
                )
        profiles = [api.load_profile(path) for path in inputs]
        _check_distinct_kinds(inputs, profiles)
        merged = merge_profiles(profiles)
        api.save(merged, output)
        console.print(f"{merged.model}: kinds {list(merged.device_kinds)} → [bold]{output}[/]")

    @app.command("profile")
    def profile(
        model: Annotated[
            str,
            typer.Option(
                "--model",
                "-m",
                help="Preset (vit-base, vit-large, vit-huge, deit-small, bert-base, bert-large, "
                "gpt2, gpt2-medium, smollm2-135m, ...-tiny) or a checkpoint directory.",
            ),
        ],
        output: Annotated[Path, typer.Option("--output", "-o", help="Profile JSON to write.")],
        batch_size: Annotated[int, typer.Option(min=1, help="Micro-batch size.")] = 1,
        repeats: Annotated[int, typer.Option(min=1, help="Timed runs per unit (median).")] = 5,
        warmup: Annotated[int, typer.Option(min=0, help="Untimed runs per unit first.")] = 2,
        threads: Annotated[int, typer.Option(min=1, help="torch intra-op threads.")] = 1,
        device_kind: Annotated[
            str | None, typer.Option(help="Kind to record (default: derived from this CPU).")
        ] = None,
        seq_len: Annotated[
            int | None, typer.Option(min=1, help="Tokens per sequence (text models).")
        ] = None,
        dtype: Annotated[
            str,
            typer.Option(
                help="Stage dtypes to measure each unit in, comma-separated (float32, bfloat16, "
                "int8); float32 is always measured."
            ),
        ] = "float32",
    ) -> None:
        """Measure each unit (embedding, attention/MLP halves, head) on this host.

        Example: edgesplit profile -m vit-base --batch-size 8 -o vit-base.json
        Example: edgesplit profile -m smollm2-135m --dtype float32,bfloat16,int8 -o smol.json
        """
        from edgesplit.api import precision

        dtypes = precision.parse_dtypes(dtype)
        result = profile_with_progress(
            model,
            batch_size,
            repeats=repeats,
            warmup=warmup,
            threads=threads,
            device_kind=device_kind,
            seq_len=seq_len,
            dtypes=("float32", *dtypes) if "float32" not in dtypes else dtypes,
        )
        api.save(result, output)
        kind = result.device_kinds[0]
        table = Table(title=f"{result.model} on {kind}, micro-batch {batch_size}")
        for column in ("unit", "ms", "cpu ms", "weights MB", "out MB", "GFLOP"):
            table.add_column(column, justify="left" if column == "unit" else "right")
        for index, unit in enumerate(result.units):
            cpu = (unit.cpu_time_s or {}).get(kind, 0.0)
            table.add_row(
                unit.name,
                f"{unit.time_s[kind] * 1e3:.2f}",
                f"{cpu * 1e3:.2f}",
                f"{unit.param_bytes / 1e6:.2f}",
                f"{unit.output_bytes / 1e6:.3f}",
                f"{unit.flops / 1e9:.3f}",
                end_section=index == len(result.units) - 1,
            )
        cpu_total = sum((u.cpu_time_s or {}).get(kind, 0.0) for u in result.units)
        table.add_row(
            "[bold]total[/]",
            f"{sum(u.time_s[kind] for u in result.units) * 1e3:.2f}",
            f"{cpu_total * 1e3:.2f}",
            f"{sum(u.param_bytes for u in result.units) / 1e6:.2f}",
            "",
            f"{sum(u.flops for u in result.units) / 1e9:.3f}",
            end_section=False,
        )
        console.print(table)
        if len(result.dtypes) > 1:
            console.print(_dtype_table(result, kind))
        console.print(f"profile written to [bold]{output}[/]")


def _dtype_table(result: ModelProfile, kind: str) -> Table:
    """Whole-model time and weight bytes per dtype (the per-unit figures are in the file)."""
    table = Table(title=f"{result.model} per stage dtype on {kind}")
    for column in ("dtype", "ms", "weights MB", "x float32 speed"):
        table.add_column(column, justify="left" if column == "dtype" else "right")
    base = sum(result.times_for(kind))
    for dtype in result.dtypes:
        seconds = sum(result.times_for(kind, dtype))
        table.add_row(
            dtype,
            f"{seconds * 1e3:.2f}",
            f"{sum(result.param_bytes_for(dtype)) / 1e6:.2f}",
            f"{base / seconds:.2f}" if seconds > 0 else "-",
        )
    return table
