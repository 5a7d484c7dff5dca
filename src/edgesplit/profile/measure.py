"""Measure every unit of a model on this host and return a ModelProfile.

Each unit runs on the real activation the previous unit produced (one example micro-batch, the
same the runtime sends). Per unit:
- `time_s`: median wall time of `repeats` runs after `warmup` untimed runs;
- `cpu_time_s`: median CPU time of the same runs (`time.thread_time` with one intra-op thread,
  where the calling thread does all the work; `time.process_time` with more);
- `param_bytes`: the unit's weights (a tied embedding counts for both embed and head units);
- `output_bytes`: what crosses a cut after the unit (`models.units.crossing`: hidden state plus
  any attention mask / position ids that travel);
- `flops`: torch's FlopCounterMode (matmuls, convolutions and CPU sdpa attention);
- `peak_memory_bytes`: an estimate, weights + input + output + the largest intermediate tensor
  seen by forward hooks (torch's CPU allocator exposes no true peak).

With `dtypes` beyond float32 (`edgesplit profile --dtype float32,bfloat16,int8`) every unit is
measured again with its weights converted by `models.precision.apply_dtype` (one unit at a time,
on the same activations cast to the dtype's compute type), and the unit's `by_dtype` records that
dtype's weight bytes and times ([Note: per-dtype figures] in core/profile.py). The float32
figures stay the profile's own; `output_bytes` is what float32 sends and does not change.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from edgesplit.core.precision import StageDtype
from edgesplit.core.profile import ModelProfile, UnitDtypeProfile, UnitProfile
from edgesplit.errors import ConfigError
from edgesplit.models.build import build_model, example_input
from edgesplit.models.precision import apply_dtype, compute_dtype, weight_bytes
from edgesplit.models.spec import ModelSpec, default_seq_len
from edgesplit.models.units import Activation, Unit, crossing, make_units
from edgesplit.profile.host import host_device_kind

__all__ = ["Progress", "activation_bytes", "count_flops", "measure_unit", "profile_model"]

Progress = Callable[[int, int, str], None]
"""progress(done_units, total_units, current_unit_name)"""


def activation_bytes(act: Activation) -> int:
    return sum(t.numel() * t.element_size() for t in act.values())


def _param_bytes(module: nn.Module) -> int:
    return weight_bytes(module)


def _sdpa_cpu_flops(query: Any, key: Any, value: Any, *_: Any, **__: Any) -> int:
    return int(sdpa_flop_count(query, key, value))


# torch counts sdpa's CUDA kernels but not the CPU one; count it the same way.
_CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def count_flops(unit: nn.Module, act: Activation) -> float:
    """Floating-point operations of one forward pass (a multiply-add counts as 2)."""
    with FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
        unit(act)
    return float(counter.get_total_flops())


def _largest_intermediate(unit: nn.Module, act: Activation) -> int:
    largest = 0

    def hook(_: nn.Module, __: object, output: object) -> None:
        nonlocal largest
        tensors = output if isinstance(output, tuple) else (output,)
        for t in tensors:
            if isinstance(t, torch.Tensor):
                largest = max(largest, t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in unit.modules() if m is not unit]
    try:
        unit(act)
    finally:
        for handle in handles:
            handle.remove()
    return largest


def _timed(
    unit: nn.Module, act: Activation, *, repeats: int, warmup: int, num_threads: int
) -> tuple[float, float, Activation]:
    """Median wall and CPU seconds of `unit(act)`, and its output."""
    clock = time.thread_time if num_threads == 1 else time.process_time
    out = act
    for _ in range(warmup):
        unit(act)
    wall, cpu = [], []
    for _ in range(repeats):
        started_wall, started_cpu = time.perf_counter(), clock()
        out = unit(act)
        cpu.append(clock() - started_cpu)
        wall.append(time.perf_counter() - started_wall)
    return statistics.median(wall), statistics.median(cpu), out


@torch.no_grad()
def measure_unit(
    unit: Unit, act: Activation, *, repeats: int, warmup: int, device_kind: str, num_threads: int
) -> tuple[UnitProfile, Activation]:
    """Profile one unit on `act`; returns its profile and its full output (for the next unit)."""
    wall, cpu, out = _timed(unit, act, repeats=repeats, warmup=warmup, num_threads=num_threads)
    params = _param_bytes(unit)
    sent = activation_bytes(crossing(out))
    peak = params + activation_bytes(act) + activation_bytes(out) + _largest_intermediate(unit, act)
    profile = UnitProfile(
        name=unit.unit_name,
        param_bytes=float(params),
        output_bytes=float(sent),
        flops=count_flops(unit, act),
        time_s={device_kind: wall},
        cpu_time_s={device_kind: cpu},
        peak_memory_bytes=float(peak),
    )
    return profile, out


@torch.no_grad()
def _measure_dtype(
    unit: Unit,
    act: Activation,
    dtype: StageDtype,
    *,
    repeats: int,
    warmup: int,
    kind: str,
    num_threads: int,
) -> UnitDtypeProfile:
    """A copy of `unit` converted to `dtype`, timed on `act` (cast to the compute dtype)."""
    converted = apply_dtype(copy.deepcopy(unit), dtype)
    inner = compute_dtype(dtype)
    cast = {k: v.to(inner) if v.is_floating_point() else v for k, v in act.items()}
    wall, cpu, _ = _timed(converted, cast, repeats=repeats, warmup=warmup, num_threads=num_threads)
    return UnitDtypeProfile(
        param_bytes=float(weight_bytes(converted)), time_s={kind: wall}, cpu_time_s={kind: cpu}
    )


def profile_model(
    spec: ModelSpec,
    batch_size: int,
    *,
    repeats: int = 5,
    warmup: int = 2,
    num_threads: int = 1,
    device_kind: str | None = None,
    progress: Progress | None = None,
    seq_len: int | None = None,
    dtypes: Sequence[StageDtype] = ("float32",),
) -> ModelProfile:
    """Profile `spec` at micro-batch `batch_size` on this host (see the module docstring).

    `seq_len` (text models) defaults to `models.spec.default_seq_len`, the length the runtime's
    example requests have. `dtypes` other than float32 add per-dtype figures (`by_dtype`);
    float32 is always measured (it is the profile's own dtype).
    """
    if batch_size < 1 or repeats < 1 or warmup < 0 or num_threads < 1:
        raise ConfigError(
            "batch_size, repeats and threads must be >= 1 and warmup >= 0 (got batch_size="
            f"{batch_size}, repeats={repeats}, threads={num_threads}, warmup={warmup})"
        )
    if seq_len is not None and seq_len < 1:
        raise ConfigError(f"seq_len must be >= 1 (got {seq_len})")
    others = [d for d in dict.fromkeys(dtypes) if d != "float32"]
    kind = device_kind or host_device_kind()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        units = make_units(build_model(spec), spec.family)

        act = example_input(spec, batch_size, seq_len=seq_len)
        input_bytes = activation_bytes(act)
        profiles = []
        for index, unit in enumerate(units):
            if progress:
                progress(index, len(units), unit.unit_name)
            profile, out = measure_unit(
                unit,
                act,
                repeats=repeats,
                warmup=warmup,
                device_kind=kind,
                num_threads=num_threads,
            )
            extra = {
                dtype: _measure_dtype(
                    unit,
                    act,
                    dtype,
                    repeats=repeats,
                    warmup=warmup,
                    kind=kind,
                    num_threads=num_threads,
                )
                for dtype in others
            }
            if extra:
                profile = profile.model_copy(update={"by_dtype": extra})
            profiles.append(profile)
            act = out
        if progress:
            progress(len(units), len(units), "done")
    finally:
        torch.set_num_threads(previous_threads)
    notes = "" if spec.family in ("vit", "deit") else f"seq_len={seq_len or default_seq_len(spec)}"
    return ModelProfile(
        model=spec.checkpoint or spec.preset,
        batch_size=batch_size,
        dtype="float32",
        input_bytes=float(input_bytes),
        units=tuple(profiles),
        source=(
            f"edgesplit profile on {kind}: {num_threads} thread(s), median of {repeats} runs "
            f"after {warmup} warm-up"
        ),
        notes=notes,
    )
