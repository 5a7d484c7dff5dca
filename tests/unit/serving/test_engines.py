"""The engine adapters of api/serving_engines.py over fake runtime pipelines (no Ray).

Decode: requests arriving mid-round start with the next round; abort finishes the sink at once;
a pipeline that cannot continue marks the engine unhealthy and fails what waits. Batch: the
queue-fed generator says "nothing now" (None) when idle, an errored micro-batch is answered with
the runtime's error and the engine's health follows the runtime's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from edgesplit.api import pipeline as api_pipeline
from edgesplit.api.serving_engines import PipelineBatchEngine, PipelineDecodeEngine
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
class Report:
    sequences: list[Result]
    failures: list[Any] = field(default_factory=list)


@dataclass
class FakePipeline:
    """`generate` emits max_new_tokens tokens per request; `gate` holds a round open."""

    gate: threading.Event | None = None
    fail: bool = False
    rounds: list[int] = field(default_factory=list)
    stages: list[tuple[str, int, int]] = field(default_factory=lambda: [("a", 0, 2), ("b", 2, 4)])

    def generate(self, requests: Sequence[Any], on_token: Any, faults: Any = ()) -> Report:
        self.rounds.append(len(requests))
        if self.fail:
            raise DeviceUnavailableError("stage b failed and nothing can replace it")
        if self.gate is not None:
            self.gate.wait(10)
        for index, request in enumerate(requests):
            for step in range(request.max_new_tokens):  # continues the prompt: 2, 3, 4, ...
                on_token(index, len(request.prompt_ids) + step)
        return Report([Result("length") for _ in requests])


def _request(name: str, tokens: int = 3) -> DecodeRequest:
    return DecodeRequest(request_id=name, prompt_ids=(1, 2), max_new_tokens=tokens)


def test_decode_rounds_abort_and_failure() -> None:
    pipeline = FakePipeline(gate=threading.Event())
    engine = PipelineDecodeEngine(pipeline, max_concurrent=2)  # type: ignore[arg-type]
    try:
        sinks = {name: Sink() for name in "abc"}
        engine.submit(_request("a"), sinks["a"])
        wait_until(lambda: pipeline.rounds == [1])
        engine.submit(_request("b"), sinks["b"])
        engine.submit(_request("c"), sinks["c"])
        engine.abort("c")  # still waiting: finished at once, never computed
        assert sinks["c"].finished == [("abort", "")]
        assert engine.stats().waiting == 1
        pipeline.gate.set()  # type: ignore[union-attr]
        wait_until(lambda: bool(sinks["b"].finished))
        assert pipeline.rounds == [1, 1]
        assert sinks["a"].tokens == [2, 3, 4]
        assert sinks["a"].finished == [("length", "")]
        assert engine.health().ok
        pipeline.fail = True
        broken = Sink()
        engine.submit(_request("d"), broken)
        wait_until(lambda: bool(broken.finished))
        assert broken.finished[0][0] == "error"
        assert not engine.health().ok
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


def test_chunked_rounds_admit_new_requests_between_chunks() -> None:
    pipeline = FakePipeline()
    engine = PipelineDecodeEngine(pipeline, max_concurrent=4, chunk_tokens=2)  # type: ignore[arg-type]
    try:
        long, short = Sink(), Sink()
        engine.submit(_request("long", tokens=5), long)
        engine.submit(_request("short", tokens=1), short)
        wait_until(lambda: bool(long.finished))
        assert long.tokens == [2, 3, 4, 5, 6]  # the same as one uninterrupted call
        assert long.finished == [("length", "")]
        assert short.tokens == [2]
        assert pipeline.rounds[:3] == [2, 1, 1]  # chunks of 2 tokens; short left after one
    finally:
        engine.close()
