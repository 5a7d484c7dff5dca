"""Prometheus text exposition of a running pipeline (`edgesplit run --metrics-port`).

Owns `RunMetrics`: its own registry (no global state), served on 127.0.0.1 (or the given host)
while a run lasts. Imports prometheus_client only.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import start_http_server

__all__ = ["RunMetrics"]


class RunMetrics:
    """Counters and gauges of one run; `serve(port)` exposes them as Prometheus text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.submitted = Counter(
            "edgesplit_requests_submitted", "micro-batches accepted", registry=self.registry
        )
        self.completed = Counter(
            "edgesplit_requests_completed", "micro-batches answered", registry=self.registry
        )
        self.replayed = Counter(
            "edgesplit_requests_replayed",
            "micro-batches re-sent after a failure",
            registry=self.registry,
        )
        self.failures = Counter(
            "edgesplit_failures", "devices declared failed", ["cause"], registry=self.registry
        )
        self.in_flight = Gauge(
            "edgesplit_in_flight", "accepted, not yet answered", registry=self.registry
        )
        self.throughput = Gauge(
            "edgesplit_throughput_per_s", "samples per second (recent)", registry=self.registry
        )
        self.latency = Gauge(
            "edgesplit_latency_seconds_last", "latency of the last answer", registry=self.registry
        )
        self.stages = Gauge(
            "edgesplit_stages", "stages in the current plan", registry=self.registry
        )
        self._server: Any = None

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        self._server = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            server, _thread = self._server
            server.shutdown()
            self._server = None
