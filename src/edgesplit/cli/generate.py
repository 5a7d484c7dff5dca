"""`edgesplit generate` (+ generate-profile, generate-plan, generate-serve): KV-cached decoding
across devices, tokens streamed to the console; an OpenAI-style HTTP endpoint.

Goes through `edgesplit.api.generation`; imports core types and rich only.
Heavy modules (torch, transformers) load inside the commands.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgesplit import api
from edgesplit.api import generation as gen
from edgesplit.cli.common import SolveReport, console, parse_stages, plan_table
from edgesplit.cli.groups import DefaultCommandGroup
from edgesplit.cli.serve import serve_command
from edgesplit.cli.stream import TokenStream
from edgesplit.core.cluster import Cluster, load_cluster
from edgesplit.core.schema import read_json_file, write_json_file
from edgesplit.errors import ConfigError, DeviceUnavailableError

__all__ = ["register"]

MODEL_HELP = "Preset (gpt2-tiny, llama-tiny, ...) or a checkpoint directory."
FAULT_HELP = (
    "KIND:DEVICE@SECONDS, KIND in kill, stop (hang), crash (its Ray node), cut (its link); "
    "seconds from the start of generation (repeat)."
)


def _stages_and_model(
    plan: Path | None, model: str | None, stages: str | None, devices: str | None
) -> tuple[str, list[tuple[str, int, int]], int]:
    """(model, stages, micro-batches: the plan's, else 0 = one per stage)."""
    if plan is not None:
        loaded = gen.load_generation_plan(plan)
        name = model or loaded.model
        gen.check_plan_model(loaded, name, str(plan))
        return name, gen.stages_of(loaded), gen.micro_batches_of(loaded)
    if model is None:
        raise ConfigError("give --plan, or --model with --stages or --devices")
    if stages:
        return model, parse_stages(stages), 0
    names = [d.strip() for d in (devices or "local").split(",") if d.strip()]
    repeated = sorted({d for d in names if names.count(d) > 1})
    if repeated:
        raise ConfigError(f"--devices lists {repeated} more than once; name each device once")
    return model, gen.decode_stages(model, names), 0


def _max_concurrent(given: int | None, plan: Path | None) -> tuple[int, str]:
    """(sequences decoding at once, where that number comes from): --max-concurrent, else the
    generation plan's `num_sequences` (what it was planned for), else 4."""
    if given is not None:
        return given, "--max-concurrent"
    planned = None if plan is None else gen.num_sequences_of(gen.load_generation_plan(plan))
    if planned is not None:
        return planned, "the plan's"
    return 4, "default"


def _generation_title(result: gen.GenerationPlan) -> str:
    """The plan table's title in generation terms: what was asked (sequences, objective)."""
    g, plan = result.generation, result.plan
    return (
        f"{plan.model}: {g.num_sequences} sequence(s) at once, objective {g.objective} — "
        f"planner '{plan.planner.name}' ({'optimal' if g.optimal else 'heuristic'})"
    )


def _ms(seconds: float) -> str:
    """Milliseconds with 3 significant figures or more (a tiny model's 0.14 ms is not 0.1)."""
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def _batch_table(profile: gen.GenerationProfile, kind: str) -> Table:
    """Whole-model decode step time vs sequences batched into it (what `generate profile`
    measured; the planner's batch dimension), as `profile` prints its unit table."""
    one_row, _, points = profile.stage_times(kind, 0, profile.decode.num_units)
    table = Table(
        title=f"{profile.model} decode on {kind} (KV cache {profile.cache_length} tokens)",
        caption=None if points else "batch sizes not measured (--batch-sizes '')",
    )
    for column in ("batch", "step ms", "ms/token", "tokens/s", "x batch 1"):
        table.add_column(column, justify="right")
    for batch, ratio in [(1, 1.0), *points]:
        step = one_row * ratio
        table.add_row(
            str(batch),
            _ms(step),
            _ms(step / batch),
            f"{batch / step:.1f}" if step > 0 else "-",
            f"{batch / ratio:.2f}" if ratio > 0 else "-",
        )
    return table


class _SolveProgress:
    """`plan_generation`'s progress: a "solving" line once a solve may take long (announced
    before several solves, or at the first report of one that passed a second), then the best
    plan so far every few seconds. Values are seconds per token (1 / tokens_per_s for the
    tokens_per_s objective, one sequence's time per token for time_per_token)."""

    EVERY_S = 5.0

    def __init__(self, objective: str) -> None:
        self.objective = objective
        self.began = time.perf_counter()
        self.announced = False
        self.last = 0.0
        self.best = math.inf

    def announce(self, what: str = "") -> None:
        if not self.announced:
            detail = f", {what}" if what else ""
            console.print(
                f"[dim]solving (MILP{detail}; up to ~30 s, --time-limit caps each solve) …[/]"
            )
            self.announced = True

    def __call__(self, report: SolveReport) -> None:
        self.announce()
        self.best = min(self.best, report.best)
        now = time.perf_counter() - self.began
        if now - self.last < self.EVERY_S or not math.isfinite(self.best):
            return
        self.last = now
        if self.objective == "tokens_per_s":
            figure = f"{1 / self.best:.2f} tokens/s" if self.best > 0 else "-"
        else:
            figure = f"{self.best * 1e3:.1f} ms/token"
        console.print(f"[dim]{now:6.1f} s  best so far {figure}[/]")


def _optimality(result: gen.GenerationPlan) -> str:
    gap = result.plan.predicted.gap
    if result.generation.optimal:
        return "optimal"
    return "best found" + ("" if gap is None else f", certified gap to the lower bound {gap:.1%}")


def _headline(result: gen.GenerationPlan) -> str:
    """What each sequence gets at the planned concurrency (with the one-sequence figure in
    brackets: that is the round trip alone, not what S sequences see), then the total."""
    g = result.generation
    alone = g.time_per_token_s * 1e3
    if g.num_sequences == 1:
        return f"{alone:.1f} ms/token · {g.tokens_per_s:.2f} tokens/s (one sequence)"
    each = (g.concurrent_time_per_token_s or g.num_sequences / g.tokens_per_s) * 1e3
    return (
        f"each sequence {each:.1f} ms/token ({alone:.1f} ms alone) · {g.tokens_per_s:.2f} "
        f"tokens/s over {g.num_sequences} sequences"
    )


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        name="generate",
        cls=DefaultCommandGroup,
        help="KV-cached text generation across devices: `generate run` decodes prompts, "
        "`generate profile` measures decode/prefill unit times, `generate plan` partitions the "
        "model, `generate serve` serves OpenAI-style /v1/completions. "
        "`edgesplit generate --model M --devices a,b --prompt P` is `generate run`.",
        no_args_is_help=True,
    )
    app.add_typer(group)

    @group.command("run")
    def generate(
        prompt: Annotated[list[str], typer.Option("--prompt", help="Prompt text (repeatable).")],
        plan: Annotated[
            Path | None, typer.Option(help="Plan file (from `generate plan` or `plan`).")
        ] = None,
        cluster: Annotated[
            Path | None,
            typer.Option(
                "--cluster",
                "-c",
                help="cluster.toml: links shaped as it says, devices checked against it.",
            ),
        ] = None,
        model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
        stages: Annotated[str | None, typer.Option(help="DEVICE:START-END,... (no plan)")] = None,
        devices: Annotated[
            str | None,
            typer.Option(
                help="Split over these in order, balancing the weights each stage reads per "
                "token (no plan; e.g. a,b,c).",
            ),
        ] = None,
        max_new_tokens: Annotated[
            int, typer.Option(min=1, help="New tokens per prompt (prompt + these <= context).")
        ] = 32,
        temperature: Annotated[
            float, typer.Option(min=0.0, help="0 = greedy; > 0 samples (seeded).")
        ] = 0.0,
        top_k: Annotated[
            int, typer.Option(min=0, help="Sample among the k likeliest (0 = all).")
        ] = 0,
        seed: Annotated[int, typer.Option(help="Sampling seed (same seed, same tokens).")] = 0,
        max_concurrent: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Sequences decoding at once (batched per step; default: the --plan's "
                "sequences when it is a generation plan, else 4).",
            ),
        ] = None,
        standby: Annotated[list[str] | None, typer.Option(help="Standby device.")] = None,
        fault: Annotated[list[str] | None, typer.Option(help=FAULT_HELP)] = None,
        kill: Annotated[
            list[str] | None, typer.Option(help="DEVICE@SECONDS: shorthand for kill:DEVICE@S.")
        ] = None,
        report: Annotated[Path | None, typer.Option(help="Write the JSON report.")] = None,
        dtype: Annotated[
            str,
            typer.Option("--dtype", help="Every stage's weights: float32, bfloat16 or int8."),
        ] = "float32",
    ) -> None:
        """Generate continuations on a KV-cached pipeline; tokens stream as they come.

        Example (b's stage hangs 2 s in; new_ids equal a run without the fault):
          edgesplit generate --model checkpoints/smollm2-135m --devices a,b,c \\
            --prompt "The capital of France is" --fault stop:b@2 --report r.json
        Exit code 4 if a sequence failed.
        """
        model_name, placed, micro_batches = _stages_and_model(plan, model, stages, devices)
        concurrent, concurrent_from = _max_concurrent(max_concurrent, plan)
        faults = [api.parse_fault(f) for f in fault or []] + [api.parse_kill(k) for k in kill or []]
        loaded_cluster: Cluster | None = load_cluster(cluster) if cluster else None
        tokenizer = gen.tokenizer_for(model_name)
        streamed: dict[int, list[int]] = {}
        shown: dict[int, str] = {}
        stream = TokenStream(console)

        def on_token(sequence_id: int, token: int) -> None:
            if len(prompt) != 1:
                return
            if not streamed:  # the prompt, once the pipeline is up and its first token came
                stream.write(prompt[0], style="bold")
            ids = streamed.setdefault(sequence_id, [])
            ids.append(token)
            text = tokenizer.decode(ids)
            stream.write(text[len(shown.get(sequence_id, "")) :])
            shown[sequence_id] = text

        with stream.open():
            result = gen.generate(
                model_name,
                placed,
                list(prompt),
                max_new_tokens,
                cluster=loaded_cluster,
                temperature=temperature,
                top_k=top_k,
                seed=seed,
                max_concurrent=concurrent,
                micro_batches=micro_batches,
                standby_devices=standby or [],
                on_token=on_token,
                faults=faults,
                dtype=api.precision.parse_dtype(dtype),
            )
        if len(prompt) != 1:
            for sequence in result.sequences:
                console.print(
                    f"[bold]{prompt[sequence.sequence_id]}[/]" + tokenizer.decode(sequence.new_ids)
                )
        table = Table(title=f"{model_name} on {len(placed)} stage(s)")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_row("new tokens", str(result.new_tokens))
        table.add_row("sequences at once (at most)", f"{concurrent} ({concurrent_from})")
        table.add_row("tokens/s (all sequences)", f"{result.tokens_per_s:.2f}")
        table.add_row("time per token (per sequence)", f"{result.time_per_token_s * 1e3:.1f} ms")
        for failure in result.failures:
            recovered = failure.recovered_after_s
            table.add_row(
                f"failure of {failure.device} at {failure.at_s:.2f} s ({failure.cause})",
                f"detected after {failure.detected_after_s:.2f} s, recovered after "
                f"{'never' if recovered is None else f'{recovered:.2f} s'} by {failure.action}, "
                f"replayed {failure.replayed} tokens",
            )
        console.print(table)
        if report is not None:
            write_json_file(result, report)
        failed = [s for s in result.sequences if s.finished == "error"]
        if failed:
            raise DeviceUnavailableError(
                f"{len(failed)} of {len(result.sequences)} sequence(s) failed, e.g. "
                f"{failed[0].sequence_id}: {failed[0].error}"
            )

    @group.command("profile")
    @app.command("generate-profile", hidden=True)  # the old spelling, kept for one release
    def generate_profile(
        model: Annotated[str, typer.Option(help=MODEL_HELP)],
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Generation profile JSON to write.")
        ],
        device_kind: Annotated[
            str,
            typer.Option(
                help="Kind the times are filed under: a cluster.toml device kind, or the "
                # escaped: help text is rich markup, which would eat "[kinds]" as a tag
                f"`relative_to` of its {escape('[[kinds]]')} entries."
            ),
        ] = "host",
        prompt_length: Annotated[
            int, typer.Option(min=1, help="Prompt tokens of the timed prefill.")
        ] = 32,
        cache_length: Annotated[
            int, typer.Option(min=0, help="Tokens already in the KV cache at a timed decode step.")
        ] = 128,
        repeats: Annotated[
            int, typer.Option(min=1, help="Timed repetitions per measurement (median).")
        ] = 5,
        batch_sizes: Annotated[
            str,
            typer.Option(help="Decode batch sizes to time (comma-separated; '' = none)."),
        ] = "2,4,8,16",
    ) -> None:
        """Measure decode/prefill unit times here and decode step time vs batch size.

        The file is a generation profile: each unit's decode (one token, KV cache of
        --cache-length) and prefill (--prompt-length tokens) time, and how a decode step's time
        grows with the sequences batched into it (the planner's batch dimension). Prints the
        decode time vs batch size table.

        Example (a preset; any checkpoint directory works the same):
          edgesplit generate profile --model llama-tiny -o gen.json
        Writes only the -o file; `generate plan --profile` reads it.
        """
        try:
            sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
        except ValueError as e:
            raise ConfigError(f"--batch-sizes must be integers, e.g. 2,4,8: {e}") from e
        if any(b < 1 or b > 1024 for b in sizes):
            raise ConfigError("--batch-sizes must be between 1 and 1024")
        profile = gen.measure_generation_profile(
            model,
            device_kind=device_kind,
            prompt_length=prompt_length,
            cache_length=cache_length,
            repeats=repeats,
            batch_sizes=sizes,
        )
        write_json_file(profile, output)
        console.print(_batch_table(profile, device_kind))
        prefill_s = sum(profile.prefill.times_for(device_kind))
        kv_kb = sum(profile.kv_bytes_per_token) / 1e3
        console.print(
            f"prefill of {profile.prompt_length} tokens {prefill_s * 1e3:.1f} ms · KV cache "
            f"{kv_kb:.1f} kB per token per sequence"
        )
        console.print(f"generation profile written to [bold]{output}[/]")

    @group.command("plan")
    @app.command("generate-plan", hidden=True)  # the old spelling, kept for one release
    def generate_plan(
        profile: Annotated[Path, typer.Option(help="From `generate profile`.")],
        cluster: Annotated[
            Path, typer.Option("--cluster", "-c", help="cluster.toml (see examples/cluster.toml).")
        ],
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Generation plan JSON to write.")
        ],
        objective: Annotated[str, typer.Option(help="tokens_per_s | time_per_token")] = (
            "tokens_per_s"
        ),
        num_sequences: Annotated[
            int,
            typer.Option(
                "--concurrency",
                "--num-sequences",
                min=1,
                help="Sequences decoding at once (tokens_per_s plans for this concurrency).",
            ),
        ] = 1,
        max_context: Annotated[
            int,
            typer.Option(min=1, help="Tokens per sequence the KV cache must hold (memory check)."),
        ] = 2048,
        max_devices: Annotated[
            int | None, typer.Option(min=1, help="Use at most this many devices (default: any).")
        ] = None,
        time_limit: Annotated[
            float | None,
            typer.Option(
                "--time-limit",
                help="Seconds to search at most, per exact solve; the best plan found is kept "
                "with its certified gap to a lower bound (default: until optimal).",
            ),
        ] = None,
    ) -> None:
        """Plan a generation pipeline (KV cache counted for max_context x sequences).

        Example (the most tokens/s with 8 sequences decoding at once):
          edgesplit generate plan --profile gen.json -c examples/cluster.toml \\
            --concurrency 8 -o gplan.json
        Writes only the -o file; `generate run --plan` and `serve --plan` read it.
        """
        if objective not in ("tokens_per_s", "time_per_token"):
            raise ConfigError(
                f"--objective must be tokens_per_s or time_per_token, not {objective}"
            )
        if time_limit is not None and time_limit <= 0:
            raise ConfigError(f"--time-limit must be positive seconds, not {time_limit:g}")
        loaded_cluster = load_cluster(cluster)
        loaded = gen.prepare_generation_profile(
            read_json_file(gen.GenerationProfile, profile), loaded_cluster
        )
        progress = _SolveProgress(objective)
        if objective == "tokens_per_s" and num_sequences > 1 and loaded.decode_batch:
            progress.announce("one exact solve per micro-batch size")  # several: can take long
        result = gen.plan_generation(
            loaded,
            loaded_cluster,
            objective=objective,  # type: ignore[arg-type]
            num_sequences=num_sequences,
            max_context=max_context,
            max_devices=max_devices,
            time_limit_s=time_limit,
            progress=progress,
        )
        write_json_file(result, output)
        g = result.generation
        console.print(
            plan_table(
                result.plan,
                title=_generation_title(result),
                caption=f"bottleneck {g.bottleneck_s * 1e3:.2f} ms per decode step of "
                f"{g.batch_rows} row(s) · prefill "
                f"{g.prefill_s:.3f} s · planned in {result.plan.planner.elapsed_s:.1f} s",
            )
        )
        console.print(_headline(result))
        console.print(
            f"{g.num_sequences} sequence(s) in {g.micro_batches} micro-batch(es) of "
            f"{g.batch_rows} (batch scaling: {g.batch_scaling}) · "
            f"{_optimality(result)}"
        )
        console.print(f"generation plan written to [bold]{output}[/]")

    # `generate serve` and the old `generate-serve` are the one `edgesplit serve` command.
    group.command("serve")(serve_command)
    app.command("generate-serve", hidden=True)(serve_command)  # old spelling, one release
