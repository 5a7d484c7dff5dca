"""The small interface between the HTTP front end and whatever runs the model.

Owns the engine protocols the front end talks to — `DecodeEngine` (submit a sequence, stream its
tokens into a `TokenSink`, abort it, health) and `BatchEngine` (run one micro-batch of encoder
inputs, health) — and the plain data they exchange. `api.serving` wires them to the runtime's
generation and batch drivers; tests wire fakes. No torch, no runtime, no models here.

[Note: engine threads] Engines call sinks and `done` callbacks from their own threads; the front
end hands every call over to its event loop (`loop.call_soon_threadsafe`), so an engine never
blocks on HTTP and the event loop never blocks on an engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

__all__ = [
    "Arrays",
    "BatchDone",
    "BatchEngine",
    "DecodeEngine",
    "DecodeRequest",
    "EngineHealth",
    "EngineStats",
    "FinishReason",
    "TokenSink",
]

Arrays = dict[str, np.ndarray]
FinishReason = Literal["stop", "length", "abort", "error"]
BatchDone = Callable[[Arrays | None, str], None]  # (outputs, "") or (None, error message)


@dataclass(frozen=True)
class DecodeRequest:
    """One sequence to continue. `request_id` is the front end's; engines map it to theirs.

    `temperature` is 0 (greedy) or a value the front end has checked to be numerically safe.
    """

    request_id: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    stop_token_ids: frozenset[int] = frozenset()


class TokenSink(Protocol):
    """Where an engine delivers one request's output (from any thread; see [Note: engine
    threads]). `finish` is called exactly once, after the last `token`."""

    def token(self, token_id: int) -> None: ...

    def finish(self, reason: FinishReason, detail: str = "") -> None: ...


@dataclass(frozen=True)
class EngineHealth:
    """Whether every stage can serve now; `detail` names what is broken when not."""

    ok: bool
    detail: str = ""
    stages: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineStats:
    """Counts for /metrics: sequences decoding now, waiting to start, and per-step batch sizes
    observed since the previous call (the engine forgets them once read)."""

    running: int = 0
    waiting: int = 0
    step_batch_sizes: tuple[int, ...] = field(default_factory=tuple)


class DecodeEngine(Protocol):
    """A decoder behind the front end (continuous batching is the engine's business)."""

    def submit(self, request: DecodeRequest, sink: TokenSink) -> None:
        """Start decoding `request` (returns at once; output goes to `sink`)."""
        ...

    def abort(self, request_id: str) -> None:
        """Stop `request_id` now and free its caches; its sink gets `finish("abort")` unless it
        had finished already. Unknown ids are ignored."""
        ...

    def health(self) -> EngineHealth: ...

    def stats(self) -> EngineStats: ...


class BatchEngine(Protocol):
    """An encoder pipeline: one call per micro-batch of at most `max_batch` rows."""

    @property
    def max_batch(self) -> int: ...

    @property
    def max_in_flight(self) -> int:
        """Micro-batches worth having in flight at once (one per pipeline stage)."""
        ...

    def submit(self, inputs: Mapping[str, np.ndarray], done: BatchDone) -> None:
        """Run one micro-batch (rows along axis 0); `done` gets the outputs, rows in order."""
        ...

    def health(self) -> EngineHealth: ...


def stack_rows(items: Sequence[Mapping[str, np.ndarray]], pad_axis_1: bool) -> Arrays:
    """Concatenate one-row inputs along axis 0, right-padding axis 1 with zeros when asked
    (token ids and attention masks of different lengths; a zero mask hides the padding)."""
    keys = list(items[0])
    out: Arrays = {}
    for key in keys:
        arrays = [np.asarray(item[key]) for item in items]
        if pad_axis_1 and arrays[0].ndim >= 2:
            width = max(a.shape[1] for a in arrays)
            arrays = [
                np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2))
                for a in arrays
            ]
        out[key] = np.concatenate(arrays, axis=0)
    return out
