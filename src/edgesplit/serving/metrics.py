"""Prometheus figures of one server (its own registry: no process-global collectors).

Owns `ServingMetrics`: requests by route and status, queue depth, running sequences, encoder
micro-batch sizes, decode step batch sizes, generated tokens (and tokens/s over a sliding
window), time to first token, time per output token, health. No torch, no runtime.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServingMetrics"]

_LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServingMetrics:
    """Counters and histograms of one app; `render()` is the /metrics body."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = 10.0):
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._window_s = window_s
        self._token_times: deque[float] = deque()
        self._lock = threading.Lock()
        prefix = "edgesplit_serving_"
        self.requests = Counter(
            f"{prefix}requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            f"{prefix}queue_depth", "Requests accepted and not yet running", registry=self.registry
        )
        self.running = Gauge(
            f"{prefix}running_sequences", "Sequences decoding now", registry=self.registry
        )
        self.batch_size = Histogram(
            f"{prefix}batch_size",
            "Rows per encoder micro-batch",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.step_batch_size = Histogram(
            f"{prefix}decode_step_batch_size",
            "Sequences per decode step (engine-reported)",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            f"{prefix}generated_tokens", "Tokens generated", registry=self.registry
        )
        self.tokens_per_s = Gauge(
            f"{prefix}tokens_per_second",
            f"Tokens generated per second over {window_s:g} s",
            registry=self.registry,
        )
        self.ttft = Histogram(
            f"{prefix}time_to_first_token_seconds",
            "Request accepted -> first token",
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.time_per_token = Histogram(
            f"{prefix}time_per_output_token_seconds",
            "Mean gap between a request's tokens",
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.healthy = Gauge(
            f"{prefix}healthy", "1 when every stage can serve", registry=self.registry
        )

    def token(self) -> None:
        now = self._clock()
        self.tokens.inc()
        with self._lock:
            self._token_times.append(now)

    def refresh(self) -> None:
        """Recompute the sliding-window tokens/s (called before rendering)."""
        now = self._clock()
        with self._lock:
            while self._token_times and self._token_times[0] < now - self._window_s:
                self._token_times.popleft()
            count = len(self._token_times)
        self.tokens_per_s.set(count / self._window_s)

    def render(self) -> bytes:
        self.refresh()
        return generate_latest(self.registry)
