"""`edgesplit serve`: an OpenAI-compatible HTTP server over a plan (decoders and encoders).

Goes through `api.serving` only. Decoders serve /v1/completions and /v1/chat/completions,
text encoders /v1/embeddings, image classifiers /v1/classify; all /v1/models, /health, /metrics.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from edgesplit import api
from edgesplit.cli.common import console, parse_stages
from edgesplit.core.cluster import load_cluster
from edgesplit.errors import ConfigError

__all__ = ["register", "serve_command"]

MODEL_HELP = "Preset (gpt2-tiny, vit-tiny, ...) or a checkpoint directory."


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)


def serve_command(
    plan: Annotated[
        Path | None, typer.Option(help="Plan (edgesplit plan or generate plan).")
    ] = None,
    cluster: Annotated[Path | None, typer.Option("--cluster", "-c", help="cluster.toml")] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated devices, no plan: a decoder is split by the weights a decode "
            "step reads (the LM head counts, the embedding lookup does not), an encoder evenly."
        ),
    ] = None,
    stages: Annotated[
        str | None, typer.Option(help="Decoders without a plan: DEVICE:START-END,...")
    ] = None,
    profile: Annotated[
        Path | None, typer.Option(help="Encoders with --plan: its profile (else measured).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")
    ] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="EDGESPLIT_SERVE_TOKEN",
            help="Bearer token required on every route but /health (the environment variable "
            "keeps it out of `ps` and shell history).",
        ),
    ] = None,
    max_batch_wait_ms: Annotated[
        float, typer.Option(help="How long an encoder request waits for a fuller batch.")
    ] = 10.0,
    queue_size: Annotated[
        int, typer.Option(help="Requests accepted and unfinished; more are answered 429.")
    ] = 64,
    max_concurrent: Annotated[
        int, typer.Option(help="Decode sequences interleaved on the stages.")
    ] = 8,
    batch_size: Annotated[
        int, typer.Option(help="Encoder micro-batch when the profile is measured here.")
    ] = 8,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="KIND:DEVICE@SECONDS, KIND in kill, stop, crash, cut (repeat; drills).",
        ),
    ] = None,
    served_model_name: Annotated[
        str | None,
        typer.Option(
            help="The model's id in the API (default: the preset, or the checkpoint "
            "directory's name; its path is accepted too)."
        ),
    ] = None,
    standby: Annotated[
        list[str] | None,
        typer.Option("--standby", help="Spare device that takes a failed stage (repeat)."),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="Every stage's weights: float32, bfloat16 or int8 (default: the plan's).",
        ),
    ] = None,
) -> None:
    """Serve a split model over HTTP (OpenAI-compatible routes, /health, /metrics).

    Example:
      edgesplit serve --model checkpoints/smollm2-135m --devices a,b \\
        --token SECRET
    then any OpenAI client: base_url http://127.0.0.1:8000/v1, model smollm2-135m.
    """
    if queue_size < 1 or max_concurrent < 1 or batch_size < 1 or max_batch_wait_ms < 0:
        raise ConfigError(
            "--queue-size, --max-concurrent and --batch-size must be >= 1 and "
            "--max-batch-wait-ms >= 0"
        )
    try:
        from edgesplit.api import serving  # FastAPI and the models load only when serving
    except ModuleNotFoundError as e:  # a board installed without the extra
        raise ConfigError(
            f"`edgesplit serve` needs the serve extra ({e.name} is missing): "
            "pip install 'edgesplit[serve]'"
        ) from e

    options = serving.ServeOptions(
        token=token,
        max_batch_wait_ms=max_batch_wait_ms,
        queue_size=queue_size,
        max_concurrent=max_concurrent,
        batch_size=batch_size,
        faults=tuple(api.parse_fault(f) for f in fault or []),
        standby_devices=tuple(standby or ()),
        served_name=served_model_name,
        dtype=None if dtype is None else api.precision.parse_dtype(dtype),
    )
    names = [d.strip() for d in (devices or "").split(",") if d.strip()]
    loaded_cluster = load_cluster(cluster) if cluster is not None else None
    loaded_plan = None
    if plan is not None:
        from edgesplit.api import generation

        loaded_plan = generation.load_generation_plan(plan)
        if model is not None and serving.model_kind(model) == "text":
            generation.check_plan_model(loaded_plan, model, str(plan))
        model = model or loaded_plan.model
        if loaded_cluster is None:
            raise ConfigError("--plan needs its cluster (-c cluster.toml)")
    elif model is None or not (names or stages):
        raise ConfigError("give --plan P -c C.toml, or --model M --devices a,b (or --stages)")
    assert model is not None
    placed = parse_stages(stages) if stages else None
    if loaded_plan is not None and serving.model_kind(model) == "text":
        placed = api.generation.stages_of(loaded_plan)
        options = replace(options, micro_batches=api.generation.micro_batches_of(loaded_plan))
        loaded_plan = None
    loaded_profile = api.load_profile(profile) if profile is not None else None

    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        typer.secho(
            f"warning: listening on {host} with no --token: anyone who reaches this port can "
            "use the model; set --token or EDGESPLIT_SERVE_TOKEN",
            err=True,
            fg=typer.colors.YELLOW,
        )
    served_as, _aliases = serving.served_names(model, served_model_name)

    def ready(url: str) -> None:
        where = "" if served_as == model else f" (from {model})"
        console.print(
            f"serving model id {served_as}{where} on {url} (/v1, /health, /metrics)",
            markup=False,
            highlight=False,
        )

    serving.serve(
        model,
        host=host,
        port=port,
        devices=names,
        stages=placed,
        plan=loaded_plan,
        cluster=loaded_cluster,
        profile=loaded_profile,
        options=options,
        on_ready=ready,
    )
