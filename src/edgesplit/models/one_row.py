"""The single-row matmul kernel for this host: `linear`, what every float32 stage Linear calls.

Decoding one sequence, every Linear of a stage sees exactly one input row. torch's one-row path
(`F.linear` -> a gemv-like kernel) can be much slower than the same weight multiplied by two rows
on some BLAS/CPU pairs, and faster on others, so the kernel is chosen per host by measurement
(`probe`), once per process, never hard-coded. torch only; never ray, runtime or planners.

[Note: one-row kernel] Measured on the 2-vCPU AMD EPYC VM this project is developed on (torch
2.13 CPU wheel, MKL, one thread), with weights out of cache as in a real decode step:
`F.linear(x, W)` for one row reaches ~10 GB/s, while `W @ [x; 0]^T` — the row and a zero row,
column 0 kept — is ~1.7x faster for 576x576 and 1536x576 weights, ~1.1x for 576x1536, and
1.8x for SmolLM2's 49152x576 LM head (benchmarks/one_row.py, docs/generation.md). The orientation
matters: `F.linear([x; 0], W)` (rows times W^T) is slower than the plain one-row call here.
Both kernels compute the same dot products; only the summation order differs (float32
round-off, ~1e-7 relative).

The choice (`kernel()`): `EDGESPLIT_ONE_ROW_KERNEL=auto|plain|padded` (default auto). `auto`
runs `probe()` when the first stage is built (`route_linears`): both kernels over a rotation
of decoder-MLP-shaped weights (~50 MB, larger than the last-level caches of the boards we
target, so every multiply reads its weight from memory), alternating pass by pass; "padded"
only when the median of the per-pass padded / plain ratios is below `PADDED_BELOW`. The probe
takes ~0.1 s and logs its choice once at INFO.
"""

from __future__ import annotations

import functools
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import torch
from torch import nn

from edgesplit.errors import ConfigError

__all__ = [
    "KERNEL_ENV",
    "PADDED_BELOW",
    "SETTINGS",
    "OneRowLinear",
    "Probe",
    "kernel",
    "linear",
    "measure",
    "probe",
    "route_linears",
    "setting",
]

logger = logging.getLogger(__name__)

Kernel = Literal["plain", "padded"]
Setting = Literal["auto", "plain", "padded"]

KERNEL_ENV: Final = "EDGESPLIT_ONE_ROW_KERNEL"
SETTINGS: Final[tuple[Setting, ...]] = ("auto", "plain", "padded")
PADDED_BELOW: Final = 0.9  # padded must take < 0.9x the plain time to be chosen

# The probe's weights: a decoder MLP's shapes (SmolLM2-135M's hidden 576, MLP 1536; gate and up
# (1536, 576), down (576, 1536)), enough of them (~50 MB) that none stays in a 32 MB cache.
_PROBE_SHAPE: Final = (1536, 576)
_PROBE_MATRICES: Final = 14
_PROBE_REPEATS: Final = 7


def setting() -> Setting:
    """The `EDGESPLIT_ONE_ROW_KERNEL` value (default auto), or a ConfigError naming it."""
    return _parse(os.environ.get(KERNEL_ENV))


@functools.cache
def _parse(raw: str | None) -> Setting:
    value = (raw or "auto").strip().lower() or "auto"
    for valid in SETTINGS:
        if value == valid:
            return valid
    raise ConfigError(
        f"{KERNEL_ENV}={raw!r} is not a one-row kernel setting; "
        f"use one of {', '.join(SETTINGS)} (auto measures both once per process)"
    )


