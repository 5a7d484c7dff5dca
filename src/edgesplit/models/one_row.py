"""The few-row matmul kernel for this host: `linear`, what every float32 stage Linear calls.

A decode step multiplies each weight by one row per sequence in the step (1 alone, up to 8 in a
batched step). torch's path for so few rows (`F.linear`, gemv/gemm with a tiny M) can be much
slower than the same product computed the other way round, `W @ X^T` (with a zero row added
when X has one row) on some BLAS/CPU pairs, and faster on others, depending on the weight's
shape and the number of rows. So the kernel is chosen per host, per (weight shape, row bucket),
by measurement, never hard-coded. torch only; never ray, runtime or planners.

[Note: one-row kernel] Measured on the 2-vCPU AMD EPYC VM this project is developed on (torch
2.13 CPU wheel, MKL, one thread), with weights out of cache as in a real decode step:
`F.linear(x, W)` for one row reaches ~10 GB/s, while `W @ [x; 0]^T` — the row and a zero row,
column 0 kept — is ~1.7x faster for 576x576 and 1536x576 weights, ~1.1x for 576x1536, and
1.8x for SmolLM2's 49152x576 LM head (benchmarks/one_row.py, docs/generation.md). With 2-8
rows the picture depends on the shape: `W @ X^T` is up to 7x faster for the LM head at 2 rows
but 2x slower for 576x1536 at 4. The orientation matters: `F.linear([x; 0], W)` (rows times
W^T) is slower than the plain one-row call here. Both kernels compute the same dot products;
only the summation order differs (float32 round-off, ~1e-7 relative).

The choice (`kernel_for(shape, rows)`): `EDGESPLIT_ONE_ROW_KERNEL=auto|plain|padded` (default
auto; plain / padded force one kernel for every input of at most `MAX_ROWS` rows). Under `auto`
each (shape, bucket) — buckets 1, 2, 4, 8; r rows use the smallest bucket >= r — is measured
once per process (`choose`): both kernels over weights of that shape too large together for
the last-level cache (a rotation of copies, or the weight itself when it is that large),
alternating pass by pass; "padded" only when the median of the per-pass padded / plain ratios
is below `PADDED_BELOW`. `route_linears` measures a stage's shapes when it is built (1.5-4.3 s
for SmolLM2-135M's five shapes on the VM above, depending on load; once per process) and logs
one INFO line per shape.
"""

from __future__ import annotations

import functools
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import torch
from torch import nn

from edgesplit.errors import ConfigError

__all__ = [
    "KERNEL_ENV",
    "MAX_ROWS",
    "PADDED_BELOW",
    "ROW_BUCKETS",
    "SETTINGS",
    "Choice",
    "OneRowLinear",
    "adopt",
    "choose",
    "kernel_for",
    "linear",
    "measure",
    "measured",
    "route_linears",
    "setting",
    "tune",
]

logger = logging.getLogger(__name__)

Kernel = Literal["plain", "padded"]
Setting = Literal["auto", "plain", "padded"]

KERNEL_ENV: Final = "EDGESPLIT_ONE_ROW_KERNEL"
SETTINGS: Final[tuple[Setting, ...]] = ("auto", "plain", "padded")
PADDED_BELOW: Final = 0.9  # padded must take < 0.9x the plain time to be chosen
ROW_BUCKETS: Final = (1, 2, 4, 8)  # r rows take the choice of the smallest bucket >= r
MAX_ROWS: Final = ROW_BUCKETS[-1]  # more rows: always F.linear (a real gemm)

# A (shape, bucket) is measured over weights of that shape worth this many bytes (out of a
# 32 MB last-level cache), at most this many copies (tiny test models stay cheap to tune).
_COLD_BYTES: Final = 64 << 20
_MAX_COPIES: Final = 64
_REPEATS: Final = 3


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


_BUCKET_OF: Final = tuple(next((b for b in ROW_BUCKETS if b >= r), 0) for r in range(MAX_ROWS + 1))


def _bucket(rows: int) -> int:
    return _BUCKET_OF[rows]


