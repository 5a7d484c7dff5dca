"""The engine adapters of api/serving_engines.py over fake runtime pipelines (no Ray).

Decode: tokens stream into each sink, abort finishes the sink at once (and asks the pipeline to
drop the sequence), a pipeline that cannot continue marks the engine unhealthy and fails what
waits and what comes later. Batch: the
queue-fed generator says "nothing now" (None) when idle, an errored micro-batch is answered with
the runtime's error and the engine's health follows the runtime's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from edgesplit.api import pipeline as api_pipeline
from edgesplit.api.serving_engines import PipelineBatchEngine, PipelineDecodeEngine
from edgesplit.core.plan import StagePlacement
from edgesplit.errors import DeviceUnavailableError
from edgesplit.runtime.report import RunHealth
from edgesplit.serving import DecodeRequest


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    pause = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        pause.wait(0.01)
    raise AssertionError("condition not met in time")


@dataclass
class Sink:
    tokens: list[int] = field(default_factory=list)
    finished: list[tuple[str, str]] = field(default_factory=list)

    def token(self, token_id: int) -> None:
        self.tokens.append(token_id)

    def finish(self, reason: str, detail: str = "") -> None:
        self.finished.append((reason, detail))


@dataclass
class Result:
    finished: str
    error: str = ""


@dataclass
class Stats:
    running: int
    waiting: int
    step_batch_sizes: tuple[int, ...]


@dataclass
class FakePipeline:
    """The engine view of `GenerationPipeline`: `serve_forever` emits max_new_tokens tokens per
    submitted request (continuing the prompt: 2, 3, 4, ...) while `gate` is open; `fail` ends
    it as a stage failure nothing can replace."""

    gate: threading.Event = field(default_factory=threading.Event)
    fail: threading.Event = field(default_factory=threading.Event)
    submitted: list[Any] = field(default_factory=list)
    aborted: list[int] = field(default_factory=list)
    broken: str = ""
    stages: list[tuple[str, int, int]] = field(default_factory=lambda: [("a", 0, 2), ("b", 2, 4)])
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, request: Any, on_token: Any, on_finish: Any, *, key: int = 0) -> int:
        if self.broken:
            raise DeviceUnavailableError(self.broken)
        with self.lock:
            self.submitted.append((request, on_token, on_finish))
            return len(self.submitted) - 1

    def abort(self, sequence_id: int) -> None:
        with self.lock:
            self.aborted.append(sequence_id)

    def serve_forever(self, stop: threading.Event, faults: Any = ()) -> None:
        done = 0
        while not stop.is_set():
            if self.fail.is_set():
                self.broken = "DeviceUnavailableError: stage b failed and nothing replaces it"
                with self.lock:
                    pending = self.submitted[done:]
                for _, _, on_finish in pending:
                    on_finish(Result("error", self.broken))
                return
            if not self.gate.wait(0.01):
                continue
            with self.lock:  # the gate is cleared under the lock: nothing taken after that
                if not self.gate.is_set():
                    continue
                pending, done = self.submitted[done:], len(self.submitted)
            for index, (request, on_token, on_finish) in enumerate(pending):
                sequence_id = done - len(pending) + index
                for step in range(request.max_new_tokens):
                    if sequence_id in self.aborted:
                        on_finish(Result("abort"))
                        break
                    on_token(sequence_id, len(request.prompt_ids) + step)
                else:
                    on_finish(Result("length"))

    def health(self) -> Any:
        stages = (
            StagePlacement(device="a", start=0, end=2),
            StagePlacement(device="b", start=2, end=4),
        )
        return RunHealth("failed" if self.broken else "running", stages, self.broken)

    def stats(self) -> Any:
        return Stats(running=0, waiting=len(self.submitted), step_batch_sizes=(2, 2))

    def failures(self) -> list[Any]:
        return []


def _request(name: str, tokens: int = 3) -> DecodeRequest:
    return DecodeRequest(request_id=name, prompt_ids=(1, 2), max_new_tokens=tokens)


def test_decode_engine_streams_aborts_and_fails() -> None:
    pipeline = FakePipeline()
    engine = PipelineDecodeEngine(pipeline, max_concurrent=2)  # type: ignore[arg-type]
    try:
        sinks = {name: Sink() for name in "abc"}
        for name in "abc":
            engine.submit(_request(name), sinks[name])
        engine.abort("c")  # finished at once; the pipeline drops it between steps
        assert sinks["c"].finished == [("abort", "")]
        assert pipeline.aborted == [2]
        assert engine.stats().step_batch_sizes == (2, 2)
        pipeline.gate.set()
        wait_until(lambda: bool(sinks["b"].finished))
        assert sinks["a"].tokens == sinks["b"].tokens == [2, 3, 4]
        assert sinks["a"].finished == [("length", "")]
        assert sinks["c"].tokens == []
        assert sinks["c"].finished == [("abort", "")]  # once
        assert engine.health().ok
        with pipeline.lock:
            pipeline.gate.clear()
        waiting = Sink()
        engine.submit(_request("d"), waiting)
        pipeline.fail.set()
        wait_until(lambda: bool(waiting.finished))
        assert waiting.finished[0][0] == "error"
        wait_until(lambda: not engine.health().ok)
        later = Sink()
        engine.submit(_request("e"), later)
        assert later.finished[0][0] == "error"
    finally:
        engine.close()


def test_batch_engine_idles_and_follows_errors_and_health(monkeypatch: pytest.MonkeyPatch) -> None:
    idle = threading.Event()
    seen_health: list[Callable[[Any], None]] = []

    def fake_run(
        plan: Any,
        cluster: Any,
        profile: Any,
        *,
        requests: Iterable[Mapping[str, np.ndarray] | None],
        on_result: Callable[[int, dict[str, np.ndarray]], None],
        on_error: Callable[[int, str], None],
        on_health: Callable[[Any], None],
        **_: Any,
    ) -> Any:
        seen_health.append(on_health)
        on_health(RunHealth("running"))
        index = 0
        for row in requests:
            if row is None:  # nothing now
                idle.set()
                continue
            if float(np.asarray(row["x"]).ravel()[0]) == 13.0:
                on_error(index, "executor: boom")
                on_health(RunHealth("recovering", detail="d1 lost (hang)"))
            else:
                on_result(index, {"y": np.asarray(row["x"]) * 2})
            index += 1

        @dataclass
        class Counts:
            lost: int = 0

        @dataclass
        class FakeReport:
            notes: str = ""
            requests: Counts = field(default_factory=Counts)

        return FakeReport()

    monkeypatch.setattr(api_pipeline, "run", fake_run)

    @dataclass
    class Plan:
        batch_size: int = 4
        stages: tuple[Any, ...] = ()

    engine = PipelineBatchEngine(
        Plan(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        idle_poll_s=0.01,
    )
    engine.start()
    try:
        wait_until(idle.is_set)
        assert engine.health().ok
        results: list[tuple[Any, str]] = []
        engine.submit({"x": np.full((2, 1), 13.0)}, lambda out, err: results.append((out, err)))
        engine.submit({"x": np.full((2, 1), 3.0)}, lambda out, err: results.append((out, err)))
        wait_until(lambda: len(results) == 2)
        assert results[0] == (None, "executor: boom")
        np.testing.assert_array_equal(results[1][0]["y"], np.full((2, 1), 6.0))
        health = engine.health()
        assert not health.ok
        assert "recovering: d1 lost (hang)" in health.detail
        seen_health[0](RunHealth("running"))
        assert engine.health().ok
        assert engine.max_batch == 4
    finally:
        engine.close()
    assert not engine.health().ok
