"""The decode driver's continuous batching against a fake stage chain (no Ray, no torch).

The fake chain answers each frame at once like `DecodeExecutor.run` on the last stage: it checks
every row continues its cache, applies `done`, reads each row's real (right-aligned) tokens and
picks a token that depends only on (sampling key, position), so any batching, padding or replay
must give the same tokens as decoding each sequence alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from edgesplit.errors import ConfigError
from edgesplit.runtime.config import RuntimeConfig
from edgesplit.runtime.generation import (
    GenerationConfig,
    GenerationPipeline,
    GenerationRequest,
    SequenceResult,
    _check_stages,
)
from edgesplit.runtime.transport import Frame


def token_at(key: int, position: int) -> int:
    return (key * 31 + position * 7) % 97 + 1


@dataclass
class FakeChain:
    """The driver's source Sender and the whole chain behind it, answering synchronously."""

    results: Any  # the pipeline's result queue
    mismatch_once: bool = False
    lengths: dict[int, int] = field(default_factory=dict)
    fed: dict[int, list[int]] = field(default_factory=dict)  # tokens each sequence was fed
    finished: dict[int, list[int]] = field(default_factory=dict)  # ... when its "done" came
    frames: list[dict[str, Any]] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)
    unacked: int = 0
    max_in_flight: int = 1000

    def send(self, frame: Frame) -> bool:
        meta = dict(frame.meta)
        self.frames.append(meta)
        for done in meta.get("done", ()):
            self.lengths.pop(int(done), None)
            self.finished[int(done)] = self.fed.pop(int(done), [])
        ids, positions = meta["seqs"], meta["pos"]
        bad = [s for s, p in zip(ids, positions, strict=True) if p and self.lengths.get(s) != p]
        if self.mismatch_once and len(ids) > 1:
            self.mismatch_once, bad = False, list(ids)
            for s in ids:
                self.lengths.pop(s, None)  # as if a replacement stage had lost them
        if bad:
            answer = {**meta, "error": "cache_mismatch", "mismatched": bad}
            self.results.put(Frame("data", frame.request_id, 4, frame.epoch, {}, answer))
            return True
        tokens = []
        width = int(frame.tensors["input_ids"].shape[1]) if ids else 0
        lengths = meta.get("lens") or [width] * len(ids)
        for row, (s, p, n) in enumerate(zip(ids, positions, lengths, strict=True)):
            real = [int(t) for t in frame.tensors["input_ids"][row, width - n :]]
            self.fed[s] = (self.fed.get(s, []) if p else []) + real  # prefills start at 0
            self.lengths[s] = p + n
            tokens.append(token_at(int(meta["sampling"][row][3]), p + n - 1))
        tensors = {"token": np.array(tokens, dtype=np.int64)} if ids else {}
        self.results.put(Frame("data", frame.request_id, 4, frame.epoch, tensors, meta))
        return True


@dataclass
class FakeGroup:
    source: FakeChain

    def detect(self, now_s: float) -> list[Any]:
        return []

    def watch(self, expected: Any) -> None:
        pass

    @property
    def failures(self) -> Any:
        class Log:
            def records(self, *args: Any, **kwargs: Any) -> list[Any]:
                return []

        return Log()


def pipeline(stages: int = 2, mismatch_once: bool = False) -> tuple[GenerationPipeline, FakeChain]:
    cuts = [(f"d{i}", i, i + 1) for i in range(stages)]
    config = GenerationConfig(max_concurrent=6, runtime=RuntimeConfig(compute="real"))
    pipe = GenerationPipeline(None, cuts, config, num_units=stages)
    chain = FakeChain(pipe._results, mismatch_once)
    pipe._group = FakeGroup(chain)  # type: ignore[assignment]
    pipe._slots = [[] for _ in range(pipe.micro_batches)]
    pipe._slot_flights = [0] * pipe.micro_batches
    return pipe, chain


def expected(request: GenerationRequest, key: int) -> list[int]:
    length = len(request.prompt_ids)
    return [token_at(key, length + i - 1) for i in range(request.max_new_tokens)]


REQUESTS = [
    GenerationRequest(prompt_ids=list(range(1, 2 + i)), max_new_tokens=5 + 3 * i) for i in range(8)
]


