"""MicroBatcher: batches up to max_batch, grow while every stage is busy, 429 past the bound."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import numpy as np
import pytest

from edgesplit.serving.batcher import MicroBatcher, QueueFullError
from edgesplit.serving.engine import BatchDone, EngineHealth


class GatedEngine:
    """Answers a micro-batch (rows * 10) only when `release()` is called for it."""

    def __init__(self, max_batch: int, max_in_flight: int) -> None:
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self.batches: list[int] = []
        self.waiting: list[tuple[Mapping[str, np.ndarray], BatchDone]] = []
        self.lock = threading.Lock()

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    def submit(self, inputs: Mapping[str, np.ndarray], done: BatchDone) -> None:
        with self.lock:
            self.batches.append(int(inputs["x"].shape[0]))
            self.waiting.append((inputs, done))

    def release(self) -> None:
        with self.lock:
            inputs, done = self.waiting.pop(0)
        threading.Thread(target=done, args=({"y": inputs["x"] * 10}, "")).start()

    def health(self) -> EngineHealth:
        return EngineHealth(True)


async def _poll(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout_s / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


def test_rows_wait_while_the_pipeline_is_full_and_batches_grow() -> None:
    async def scenario() -> None:
        engine = GatedEngine(max_batch=8, max_in_flight=1)
        batcher = MicroBatcher(engine, max_wait_s=0.001, max_pending=16, pad_tokens=False)
        batcher.start()
        first = asyncio.ensure_future(batcher.run({"x": np.array([[1.0]])}))
        await _poll(lambda: engine.batches == [1])  # alone: leaves after max_wait
        rest = [
            asyncio.ensure_future(batcher.run({"x": np.array([[v]])}))
            for v in (2.0, 3.0, 4.0, 5.0, 6.0)
        ]
        await asyncio.sleep(0.05)  # far past max_wait, but the one stage is busy
        assert engine.batches == [1]
        engine.release()
        await _poll(lambda: len(engine.batches) == 2)
        assert engine.batches == [1, 5]  # grown while waiting (a full batch would leave at once)
        engine.release()
        results = await asyncio.gather(first, *rest)
        assert [float(r["y"][0, 0]) for r in results] == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
        assert engine.batches == [1, 5]
        many = [asyncio.ensure_future(batcher.run({"x": np.array([[0.0]])})) for _ in range(17)]
        with pytest.raises(QueueFullError):
            await asyncio.gather(*many)
        await batcher.close()

    asyncio.run(scenario())
