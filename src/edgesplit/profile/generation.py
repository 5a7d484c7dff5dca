"""Measure decode and prefill unit times of a decoder on this host (generation profiles).

Owns `measure_generation_units`: per unit, the median wall time of one decode step (one token
after `cache_length` cached tokens) and of a prefill of `prompt_length` tokens, the bytes that
cross a cut after it in each phase, and the KV-cache bytes one token adds to it; and
`measure_decode_batch`: each unit's decode step time with B sequences in one forward pass
(as the runtime's `KvBatch` runs them: a 2-D attention mask, per-row positions) divided by its
time with one, for the planner's batch dimension. Returns core `ModelProfile`s and plain lists
(the planner-side `GenerationProfile` wraps them; runtime never imports planners). torch +
models only; never ray.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.models.build import build_stage, unit_names
from edgesplit.models.kv_stage import kv_bytes_per_token
from edgesplit.models.spec import ModelSpec

__all__ = ["measure_decode_batch", "measure_generation_units"]

TOKEN_BYTES = 8  # an int64 token id


def _timed_pass(units: list[Any], act: dict[str, torch.Tensor], cache: Any) -> list[float]:
    times = []
    for unit in units:
        begin = time.perf_counter()
        act = unit(act, cache)
        times.append(time.perf_counter() - begin)
    return times


@torch.inference_mode()
def measure_generation_units(
    spec: ModelSpec,
    model_name: str,
    *,
    device_kind: str = "host",
    prompt_length: int = 32,
    cache_length: int = 128,
    repeats: int = 5,
) -> tuple[ModelProfile, ModelProfile, list[float]]:
    """(decode profile, prefill profile, KV bytes per token per unit) measured on this host.

    Decode times are for one new token with `cache_length` tokens already cached; the cache is
    cropped back after each repeat so every repeat sees the same length.
    """
    torch.set_num_threads(1)
    names = unit_names(spec)
    stage = build_stage(spec, 0, len(names))
    units = list(stage.units)
    vocab = int(getattr(stage.config, "vocab_size", 256))
    hidden_size = int(getattr(stage.config, "hidden_size", 0) or stage.config.n_embd)
    generator = torch.Generator().manual_seed(0)

    def ids(length: int) -> torch.Tensor:
        return torch.randint(0, vocab, (1, length), generator=generator)

    def positions(start: int, length: int) -> torch.Tensor:
        return torch.arange(start, start + length).unsqueeze(0)

    prefill_runs: list[list[float]] = []
    for _ in range(repeats + 1):  # the first run warms up
        act = {"input_ids": ids(prompt_length), "position_ids": positions(0, prompt_length)}
        prefill_runs.append(_timed_pass(units, act, stage.new_cache()))
    cache = stage.new_cache()
    _timed_pass(
        units, {"input_ids": ids(cache_length), "position_ids": positions(0, cache_length)}, cache
    )
    decode_runs: list[list[float]] = []
    for _ in range(repeats + 1):
        act = {"input_ids": ids(1), "position_ids": positions(cache_length, 1)}
        decode_runs.append(_timed_pass(units, act, cache))
        cache.crop(-1)  # drop the token just added: every repeat sees cache_length
    kv_one_layer = kv_bytes_per_token(spec)
    decode_units: list[UnitProfile] = []
    prefill_units: list[UnitProfile] = []
    kv: list[float] = []
    for index, (name, unit) in enumerate(zip(names, units, strict=True)):
        params = float(sum(p.numel() * p.element_size() for p in unit.parameters()))
        last = index == len(names) - 1
        decode_out = TOKEN_BYTES if last else 4 * hidden_size
        prefill_out = TOKEN_BYTES if last else 4 * hidden_size * prompt_length
        for units_of, runs, out in (
            (decode_units, decode_runs, decode_out),
            (prefill_units, prefill_runs, prefill_out),
        ):
            seconds = statistics.median(run[index] for run in runs[1:])
            units_of.append(
                UnitProfile(
                    name=name, param_bytes=params, output_bytes=out, time_s={device_kind: seconds}
                )
            )
        kv.append(float(kv_one_layer) if name.endswith(".attn") else 0.0)
    common = dict(model=model_name, batch_size=1, source=f"measured on this host ({device_kind})")
    decode = ModelProfile(
        input_bytes=TOKEN_BYTES,
        units=tuple(decode_units),
        notes=f"decode: one token after {cache_length} cached tokens; median of {repeats}",
        **common,  # type: ignore[arg-type]
    )
    prefill = ModelProfile(
        input_bytes=TOKEN_BYTES * prompt_length,
        units=tuple(prefill_units),
        notes=f"prefill of {prompt_length} tokens; median of {repeats}",
        **common,  # type: ignore[arg-type]
    )
    return decode, prefill, kv


@torch.inference_mode()
def measure_decode_batch(
    spec: ModelSpec,
    batch_sizes: Sequence[int] = (2, 4, 8, 16),
    *,
    cache_length: int = 128,
    repeats: int = 5,
) -> list[tuple[int, list[float]]]:
    """[(batch, per-unit step time with `batch` rows / with one row)] measured on this host.

    Every row holds `cache_length` cached tokens; the step carries the 2-D attention mask the
    runtime's batched decode passes, for one row too, so the ratio isolates the batch size.
    """
    torch.set_num_threads(1)
    names = unit_names(spec)
    stage = build_stage(spec, 0, len(names))
    units = list(stage.units)
    vocab = int(getattr(stage.config, "vocab_size", 256))
    generator = torch.Generator().manual_seed(0)

    def unit_times(rows: int) -> list[float]:
        cache = stage.new_cache()
        prompt = torch.randint(0, vocab, (rows, cache_length), generator=generator)
        positions = torch.arange(cache_length).expand(rows, cache_length)
        mask = torch.ones(rows, cache_length, dtype=torch.long)
        _timed_pass(
            units,
            {"input_ids": prompt, "position_ids": positions, "attention_mask": mask},
            cache,
        )
        step_mask = torch.ones(rows, cache_length + 1, dtype=torch.long)
        runs = []
        for _ in range(repeats + 1):  # the first run warms up
            act = {
                "input_ids": torch.randint(0, vocab, (rows, 1), generator=generator),
                "position_ids": torch.full((rows, 1), cache_length),
                "attention_mask": step_mask,
            }
            runs.append(_timed_pass(units, act, cache))
            cache.crop(-1)
        return [statistics.median(run[i] for run in runs[1:]) for i in range(len(units))]

    one = unit_times(1)
    result = []
    for rows in sorted({b for b in batch_sizes if b > 1}):
        times = unit_times(rows)
        result.append((rows, [t / o if o > 0 else 1.0 for t, o in zip(times, one, strict=True)]))
    return result
