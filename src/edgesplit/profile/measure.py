"""Measure every unit of a model on this host and write a ModelProfile.

Per unit: median wall time and single-thread CPU time over `repeats` runs after `warmup`, weight
bytes, output bytes (what crosses a cut after the unit), FLOPs (torch's FlopCounterMode), and a
peak-memory estimate (weights + input + output + the largest intermediate tensor seen by forward
hooks; torch's CPU allocator exposes no true peak). Torch is used here, never in core/planners.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.errors import ConfigError
from edgesplit.models.build import build_model, example_input
from edgesplit.models.spec import ModelSpec
from edgesplit.models.units import Activation, make_units
from edgesplit.profile.host import host_device_kind

__all__ = ["activation_bytes", "profile_model"]

Progress = Callable[[int, int, str], None]


def activation_bytes(act: Activation) -> int:
    return sum(t.numel() * t.element_size() for t in act.values())


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _largest_intermediate(unit: nn.Module, act: Activation) -> int:
    largest = 0

    def hook(_: nn.Module, __: object, output: object) -> None:
        nonlocal largest
        tensors = output if isinstance(output, tuple) else (output,)
        for t in tensors:
            if isinstance(t, torch.Tensor):
                largest = max(largest, t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in unit.modules()]
    try:
        unit(act)
    finally:
        for handle in handles:
            handle.remove()
    return largest


@torch.no_grad()
def profile_model(
    spec: ModelSpec,
    batch_size: int,
    *,
    repeats: int = 5,
    warmup: int = 2,
    num_threads: int = 1,
    device_kind: str | None = None,
    progress: Progress | None = None,
) -> ModelProfile:
    """Profile `spec` at micro-batch `batch_size`; see the module docstring for what is measured."""
    if batch_size < 1 or repeats < 1 or warmup < 0 or num_threads < 1:
        raise ConfigError(
            f"batch_size, repeats and threads must be >= 1 and warmup >= 0 (got {batch_size}, "
            f"{repeats}, {num_threads}, {warmup})"
        )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        kind = device_kind or host_device_kind()
        model = build_model(spec)
        units = make_units(model, spec.family)
        act = example_input(spec, batch_size)
        input_bytes = activation_bytes(act)
        profiles = []
        for index, unit in enumerate(units):
            if progress:
                progress(index, len(units), unit.unit_name)
            for _ in range(warmup):
                unit(act)
            wall, cpu = [], []
            for _ in range(repeats):
                started_wall, started_cpu = time.perf_counter(), time.thread_time()
                out = unit(act)
                cpu.append(time.thread_time() - started_cpu)
                wall.append(time.perf_counter() - started_wall)
            with FlopCounterMode(display=False) as counter:
                out = unit(act)
            params = _param_bytes(unit)
            peak = params + activation_bytes(act) + activation_bytes(out)
            peak += _largest_intermediate(unit, act)
            profiles.append(
                UnitProfile(
                    name=unit.unit_name,
                    param_bytes=float(params),
                    output_bytes=float(activation_bytes(out)),
                    flops=float(counter.get_total_flops()),
                    time_s={kind: statistics.median(wall)},
                    cpu_time_s={kind: statistics.median(cpu)},
                    peak_memory_bytes=float(peak),
                )
            )
            act = out
        if progress:
            progress(len(units), len(units), "done")
    finally:
        torch.set_num_threads(previous_threads)
    return ModelProfile(
        model=spec.checkpoint or spec.preset,
        batch_size=batch_size,
        dtype="float32",
        input_bytes=float(input_bytes),
        units=tuple(profiles),
        source=f"edgesplit profile on {kind}, {num_threads} thread(s), median of {repeats}",
    )
