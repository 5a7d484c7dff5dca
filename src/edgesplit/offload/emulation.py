"""Application-level link emulation: bandwidth traces and a token-bucket shaper.

Owns piecewise-constant bandwidth traces (steady, step, random walk, Wi-Fi-like, LTE-like) and
a token bucket that says when an upload of n bytes started at time t finishes. Pure (numpy,
stdlib): time is a number you pass in, so the same code runs against the real clock (the client
sleeps until the finish time) or a virtual one (the benchmark adds it up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = ["BandwidthTrace", "TokenBucket", "TraceName", "make_trace"]

TraceName = Literal["steady", "step", "random_walk", "wifi", "lte"]


@dataclass(frozen=True, slots=True)
class BandwidthTrace:
    """Rate `rates_bytes_per_s[i]` holds on [i*step_s, (i+1)*step_s); the trace repeats."""

    name: str
    step_s: float
    rates_bytes_per_s: np.ndarray
    _cumulative: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.step_s <= 0 or len(self.rates_bytes_per_s) == 0:
            raise ValueError("a trace needs step_s > 0 and at least one rate")
        if (self.rates_bytes_per_s < 0).any() or self.rates_bytes_per_s.sum() <= 0:
            raise ValueError("trace rates must be >= 0 and not all zero")
        cumulative = np.concatenate([[0.0], np.cumsum(self.rates_bytes_per_s * self.step_s)])
        object.__setattr__(self, "_cumulative", cumulative)

    @property
    def period_s(self) -> float:
        return self.step_s * len(self.rates_bytes_per_s)

    def rate_at(self, t_s: float) -> float:
        i = math.floor(t_s / self.step_s) % len(self.rates_bytes_per_s)
        return float(self.rates_bytes_per_s[i])

    def bytes_between(self, start_s: float, end_s: float) -> float:
        """Bytes the link can carry in [start_s, end_s)."""
        return self._integral(end_s) - self._integral(start_s)

    def _integral(self, t_s: float) -> float:
        periods, rest = divmod(t_s, self.period_s)
        i = int(rest // self.step_s)
        within = (
            self._cumulative[i]
            + (rest - i * self.step_s)
            * self.rates_bytes_per_s[min(i, len(self.rates_bytes_per_s) - 1)]
        )
        return float(periods * self._cumulative[-1] + within)

    def time_to_carry(self, start_s: float, num_bytes: float) -> float:
        """The time at which `num_bytes` sent from `start_s` have all been carried."""
        if num_bytes <= 0:
            return start_s
        target = self._integral(start_s) + num_bytes
        total = float(self._cumulative[-1])
        periods, rest = divmod(target, total)
        # first step whose cumulative end reaches `rest`
        i = int(np.searchsorted(self._cumulative, rest, side="left"))
        i = max(1, min(i, len(self._cumulative) - 1))
        rate = float(self.rates_bytes_per_s[i - 1])
        offset = 0.0 if rate <= 0 else (rest - float(self._cumulative[i - 1])) / rate
        return periods * self.period_s + (i - 1) * self.step_s + max(0.0, offset)

    def mean_rate_bytes_per_s(self) -> float:
        return float(self.rates_bytes_per_s.mean())


@dataclass(slots=True)
class TokenBucket:
    """Token bucket at the sender: tokens accrue at the trace rate up to `burst_bytes`.

    An upload takes the tokens in the bucket at once and then waits for the trace to supply the
    rest; uploads are serialised (one at a time), as on a single radio.
    """

    trace: BandwidthTrace
    burst_bytes: float = 1500.0
    _tokens: float = 0.0
    _last_s: float = 0.0

    def transmit(self, num_bytes: float, start_s: float) -> float:
        """Return the finish time of an upload of `num_bytes` that is ready at `start_s`."""
        start_s = max(start_s, self._last_s)  # the previous upload holds the link until done
        tokens = min(
            self.burst_bytes, self._tokens + self.trace.bytes_between(self._last_s, start_s)
        )
        if num_bytes <= tokens:
            self._tokens, self._last_s = tokens - num_bytes, start_s
            return start_s
        finish = self.trace.time_to_carry(start_s, num_bytes - tokens)
        self._tokens, self._last_s = 0.0, finish
        return finish


def make_trace(
    name: TraceName,
    mean_bytes_per_s: float,
    *,
    duration_s: float = 120.0,
    step_s: float = 0.05,
    seed: int = 0,
) -> BandwidthTrace:
    """Build a named trace whose long-run mean is about `mean_bytes_per_s`.

    steady: constant. step: alternates 1.6x and 0.4x the mean every 10 s. random_walk: a
    mean-reverting walk of the log-rate (sigma 0.15 per step). wifi: near the mean with small
    jitter and short deep fades (5-15 % of the mean for 0.1-0.5 s, about every 4 s), as
    interference and rate adaptation produce. lte: a slow 3-state Markov chain (good/fair/poor =
    1.7/0.8/0.25x, dwell ~3 s) times fast log-normal fading (sigma 0.3), as cell load and
    signal strength change.
    """
    rng = np.random.default_rng(seed)
    n = round(duration_s / step_s)
    if name == "steady":
        rates = np.ones(n)
    elif name == "step":
        block = round(10.0 / step_s)
        rates = np.where((np.arange(n) // block) % 2 == 0, 1.6, 0.4)
    elif name == "random_walk":
        log_rate = np.zeros(n)
        for i in range(1, n):
            log_rate[i] = 0.97 * log_rate[i - 1] + rng.normal(0.0, 0.15)
        rates = np.exp(log_rate)
    elif name == "wifi":
        rates = np.exp(rng.normal(0.0, 0.1, n))
        i = 0
        while i < n:
            i += int(rng.exponential(4.0 / step_s))
            length = int(rng.uniform(0.1, 0.5) / step_s)
            rates[i : i + length] = rng.uniform(0.05, 0.15)
            i += length
    elif name == "lte":
        levels = np.array([1.7, 0.8, 0.25])
        state, rates = 0, np.empty(n)
        for i in range(n):
            if rng.random() < step_s / 3.0:
                state = int(rng.integers(3))
            rates[i] = levels[state]
        rates *= np.exp(rng.normal(0.0, 0.3, n))
    else:
        raise ValueError(f"unknown trace {name!r}")
    rates = rates / rates.mean() * mean_bytes_per_s
    return BandwidthTrace(name=name, step_s=step_s, rates_bytes_per_s=rates)
