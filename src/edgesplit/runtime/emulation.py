"""Device and link emulation: one machine standing in for a heterogeneous cluster.

Owns the sender-side link shaper (a token bucket for bandwidth plus a fixed propagation delay
for latency); emulated compute is the executors' (executors.py). Pure Python; no ray, no
torch. docs/architecture.md §6.3 (emulation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LinkShaper", "TokenBucket"]


@dataclass
class TokenBucket:
    """Bytes leave at `rate_bytes_per_s`; up to `burst_bytes` may go at once after an idle spell.

    `reserve(n, now)` books n bytes and returns when their last byte has left the sender. Frames
    larger than the bucket simply wait for the tokens they lack (a frame is never split).
    """

    rate_bytes_per_s: float
    burst_bytes: float
    _tokens: float = field(init=False)
    _updated_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rate_bytes_per_s <= 0:
            raise ValueError(f"rate_bytes_per_s must be > 0, got {self.rate_bytes_per_s}")
        self._tokens = self.burst_bytes

    def reserve(self, num_bytes: float, now: float) -> float:
        if self._updated_s is None:
            self._updated_s = now
        if now > self._updated_s:
            self._tokens = min(
                self.burst_bytes, self._tokens + (now - self._updated_s) * self.rate_bytes_per_s
            )
            self._updated_s = now
        # Tokens may go negative: the debt is the time this frame occupies the link.
        self._tokens -= num_bytes
        done_s = self._updated_s
        if self._tokens < 0:
            done_s = self._updated_s + (-self._tokens) / self.rate_bytes_per_s
            self._tokens = 0.0
            self._updated_s = done_s
        return done_s


@dataclass
class LinkShaper:
    """When a frame sent now may be handed to the receiver: serialization, then latency.

    The cost model's transfer(x) = latency + x / bandwidth (docs/architecture.md §4.1) is what one
    frame sees; back-to-back frames queue behind each other on the bucket, and their latencies
    overlap (a link carries several frames in flight, as a wire does). `bandwidth_bytes_per_s`
    None adds the latency only (`RuntimeConfig.link_shaping = "latency"`: the bandwidth is
    shaped elsewhere, e.g. by the kernel).
    """

    bandwidth_bytes_per_s: float | None
    latency_s: float
    _bucket: TokenBucket | None = field(init=False)

    def __post_init__(self) -> None:
        bandwidth = self.bandwidth_bytes_per_s
        self._bucket = None if bandwidth is None else TokenBucket(bandwidth, 0.0)

    @classmethod
    def of(cls, link: tuple[float | None, float] | None) -> LinkShaper | None:
        """The shaper of `RuntimeConfig.shaped_link`'s answer (None: an unshaped link)."""
        return None if link is None else cls(link[0], link[1])

    def due_s(self, num_bytes: float, now: float) -> float:
        sent_s = now if self._bucket is None else self._bucket.reserve(num_bytes, now)
        return sent_s + self.latency_s
