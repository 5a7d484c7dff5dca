"""The generation capability: profile, plan and run KV-cached decoding across devices.

Wires planners/generation.py (pure planning) to runtime/generation.py (decode on the one stage
worker, replay)
and models/ (KV stages, tokenizers), the way `api.pipeline` does for batch inference; the CLI
(`edgesplit generate`) and the HTTP endpoint go through here. Holds no logic beyond wiring.

Example:
    >>> from edgesplit.api import generation as gen  # doctest: +SKIP
    >>> report = gen.generate_unplanned("gpt2-tiny", [("a", 0, 5), ("b", 5, 10)], ["Hi"], 8)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgesplit.core.cluster import Cluster
from edgesplit.core.plan import Plan
from edgesplit.core.precision import StageDtype
from edgesplit.core.schema import read_json_file
from edgesplit.errors import ConfigError
from edgesplit.planners.generation import (
    GenerationObjective,
    GenerationPlan,
    GenerationProfile,
    plan_generation,
)

if TYPE_CHECKING:
    from edgesplit.models import ModelSpec
    from edgesplit.runtime.config import RuntimeConfig, ScheduledFault
    from edgesplit.runtime.generation import GenerationReport

__all__ = [
    "DECODER_FAMILIES",
    "GenerationPlan",
    "GenerationProfile",
    "Tokenizer",
    "check_plan_model",
    "context_length",
    "decode_stages",
    "even_stages",
    "generate",
    "load_generation_plan",
    "measure_generation_profile",
    "micro_batches_of",
    "num_sequences_of",
    "num_units",
    "plan_generation",
    "prepare_generation_profile",
    "stages_of",
    "tokenizer_for",
]


logger = logging.getLogger(__name__)

DECODER_FAMILIES = ("gpt2", "llama")  # what generation (and text serving) can decode


@dataclass(frozen=True)
class Tokenizer:
    """Text <-> token ids for a model: its HF tokenizer, or UTF-8 bytes for byte-level models."""

    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    eos_token_id: int | None
    vocab_size: int


def _decoder(model: str) -> ModelSpec:
    """The spec of `model`, which must be a decoder (a ConfigError says what to do if not)."""
    from edgesplit.models import model_spec_from_name

    spec = model_spec_from_name(model)
    if spec.family not in DECODER_FAMILIES:
        raise ConfigError(
            f"'{model}' is a {spec.family} model, not a decoder; generation needs a GPT-2 or "
            "Llama-family model (gpt2-tiny, llama-tiny, a checkpoint such as smollm2-135m); "
            "run encoders and classifiers with `edgesplit run`"
        )
    return spec


def tokenizer_for(model: str) -> Tokenizer:
    """The tokenizer of a decoder's checkpoint directory (tokenizer.json), else bytes when its
    vocabulary is 256."""
    from edgesplit.models.build import _config
    from edgesplit.models.textdata import decode_bytes, encode_bytes

    spec = _decoder(model)
    config = _config(spec)
    vocab = int(config.vocab_size)
    if spec.checkpoint and (Path(spec.checkpoint) / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(spec.checkpoint)
        return Tokenizer(
            encode=lambda text: list(hf(text)["input_ids"]),
            decode=lambda ids: str(hf.decode(ids, skip_special_tokens=True)),
            eos_token_id=hf.eos_token_id,
            vocab_size=vocab,
        )
    if vocab < 256:
        raise ConfigError(f"model '{model}' has {vocab} tokens and no tokenizer; pass token ids")
    if vocab > 256:
        logger.warning(
            "%s: random weights and no tokenizer (a preset, not a checkpoint): text in and out "
            "is bytes and the output is noise; give a checkpoint directory (`make models` "
            "builds checkpoints/smollm2-135m)",
            model,
        )
    return Tokenizer(encode=encode_bytes, decode=decode_bytes, eos_token_id=None, vocab_size=vocab)


def measure_generation_profile(
    model: str,
    *,
    device_kind: str = "host",
    prompt_length: int = 32,
    cache_length: int = 128,
    repeats: int = 5,
    batch_sizes: Sequence[int] = (2, 4, 8, 16),
) -> GenerationProfile:
    """Decode/prefill unit times of `model` on this host, with KV bytes per token per unit and
    each unit's decode step time vs batch size (`batch_sizes`; empty: not measured)."""
    from edgesplit.models import model_spec_from_name
    from edgesplit.planners.generation import DecodeBatchScaling
    from edgesplit.profile.generation import (
        measure_decode_batch,
        measure_generation_units,
    )

    spec = model_spec_from_name(model)
    decode, prefill, kv = measure_generation_units(
        spec,
        model,
        device_kind=device_kind,
        prompt_length=prompt_length,
        cache_length=cache_length,
        repeats=repeats,
    )
    batches = (
        measure_decode_batch(spec, batch_sizes, cache_length=cache_length, repeats=repeats)
        if any(b > 1 for b in batch_sizes)
        else []
    )
    return GenerationProfile(
        model=model,
        decode=decode,
        prefill=prefill,
        prompt_length=prompt_length,
        cache_length=cache_length,
        kv_bytes_per_token=tuple(kv),
        decode_batch=tuple(
            DecodeBatchScaling(batch=b, unit_scale=tuple(scale)) for b, scale in batches
        ),
    )


