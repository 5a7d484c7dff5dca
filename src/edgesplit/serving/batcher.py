"""Dynamic micro-batching of encoder requests in front of a `BatchEngine`.

Owns `MicroBatcher`: rows queue on the event loop; a batch leaves when it holds the engine's
`max_batch` rows, or when its oldest row has waited `max_wait_s` and fewer than the engine's
`max_in_flight` batches are in flight (while every stage is busy, rows wait and batches grow,
as vLLM's scheduler keeps one batch per pipeline stage); the engine's answer is split back into
rows. Accepted-but-unanswered rows are bounded (`QueueFullError` -> HTTP 429); a row
whose client went away before its batch left is dropped from the batch. No torch, no runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from edgesplit.serving.engine import Arrays, BatchEngine, stack_rows

__all__ = ["BatchFailedError", "MicroBatcher", "QueueFullError"]


class QueueFullError(Exception):
    """More rows are waiting or in flight than the server accepts (answer 429)."""


class BatchFailedError(Exception):
    """The engine answered a micro-batch with an error (answer 503 for its rows)."""


@dataclass
class _Row:
    inputs: Mapping[str, np.ndarray]
    future: asyncio.Future[Arrays]


class MicroBatcher:
    """Collects one-row requests into micro-batches for `engine` (see module docstring).

    Args:
        engine: runs a micro-batch; its `max_batch` caps the rows per batch.
        max_wait_s: how long the first row of a batch may wait for company.
        max_pending: rows accepted and not yet answered (queued or in flight).
        pad_tokens: right-pad axis 1 (token inputs of different lengths).
        on_batch: told each batch's row count (metrics).
    """

    def __init__(
        self,
        engine: BatchEngine,
        *,
        max_wait_s: float,
        max_pending: int,
        pad_tokens: bool,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_wait_s = max_wait_s
        self.max_pending = max_pending
        self.pad_tokens = pad_tokens
        self.on_batch = on_batch
        self._queue: deque[_Row] = deque()
        self._pending = 0
        self._in_flight = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for row in self._queue:
            if not row.future.done():
                row.future.set_exception(BatchFailedError("the server is shutting down"))
        self._queue.clear()

    async def run(self, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """One row (axis 0 of length 1) through the engine; its output rows, axis 0 kept."""
        if self._pending >= self.max_pending:
            raise QueueFullError(
                f"{self._pending} requests are queued or running (the limit is "
                f"{self.max_pending}); retry later"
            )
        if self._wake is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._queue.append(_Row(inputs, future))
        self._pending += 1
        self._wake.set()
        try:
            return await future
        finally:
            self._pending -= 1

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._live_rows():
                self._wake.clear()
                await self._wake.wait()
            deadline = loop.time() + self.max_wait_s
            while self._live_rows() < self.engine.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0 and self._in_flight < max(1, self.engine.max_in_flight):
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):  # a row or a finished batch wakes us
                    await asyncio.wait_for(self._wake.wait(), max(remaining, 0.001))
            rows: list[_Row] = []
            while self._queue and len(rows) < self.engine.max_batch:
                row = self._queue.popleft()
                if not row.future.done():  # a cancelled row (client gone) is dropped here
                    rows.append(row)
            if rows:
                self._submit(rows, loop)

    def _live_rows(self) -> int:
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()
        return sum(1 for r in self._queue if not r.future.done())

    def _submit(self, rows: list[_Row], loop: asyncio.AbstractEventLoop) -> None:
        if self.on_batch is not None:
            self.on_batch(len(rows))
        batch = stack_rows([r.inputs for r in rows], self.pad_tokens)
        self._in_flight += 1

        def deliver(outputs: Arrays | None, error: str) -> None:
            self._in_flight -= 1
            if self._wake is not None:
                self._wake.set()
            for index, row in enumerate(rows):
                if row.future.done():
                    continue  # its client went away meanwhile
                if outputs is None:
                    row.future.set_exception(BatchFailedError(error or "the pipeline failed"))
                else:
                    row.future.set_result({k: v[index : index + 1] for k, v in outputs.items()})

        def done(outputs: Arrays | None, error: str) -> None:  # any thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(deliver, outputs, error)

        try:
            self.engine.submit(batch, done)
        except Exception as e:  # an engine that refuses at once fails only this batch
            deliver(None, f"{type(e).__name__}: {e}")