def test_batched_steps_equal_one_at_a_time_and_free_every_cache() -> None:
    pipe, chain = pipeline(stages=2)
    report = pipe.generate(REQUESTS)
    assert [s.new_ids for s in report.sequences] == [expected(r, i) for i, r in enumerate(REQUESTS)]
    decode = [f for f in chain.frames if len(f["seqs"]) > 1 and max(f["pos"]) > 0]
    assert decode, "no frame held several sequences"
    assert max(len(f["seqs"]) for f in decode) == 3  # 6 running in 2 micro-batches
    assert chain.lengths == {}  # every finished sequence's cache was freed via "done"
    assert max(pipe.stats().step_batch_sizes) == 3
    # The first 6 prompts (lengths 1..6) went in two padded prefill frames (one per slot); the
    # stages were fed each sequence's prompt and its tokens but the last.
    assert [f["seqs"] for f in chain.frames[:2]] == [[0, 1, 2], [3, 4, 5]]
    assert chain.frames[1]["pos"] == [0] * 3
    assert chain.frames[1]["lens"] == [len(r.prompt_ids) for r in REQUESTS[3:6]]
    for i, request in enumerate(REQUESTS):
        assert chain.finished[i] == [*request.prompt_ids, *report.sequences[i].new_ids[:-1]]


def test_uneven_finishes_rebalance_the_micro_batches() -> None:
    pipe, chain = pipeline(stages=2)
    short = [GenerationRequest(prompt_ids=[1 + i], max_new_tokens=3) for i in range(3)]
    long = [GenerationRequest(prompt_ids=[9 + i], max_new_tokens=12) for i in range(3)]
    requests = [*short, *long]
    report = pipe.generate(requests)
    assert [s.new_ids for s in report.sequences] == [expected(r, i) for i, r in enumerate(requests)]
    # Each prefill frame's rows join one slot: {0, 1, 2} (short) and {3, 4, 5} (long). When the
    # short ones have finished, the long ones are spread 2 and 1, not 3 and 0.
    late = [f["seqs"] for f in chain.frames if f["seqs"] and min(f["pos"]) >= 8]
    assert late
    assert max(len(ids) for ids in late) == 2


def test_a_mismatched_frame_replays_its_rows() -> None:
    pipe, chain = pipeline(stages=2, mismatch_once=True)
    report = pipe.generate(REQUESTS[:4])
    assert not chain.mismatch_once  # the mismatch happened
    assert [s.new_ids for s in report.sequences] == [
        expected(r, i) for i, r in enumerate(REQUESTS[:4])
    ]
    prefills = [f for f in chain.frames if f["seqs"] and max(f["pos"]) == 0]
    assert sum(len(f["seqs"]) for f in prefills) > 4  # the mismatched rows were prefilled again


def test_engine_submit_abort_and_idle() -> None:
    pipe, chain = pipeline(stages=1)
    results: dict[int, SequenceResult] = {}
    tokens: dict[int, list[int]] = {}
    stop = threading.Event()
    lock = threading.Condition()

    def on_finish(result: SequenceResult) -> None:
        with lock:
            results[result.sequence_id] = result
            lock.notify_all()

    def on_token(sequence_id: int, token: int) -> None:
        tokens.setdefault(sequence_id, []).append(token)
        if sequence_id == doomed and len(tokens[sequence_id]) == 3:
            pipe.abort(doomed)

    thread = threading.Thread(target=pipe.serve_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        long = GenerationRequest(prompt_ids=[1, 2], max_new_tokens=2000)
        doomed = pipe.submit(long, on_token, on_finish, key=5)
        kept = pipe.submit(REQUESTS[2], on_token, on_finish, key=2)
        with lock:
            assert lock.wait_for(lambda: len(results) == 2, timeout=30)
        assert results[doomed].finished == "abort"
        assert 3 <= len(tokens[doomed]) < 2000
        assert results[kept].new_ids == expected(REQUESTS[2], 2)
        idle = threading.Event()
        idle.wait(0.2)  # idle with nothing submitted: no error
        assert pipe.health().ok
        again = pipe.submit(REQUESTS[0], None, on_finish, key=0)
        with lock:
            assert lock.wait_for(lambda: again in results, timeout=30)
        assert results[again].new_ids == expected(REQUESTS[0], 0)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert chain.lengths == {}


@pytest.mark.parametrize(
    ("stages", "says"),
    [
        ([("a", 0, 3), ("b", 3, 3)], "stage on 'b' has end 3 <= start 3"),
        ([("a", 0, 3), ("b", 4, 6)], "'a' ends at 3 but 'b' starts at 4"),
        ([("a", 0, 3), ("a", 3, 6)], "repeated: ['a']"),
        ([("a", 0, 3)], "stages end at unit 3; the model has 6"),
    ],
)
def test_bad_stages_are_one_clear_config_error(
    stages: list[tuple[str, int, int]], says: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        _check_stages(stages, 6)
    message = str(raised.value)
    assert says in message
    assert "covering [0, 6), one per device" in message  # what to do
    assert "pydantic" not in message
    assert "validation error" not in message
