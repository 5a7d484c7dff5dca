"""`edgesplit cosearch profile|fit|search|refine`: device-aware co-search (EdgeTran).

Each subcommand reads the previous one's file and writes its own (under out/cosearch/ by
default); `search` also draws one Pareto panel per device and `refine` writes a markdown report
page next to its result. Goes through `edgesplit.api.cosearch`, imported when a command runs.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from edgesplit.cli.common import console
from edgesplit.data import PROTRAN_DIR


class ModalityChoice(StrEnum):
    text = "text"
    image = "image"


class MethodChoice(StrEnum):
    tpe = "tpe"
    nsga2 = "nsga2"
    random = "random"


class PredictorChoice(StrEnum):
    auto = "auto"
    gbm = "gbm"
    additive = "additive"
    additive_l1 = "additive_l1"
    stack = "stack"
    trees = "trees"
    ensemble = "ensemble"
    blend = "blend"


class PreferChoice(StrEnum):
    accuracy = "accuracy"
    latency = "latency"
    balanced = "balanced"


__all__ = ["register"]

DEFAULT_DIR = Path("out/cosearch")
PROTRAN_DEFAULT = PROTRAN_DIR  # the bundled ProTran measurements (BSD-3-Clause)


SEED_HELP = "Seed of the sampling and training (same seed, same result)."


def _positive(value: float | None) -> float | None:
    """Option callback: a budget must be > 0 (typer's min= cannot exclude the bound)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value:g}")
    return value


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        name="cosearch",
        help="Device-aware co-search: profile configs, fit per-device predictors, search "
        "config x device for accuracy/latency/energy/power, grow-and-prune the winner. Each "
        "step reads the previous step's file; all of them live in out/cosearch/ by default.\n\n"
        "  edgesplit cosearch fit            # per-device predictors, bundled ProTran data\n"
        "  edgesplit cosearch search --task digits --budget 32\n"
        "  edgesplit cosearch refine --device rpi-cpu",
        no_args_is_help=True,
    )
    app.add_typer(group)

    @group.command("profile")
    def profile(
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Results (JSON lines; resumes).")
        ] = DEFAULT_DIR / "host_profile.jsonl",
        count: Annotated[int, typer.Option(min=1, help="Random configs to profile.")] = 40,
        modality: Annotated[
            ModalityChoice, typer.Option(help="text (BERT-style) or image (ViT-style).")
        ] = ModalityChoice.text,
        seq_len: Annotated[int, typer.Option(min=2, help="Tokens per input incl. CLS.")] = 128,
        repeats: Annotated[
            int, typer.Option(min=1, help="Timed forwards per config and round (median).")
        ] = 3,
        rounds: Annotated[
            int,
            typer.Option(
                min=1,
                help="Measure every config this many times, each round in a new random order, "
                "and keep the median: a device that drifts (clock, heat) during the run then "
                "biases no config in particular. Prints each round's slowdown.",
            ),
        ] = 1,
        seed: Annotated[int, typer.Option(help="Seed of the sampled configs.")] = 0,
    ) -> None:
        """Measure wall and 1-thread CPU time, peak memory and FLOPs of sampled configs here.

        Example (a quick look: 3 small configs, each measured in 2 rounds):
          edgesplit cosearch profile --count 3 --rounds 2 --seq-len 32
        Appends to out/cosearch/host_profile.jsonl (-o), which `cosearch fit` reads.
        """
        from edgesplit.api import cosearch as flow

        flow.single_thread()
        with _progress() as progress:
            task = progress.add_task("profiling", total=count * rounds)
            measured = flow.cosearch_profile(
                output,
                modality=cast(Any, modality.value),
                count=count,
                seed=seed,
                seq_len=seq_len,
                repeats=repeats,
                rounds=rounds,
                on_progress=lambda done, total, m: progress.update(
                    task,
                    completed=done,
                    total=total,
                    description=m.config.describe() if m else "",
                ),
            )
        table = Table(title=f"{len(measured)} configs profiled here ({output})")
        for column in ("config", "params M", "GFLOPs", "wall ms", "CPU ms", "peak MB"):
            table.add_column(column, justify="left" if column == "config" else "right")
        for m in sorted(measured, key=lambda m: m.cpu_s)[:: max(1, len(measured) // 12)]:
            table.add_row(
                m.config.describe(),
                f"{m.num_params / 1e6:.1f}",
                f"{m.flops / 1e9:.2f}",
                f"{m.wall_s * 1e3:.1f}",
                f"{m.cpu_s * 1e3:.1f}",
                f"{m.peak_memory_bytes / 1e6:.0f}",
            )
        console.print(table)
        console.print(f"energy: {measured[0].energy_model}")
        if rounds > 1:
            drift = flow.round_drift(output, measured)
            spread = sorted(m.round_spread for m in measured)[len(measured) // 2]
            console.print(
                "CPU time per round / the configs' medians: "
                + ", ".join(f"round {i}: {r:.3f}" for i, r in enumerate(drift))
                + f"; median spread between rounds {100 * spread:.1f} %"
            )

    @group.command("fit")
    def fit(
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Predictor recipe JSON.")
        ] = DEFAULT_DIR / "predictors.json",
        protran: Annotated[
            Path | None,
            typer.Option(
                help="Folder of ProTran results_*.json measurements.",
                show_default="the bundled set",
            ),
        ] = PROTRAN_DEFAULT,
        host_results: Annotated[
            Path | None,
            typer.Option(
                help="`cosearch profile` output (default: out/cosearch/host_profile.jsonl "
                "if it exists)."
            ),
        ] = None,
        method: Annotated[
            PredictorChoice,
            typer.Option(help="auto (nested choice per device, default) or a fixed method."),
        ] = PredictorChoice.auto,
        folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds.")] = 5,
    ) -> None:
        """Cross-validate per-device predictors (MAPE, Spearman) and write the recipe.

        Example (the bundled ProTran data, plus this host's profile if there is one; about
        2 minutes on one core, the bar counts the device x target fits):
          edgesplit cosearch fit
        Writes out/cosearch/predictors.json (-o), which `cosearch search` and `refine` read.
        """
        if host_results is None and (DEFAULT_DIR / "host_profile.jsonl").is_file():
            host_results = DEFAULT_DIR / "host_profile.jsonl"
        from edgesplit.api import cosearch as flow

        flow.single_thread()
        with _progress() as progress:
            bars: list[TaskID] = []  # one bar, added once the data is read (errors come first)

            def on_progress(done: int, total: int, label: str) -> None:
                if not bars:
                    bars.append(progress.add_task("fitting", total=total))
                progress.update(
                    bars[0], completed=done, total=total, description=f"fitting {label}".strip()
                )

            recipe = flow.cosearch_fit(
                output,
                protran_dir=protran,
                host_results=host_results,
                method=cast(Any, method.value),
                num_folds=folds,
                on_progress=on_progress,
            )
        table = Table(title=f"{folds}-fold cross-validation ({method.value}) -> {output}")
        for column in ("device", "n", "latency MAPE", "Spearman", "energy MAPE", "peak power MAPE"):
            table.add_column(column, justify="left" if column == "device" else "right")
        for device, targets in recipe.cross_validation.items():
            lat = targets["latency_s"]
            energy, power = targets.get("energy_j"), targets.get("peak_power_w")
            table.add_row(
                device,
                str(lat.num_samples),
                f"{lat.mape:.1%}",
                f"{lat.spearman:.3f}",
                f"{energy.mape:.1%}" if energy else "-",
                f"{power.mape:.1%}" if power else "-",
            )
        console.print(table)

    @group.command("search")
    def search(
        predictors: Annotated[
            Path, typer.Option("--predictors", "-p", help="`cosearch fit` output.")
        ] = DEFAULT_DIR / "predictors.json",
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Search result JSON.")
        ] = DEFAULT_DIR / "search.json",
        task: Annotated[
            str, typer.Option(help="Accuracy task: digits, wordnet-pos or docstrings.")
        ] = "digits",
        method: Annotated[
            MethodChoice, typer.Option(help="tpe, nsga2 or random.")
        ] = MethodChoice.tpe,
        budget: Annotated[
            int, typer.Option(min=1, help="Trials (config x device), each trained once.")
        ] = 32,
        device: Annotated[
            list[str] | None, typer.Option(help="Restrict to these devices (repeat).")
        ] = None,
        max_latency_s: Annotated[
            float | None,
            typer.Option(callback=_positive, help="Latency budget on the device, seconds."),
        ] = None,
        max_peak_power_w: Annotated[
            float | None, typer.Option(callback=_positive, help="Peak power budget, watts.")
        ] = None,
        memory_fraction: Annotated[
            float,
            typer.Option(
                max=1.0,
                callback=_positive,
                help="Share of device memory a model may use, in (0, 1].",
            ),
        ] = 0.8,
        width_divisor: Annotated[
            int, typer.Option(min=1, help="Train at 1/N width (1 = real width).")
        ] = 8,
        epochs: Annotated[
            int, typer.Option(min=1, help="Training epochs per trial's accuracy.")
        ] = 3,
        seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    ) -> None:
        """Search config x device for accuracy, latency, energy, peak power; Pareto plots.

        Example (32 TPE trials on the digits task, every device the predictors know):
          edgesplit cosearch search --task digits --method tpe --budget 32
        Reads out/cosearch/predictors.json (-p); writes search.json (-o), search.png (one
        Pareto panel per device) and accuracy_cache.json beside it. Each trial is a distinct
        (config, device); one the predictors rule out by the constraints is not trained, and
        when none could meet them the search stops before training (exit code 3).
        """
        from edgesplit.api import cosearch as flow

        flow.check_search_inputs(predictors, task=task, devices=device)  # before the bar
        flow.single_thread()
        with _progress() as progress:
            bar = progress.add_task(f"{method.value} search", total=budget)
            result, plot = flow.cosearch_search(
                predictors,
                output,
                task=task,
                method=cast(Any, method.value),
                budget=budget,
                seed=seed,
                devices=device or None,
                max_latency_s=max_latency_s,
                max_peak_power_w=max_peak_power_w,
                memory_fraction=memory_fraction,
                width_divisor=width_divisor,
                epochs=epochs,
                on_trial=lambda t: progress.advance(bar),
            )
        table = Table(
            title=f"Pareto front ({len(result.pareto)} of {len(result.trials)} trials, "
            f"hypervolume {result.hypervolume:.3f})"
        )
        for column in (
            "device",
            "config",
            "accuracy",
            "latency s",
            "energy J",
            "peak W",
            "memory MB",
        ):
            table.add_column(column, justify="left" if column in ("device", "config") else "right")
        for t in sorted(result.pareto_trials(), key=lambda t: (t.device, t.latency_s)):
            table.add_row(
                t.device,
                t.config.describe(),
                f"{t.accuracy:.3f}",
                f"{t.latency_s:.4g}",
                f"{t.energy_j:.4g}",
                f"{t.peak_power_w:.3g}",
                f"{t.memory_bytes / 1e6:.0f}",
            )
        console.print(table)
        untrained = sum(not t.trained for t in result.trials)
        notes = []
        if untrained:
            notes.append(f"{untrained} trial(s) ruled out by the predictors were not trained")
        if result.repeats:
            notes.append(
                f"the sampler proposed {result.repeats} repeat(s) of an evaluated (config, "
                "device); answered from the earlier trial, not counted"
            )
        if len(result.trials) < result.budget:
            notes.append(f"every one of the {len(result.trials)} (config, device) pairs was tried")
        for note in notes:
            console.print(note, markup=False, highlight=False)
        if not result.pareto:
            violated = sorted({v.split(" ")[0] for t in result.trials for v in t.violations})
            console.print(
                f"no trial met the constraints ({', '.join(violated)}); some config can by the "
                "predictors, but the search did not find one: raise --budget or relax them",
                style="yellow",
                markup=False,
                highlight=False,
            )
        console.print(f"wrote {output} and {plot}")

    @group.command("refine")
    def refine(
        search_result: Annotated[
            Path, typer.Option("--search", "-s", help="`cosearch search` output.")
        ] = DEFAULT_DIR / "search.json",
        predictors: Annotated[
            Path, typer.Option("--predictors", "-p", help="`cosearch fit` output.")
        ] = DEFAULT_DIR / "predictors.json",
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Refine result JSON.")
        ] = DEFAULT_DIR / "refine.json",
        device: Annotated[
            str | None, typer.Option(help="Pick the front member on this device.")
        ] = None,
        prefer: Annotated[
            PreferChoice, typer.Option(help="accuracy, latency or balanced.")
        ] = PreferChoice.balanced,
        steps: Annotated[
            int, typer.Option(min=1, help="Most grow/prune steps (two rejections in a row stop).")
        ] = 6,
        max_accuracy_drop: Annotated[
            float,
            typer.Option(
                min=0.0,
                help="A prune is kept while accuracy stays within this of the start (0.01 = 1 "
                "point).",
            ),
        ] = 0.01,
        width_divisor: Annotated[
            int, typer.Option(min=1, help="Train at 1/N width (1 = real width).")
        ] = 8,
    ) -> None:
        """Grow-and-prune the chosen front member; writes the result and a report page (.md).

        Example (the balanced front member on the Raspberry Pi's CPU):
          edgesplit cosearch refine --device rpi-cpu
        Reads out/cosearch/search.json (-s) and predictors.json (-p); writes refine.json (-o)
        and the report page refine.md beside it.
        """
        from edgesplit.api import cosearch as flow

        flow.single_thread()
        result, report = flow.cosearch_refine(
            search_result,
            predictors,
            output,
            device=device,
            prefer=cast(Any, prefer.value),
            steps=steps,
            max_accuracy_drop=max_accuracy_drop,
            width_divisor=width_divisor,
        )
        table = Table(title=f"grow-and-prune on {result.settings.device}")
        for column in ("step", "action", "config", "accuracy", "latency s", "kept", "why"):
            table.add_column(
                column, justify="right" if column in ("step", "accuracy", "latency s") else "left"
            )
        for s in result.steps:
            table.add_row(
                str(s.index),
                s.action,
                s.config.describe(),
                f"{s.accuracy:.3f}",
                f"{s.latency_s:.4g}",
                "yes" if s.accepted else "no",
                s.reason,
            )
        console.print(table)
        if result.still_improving:
            console.print(
                f"stopped at --steps {steps} while the last step was still kept; more steps may "
                f"prune further (e.g. --steps {2 * steps})",
                markup=False,
                highlight=False,
            )
        console.print(f"wrote {output} and report {report}")