def kernel() -> Kernel:
    """The kernel one-row float32 Linears use in this process (env override, else the probe)."""
    chosen = setting()
    return probe().kernel if chosen == "auto" else chosen


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through this host's one-row kernel when x is one float32 row.

    One row means `x.numel() == x.shape[-1]` (e.g. (C,), (1, C) or (1, 1, C)); any other input,
    or another dtype, is exactly `F.linear`.
    """
    if (
        x.numel() == x.shape[-1]
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.dim() == 2
        and kernel() == "padded"
    ):
        return _padded(x, weight, bias)
    return nn.functional.linear(x, weight, bias)


def _padded(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """W @ [x; 0]^T, column 0: the same result as F.linear up to summation order."""
    row = x.reshape(1, -1)
    two = torch.cat((row, row.new_zeros(row.shape)))
    column = torch.mm(weight, two.t())[:, 0]
    out = column.contiguous() if bias is None else torch.add(bias, column)
    return out.reshape(*x.shape[:-1], weight.shape[0])


class OneRowLinear(nn.Linear):
    """An `nn.Linear` whose forward goes through `linear` (no state of its own).

    `route_linears` swaps a module's class to this one in place: parameters, state_dict keys and
    weight tying stay exactly as they were.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Linear's name
        return linear(input, self.weight, self.bias)


def route_linears(module: nn.Module) -> int:
    """Route every plain `nn.Linear` inside `module` through `linear`; returns how many.

    Checks `EDGESPLIT_ONE_ROW_KERNEL` now (a bad value fails when the stage is built, not at
    its first step), and under `auto` runs the probe now too (once per process): its ~0.1 s is
    paid while the stage loads, not by the first token — nor by the first token after a
    failover, when a standby builds its stage.
    """
    if setting() == "auto":
        probe()
    count = 0
    for sub in module.modules():
        if type(sub) is nn.Linear:
            sub.__class__ = OneRowLinear
            count += 1
    return count


@dataclass(frozen=True)
class Probe:
    """What `probe` measured: seconds per multiply of each kernel (medians) and the choice.

    `ratio` is the median over passes of padded / plain time in the same pass (paired, so a
    load change during the probe hits both); < PADDED_BELOW chooses padded.
    """

    plain_s: float
    padded_s: float
    ratio: float
    kernel: Kernel


@functools.cache
def probe() -> Probe:
    """Time both kernels on cold decoder-shaped weights, once per process; log the choice."""
    plain_s, padded_s, ratio = measure(_PROBE_SHAPE, _PROBE_MATRICES, _PROBE_REPEATS)
    chosen: Kernel = "padded" if ratio < PADDED_BELOW else "plain"
    logger.info(
        "one-row kernel: %s (plain %.1f us, padded %.1f us per %dx%d multiply, ratio %.2f; "
        "%s=plain|padded overrides)",
        chosen,
        plain_s * 1e6,
        padded_s * 1e6,
        *_PROBE_SHAPE,
        ratio,
        KERNEL_ENV,
    )
    return Probe(plain_s, padded_s, ratio, chosen)


@torch.no_grad()
def measure(shape: tuple[int, int], matrices: int, repeats: int) -> tuple[float, float, float]:
    """(plain, padded) median seconds per one-row multiply of a cold weight of `shape`, and the
    median of their per-pass ratios (padded / plain).

    Rotates over `matrices` weights as (O, I) and every other one also as (I, O) (the same
    storage): a decoder MLP's gate, up and down projections. The two kernels alternate pass by
    pass; the first pair of passes warms up.
    """
    out_features, in_features = shape
    storage = torch.full((matrices, out_features * in_features), 0.01)  # cheap, no denormals
    weights = [w.view(out_features, in_features) for w in storage]
    weights += [w.view(in_features, out_features) for w in storage[::2]]
    rows = {n: torch.full((1, n), 0.5) for n in (out_features, in_features)}
    kernels: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]]
    kernels = {"plain": nn.functional.linear, "padded": _padded}
    times: dict[str, list[float]] = {"plain": [], "padded": []}
    for repeat in range(repeats + 1):
        for name, call in kernels.items():
            started = time.perf_counter()
            for weight in weights:
                call(rows[weight.shape[1]], weight, None)
            if repeat:
                times[name].append((time.perf_counter() - started) / len(weights))
    ratios = [b / a for a, b in zip(times["plain"], times["padded"], strict=True)]
    return (
        statistics.median(times["plain"]),
        statistics.median(times["padded"]),
        statistics.median(ratios),
    )