def load_generation_plan(path: Path | str) -> Plan:
    """A plan file: `edgesplit.generation_plan` (`plan_generation`) or a plain `edgesplit.plan`."""
    path = Path(path)
    try:
        kind = json.loads(path.read_text()).get("kind")
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read plan {path}: {e}") from e
    if kind == GenerationPlan.KIND:
        return read_json_file(GenerationPlan, path).plan
    return read_json_file(Plan, path)


def prepare_generation_profile(profile: GenerationProfile, cluster: Cluster) -> GenerationProfile:
    """Add the cluster's derived kinds ([[kinds]] in cluster.toml) to the decode and prefill
    profiles, as `api.prepare_profile` does for a batch plan (batch scaling is per unit, not per
    kind, so it applies to them unchanged)."""
    from edgesplit.api.pipeline import prepare_profile

    return profile.model_copy(
        update={
            "decode": prepare_profile(profile.decode, cluster),
            "prefill": prepare_profile(profile.prefill, cluster),
        }
    )


def micro_batches_of(plan: Plan) -> int:
    """The decode micro-batch count a generation plan was planned for (0: one per stage)."""
    return int(plan.planner.options.get("micro_batches", 0))


def num_sequences_of(plan: Plan) -> int | None:
    """The sequences a generation plan was planned to decode at once (None: a plain plan)."""
    value = plan.planner.options.get("num_sequences")
    return int(value) if isinstance(value, int | float) and value >= 1 else None


def stages_of(plan: Plan) -> list[tuple[str, int, int]]:
    return [(s.device, s.start, s.end) for s in plan.stages]


def generate(
    model: str,
    stages: Sequence[tuple[str, int, int]],
    prompts: Sequence[str | list[int]],
    max_new_tokens: int,
    *,
    cluster: Cluster | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
    max_concurrent: int = 4,
    micro_batches: int = 0,
    standby_devices: Sequence[str] = (),
    profile: GenerationProfile | None = None,
    objective: GenerationObjective = "tokens_per_s",
    on_token: Callable[[int, int], None] | None = None,
    faults: Sequence[ScheduledFault] = (),
    stop_at_eos: bool = True,
    dtype: StageDtype = "float32",
    runtime: RuntimeConfig | None = None,
) -> GenerationReport:
    """Generate continuations of `prompts` on a real-compute pipeline of `stages`.

    Args:
        model: preset name or checkpoint directory (as in plans).
        stages: (device, start unit, end unit) in order, e.g. `stages_of(plan)`.
        prompts: text (tokenized with the model's tokenizer) or token id lists.
        cluster: links are shaped from it (the driver runs on `cluster.source`); None = unshaped.
        profile: when given with a cluster, a failed stage's device is re-planned away over the
            survivors (`plan_generation`); otherwise a standby takes over, or the stage restarts.
        faults: `ScheduledFault`s (`--fault KIND:DEVICE@S`, `--kill DEVICE@S`).
        micro_batches: decode frames in flight at once (0: one per stage; a generation plan
            records the count it was planned for, `plan.planner.options["micro_batches"]`).
        dtype: every stage's weights (float32, bfloat16, int8; docs/precision.md).
        runtime: runtime knobs (`ray_address`, `placement`, `link_shaping`, timeouts); compute is
            always real here and `standby_devices` is added to it.

    Returns:
        runtime.generation.GenerationReport: per sequence `new_ids` and their `text`.
    """
    from edgesplit.models import unit_names
    from edgesplit.runtime.config import RuntimeConfig
    from edgesplit.runtime.generation import (
        GenerationConfig,
        GenerationPipeline,
        GenerationRequest,
    )

    spec = _decoder(model)
    _check_devices(stages, standby_devices, faults, cluster)
    needs_text = any(isinstance(p, str) for p in prompts)
    try:
        tokenizer: Tokenizer | None = tokenizer_for(model)
    except ConfigError:
        if needs_text:
            raise
        tokenizer = None
    eos = tokenizer.eos_token_id if (tokenizer is not None and stop_at_eos) else None
    context = context_length(model)
    requests = []
    for index, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) and tokenizer else list(prompt)
        if not ids:
            raise ConfigError(f"prompt {index} is empty; give some text (or token ids)")
        if len(ids) + max_new_tokens > context:
            raise ConfigError(
                f"prompt {index} is {len(ids)} tokens and max_new_tokens is {max_new_tokens}: "
                f"{len(ids) + max_new_tokens} tokens exceed the model's context of {context}; "
                "shorten the prompt or lower --max-new-tokens"
            )
        requests.append(
            GenerationRequest(
                prompt_ids=list(ids),
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                seed=seed,
                stop_token_id=eos,
            )
        )
    longest = max((len(r.prompt_ids) for r in requests), default=0) + max_new_tokens
    replanner = None
    if profile is not None and cluster is not None:
        whole = cluster
        profile = prepare_generation_profile(profile, cluster)

        def replanner(survivors: Sequence[str]) -> list[tuple[str, int, int]]:
            keep = set(survivors) | {whole.source}
            reduced = whole.without({d for d in whole.device_names if d not in keep})
            return stages_of(plan_generation(profile, reduced, objective=objective).plan)

    config = GenerationConfig(
        max_context=min(context, max(2048, longest)),
        max_concurrent=max_concurrent,
        micro_batches=micro_batches,
        runtime=(runtime or RuntimeConfig(compute="real")).model_copy(
            update={"compute": "real", "standby_devices": tuple(standby_devices)}
        ),
        dtype=dtype,
    )
    with GenerationPipeline(
        spec,
        stages,
        config,
        num_units=len(unit_names(spec)),
        cluster=cluster,
        replanner=replanner,
    ) as pipeline:
        report = pipeline.generate(requests, on_token=on_token, faults=faults)
    if tokenizer is None:
        return report
    decode = tokenizer.decode
    sequences = [s.model_copy(update={"text": decode(s.new_ids)}) for s in report.sequences]
    return report.model_copy(update={"sequences": sequences})