def kernel_for(shape: tuple[int, int], rows: int) -> Kernel:
    """The kernel an input of `rows` rows (<= MAX_ROWS) times a weight of `shape` uses here."""
    chosen = setting()
    if chosen != "auto":
        return chosen
    return choose(shape, _bucket(rows)).kernel


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through this host's kernel when x is a few float32 rows.

    Rows are x's leading dimensions flattened (e.g. (C,) and (1, 1, C) are one row, (4, 1, C)
    four); more than `MAX_ROWS` rows, or another dtype, is exactly `F.linear`.
    """
    if (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.dim() == 2
        and x.numel() <= MAX_ROWS * x.shape[-1]
        and x.numel() > 0
        and kernel_for((weight.shape[0], weight.shape[1]), x.numel() // x.shape[-1]) == "padded"
    ):
        return _padded(x, weight, bias)
    return nn.functional.linear(x, weight, bias)


def _padded(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """W @ X^T, transposed back (a zero row added to a single row): F.linear up to summation
    order."""
    rows = x.reshape(-1, x.shape[-1])
    count = rows.shape[0]
    if count == 1:
        rows = torch.cat((rows, rows.new_zeros(rows.shape)))
    out = torch.mm(weight, rows.t())[:, :count].t().contiguous()  # (count, out_features)
    if bias is not None:
        out = torch.add(out, bias)
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
    its first step), and under `auto` measures the stage's weight shapes now (`tune`, once per
    shape and process): that time is paid while the stage loads, not by the first token — nor by
    the first token after a failover, when a standby builds its stage. A tied LM head (a unit
    holding `tied_embedding`, models/units.py) calls `linear` itself; its shape is tuned too.
    """
    mode = setting()
    count = 0
    weights: dict[tuple[int, int], torch.Tensor] = {}
    for sub in module.modules():
        if type(sub) is nn.Linear:
            sub.__class__ = OneRowLinear
            count += 1
        tied = getattr(sub, "tied_embedding", None)
        source = sub if isinstance(sub, nn.Linear) else tied
        weight = getattr(source, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            weights.setdefault((weight.shape[0], weight.shape[1]), weight)
    if mode == "auto":
        tune(weights)
    return count


@dataclass(frozen=True)
class Choice:
    """What `choose` measured for one (shape, bucket): seconds per multiply of each kernel
    (medians), the median of the per-pass padded / plain ratios (paired, so a load change during
    the measurement hits both) and the kernel it takes (padded when ratio < PADDED_BELOW)."""

    shape: tuple[int, int]
    rows: int
    plain_s: float
    padded_s: float
    ratio: float
    kernel: Kernel


_MEASURED: dict[tuple[tuple[int, int], int], Choice] = {}


def choose(shape: tuple[int, int], rows: int, weight: torch.Tensor | None = None) -> Choice:
    """The kernel for `rows` (a bucket) times a weight of `shape`, measured once per process.

    `weight` (of that shape) is timed itself when it alone is too large for the cache;
    otherwise copies of the shape are (see `measure`).
    """
    key = (shape, _bucket(rows))
    found = _MEASURED.get(key)
    if found is None:
        plain_s, padded_s, ratio = measure(shape, key[1], weight)
        kernel: Kernel = "padded" if ratio < PADDED_BELOW else "plain"
        found = _MEASURED[key] = Choice(shape, key[1], plain_s, padded_s, ratio, kernel)
    return found


def measured() -> list[Choice]:
    """Every (shape, bucket) measured in this process so far, in measuring order."""
    return list(_MEASURED.values())


def adopt(choices: Iterable[Mapping[str, Any]]) -> int:
    """Take choices an earlier process measured on this same device (`Choice` fields as plain
    data, e.g. a restarted stage's: see `StageSpec.kernels`) for (shape, bucket)s not measured
    here yet; returns how many were new."""
    new = 0
    for data in choices:
        choice = Choice(**{**data, "shape": tuple(data["shape"])})
        key = (choice.shape, _bucket(choice.rows))
        if key not in _MEASURED and choice.kernel in ("plain", "padded"):
            _MEASURED[key] = choice
            new += 1
    return new


def tune(weights: Mapping[tuple[int, int], torch.Tensor | None]) -> list[Choice]:
    """`choose` every bucket of every shape (the stage's own weight passed along, or None to
    time copies of the shape); one INFO line per newly measured shape."""
    choices = []
    for shape, weight in weights.items():
        fresh = any((shape, b) not in _MEASURED for b in ROW_BUCKETS)
        started = time.perf_counter()
        row = [choose(shape, b, weight) for b in ROW_BUCKETS]
        choices += row
        if fresh:
            logger.info(
                "few-row kernel for %dx%d weights (rows %s): %s (%.2f s; %s=plain|padded "
                "overrides)",
                *shape,
                "/".join(str(c.rows) for c in row),
                " ".join(f"{c.kernel}({c.ratio:.2f})" for c in row),
                time.perf_counter() - started,
                KERNEL_ENV,
            )
    return choices


@torch.no_grad()
def measure(
    shape: tuple[int, int], rows: int, weight: torch.Tensor | None = None, repeats: int = _REPEATS
) -> tuple[float, float, float]:
    """(plain, padded) median seconds per multiply of `rows` rows by a cold weight of `shape`,
    and the median of their per-pass ratios (padded / plain).

    The weights: `weight` itself when it alone exceeds the cold size, else up to `_MAX_COPIES`
    cheap copies of the shape (together `_COLD_BYTES`, so each multiply reads its weight from
    memory as in a decode step). The two kernels alternate pass by pass; the first pair of
    passes warms up.
    """
    out_features, in_features = shape
    size = out_features * in_features * 4
    if weight is not None and size >= _COLD_BYTES // 2:
        weights = [weight.detach()]
    else:
        copies = max(1, min(_MAX_COPIES, -(-_COLD_BYTES // size)))
        storage = torch.full((copies, out_features * in_features), 0.01)  # cheap, no denormals
        weights = [w.view(out_features, in_features) for w in storage]
    x = torch.full((rows, in_features), 0.5)
    kernels: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]]
    kernels = {"plain": nn.functional.linear, "padded": _padded}
    times: dict[str, list[float]] = {"plain": [], "padded": []}
    for repeat in range(repeats + 1):
        for name, call in kernels.items():
            started = time.perf_counter()
            for w in weights:
                call(x, w, None)
            if repeat:
                times[name].append((time.perf_counter() - started) / len(weights))
    ratios = [b / a for a, b in zip(times["plain"], times["padded"], strict=True)]
    return (
        statistics.median(times["plain"]),
        statistics.median(times["padded"]),
        statistics.median(ratios),
    )