def context_length(model: str) -> int:
    """Positions the model can attend over (prompt + new tokens), from its config."""
    from edgesplit.models import model_spec_from_name
    from edgesplit.models.build import _config

    config = _config(model_spec_from_name(model))
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _check_devices(
    stages: Sequence[tuple[str, int, int]],
    standby_devices: Sequence[str],
    faults: Sequence[ScheduledFault],
    cluster: Cluster | None,
) -> None:
    """Stage, standby and fault devices agree with each other and with the cluster, if any."""
    from edgesplit.runtime.config import check_run_devices

    devices = [d for d, _, _ in stages]
    check_run_devices(devices, standby_devices, faults)
    if cluster is not None:
        missing = [d for d in [*devices, *standby_devices] if d not in cluster.device_names]
        if missing:
            raise ConfigError(
                f"stages or standbys on {missing}, which the cluster does not have (devices: "
                f"{list(cluster.device_names)}); re-plan for this cluster or use its names"
            )


def decode_stages(model: str, devices: Sequence[str]) -> list[tuple[str, int, int]]:
    """Contiguous unit ranges over `devices` (in order) balancing each stage's decode weights.

    With no profile, a decode step's cost on a CPU is taken as the weights it reads: each unit's
    parameter count, but nothing for "embed" (a table lookup) — the LM head (a vocabulary-wide
    matmul) is a large unit, so an even split by unit count leaves the last stage the slowest
    (SmolLM2-135M, 2 stages: 80.5M vs 54.0M; measured 1.4x) and it bounds tokens/s under
    concurrency. Minimizes the largest stage (`planners.baselines.min_max_cuts`, exact).
    """
    from edgesplit.models import model_spec_from_name
    from edgesplit.models.build import _meta_model
    from edgesplit.models.units import make_units
    from edgesplit.planners.baselines import min_max_cuts

    spec = model_spec_from_name(model)
    _, skeleton = _meta_model(spec)  # the meta device: no weights are read
    units = make_units(skeleton, spec.family)
    k, n = len(devices), len(units)
    if not 1 <= k <= n:
        raise ConfigError(f"need between 1 and {n} devices for '{model}', got {k}")
    cost = [0 if u.unit_name == "embed" else sum(p.numel() for p in u.parameters()) for u in units]
    bounds = min_max_cuts(cost, k)
    return [(d, bounds[i], bounds[i + 1]) for i, d in enumerate(devices)]


def num_units(model: str) -> int:
    """How many units (embed, blocks, head) `model` is cut into."""
    from edgesplit.models import model_spec_from_name, unit_names

    return len(unit_names(model_spec_from_name(model)))


def check_plan_model(plan: Plan, model: str, source: str) -> None:
    """ConfigError when `model` is not cut into the units `plan` (read from `source`) covers:
    a plan made for another model, handed over with --model."""
    units = num_units(model)
    if plan.stages[-1].end != units:
        raise ConfigError(
            f"{source} is a plan for {plan.model} ({plan.stages[-1].end} units) but {model} has "
            f"{units}; re-plan for this model or drop --model"
        )


def even_stages(model: str, devices: Sequence[str]) -> list[tuple[str, int, int]]:
    """Units split as evenly as possible over `devices` in order (no profile needed)."""
    n = num_units(model)
    if not 1 <= len(devices) <= n:
        raise ConfigError(f"need between 1 and {n} devices for '{model}', got {len(devices)}")
    cuts = [round(i * n / len(devices)) for i in range(len(devices) + 1)]
    return [(d, cuts[i], cuts[i + 1]) for i, d in enumerate(devices)]
