"""Generation on the one stage worker: split == unsplit, kill -9 and hang mid-generation, HTTP.

One module-scoped pipeline of stage actors (4 stage devices + 4 warm standbys, on the session's
Ray) serves every test here; `restage` re-splits the model over the running actors.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from edgesplit.errors import ConfigError
from edgesplit.models import build_model, model_spec_from_name, unit_names
from edgesplit.models.kv_stage import Sampling, generate_unsplit
from edgesplit.runtime.config import RuntimeConfig, ScheduledFault
from edgesplit.runtime.generation import (
    GenerationConfig,
    GenerationPipeline,
    GenerationRequest,
    SequenceResult,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "gpt2-tiny"
NEW_TOKENS = 64
REQUESTS = [
    GenerationRequest(prompt_ids=[5, 6, 7], max_new_tokens=NEW_TOKENS),  # greedy
    GenerationRequest(prompt_ids=[9, 1], max_new_tokens=NEW_TOKENS, temperature=1.0, seed=11),
]


def _cuts(num_units: int, num_stages: int) -> list[int]:
    return [round(i * num_units / num_stages) for i in range(num_stages + 1)]


@pytest.fixture(scope="module")
def references() -> list[list[int]]:
    torch.set_num_threads(1)
    model = build_model(model_spec_from_name(MODEL))
    return [
        generate_unsplit(
            model, r.prompt_ids, r.max_new_tokens, Sampling(r.temperature, r.top_k, r.seed), i
        )
        for i, r in enumerate(REQUESTS)
    ]


@pytest.fixture(scope="module")
def pipeline(ray_cluster: object) -> Iterator[GenerationPipeline]:
    spec = model_spec_from_name(MODEL)
    n = len(unit_names(spec))
    cuts = _cuts(n, 4)
    stages = [(f"d{i}", cuts[i], cuts[i + 1]) for i in range(4)]
    runtime = RuntimeConfig(
        compute="real", placement="local", standby_devices=("s0", "s1", "s2", "s3")
    )
    config = GenerationConfig(max_concurrent=2, runtime=runtime)
    with GenerationPipeline(spec, stages, config, num_units=n) as running:
        yield running


@pytest.mark.parametrize("num_stages", [2, 3, 4])
def test_split_generation_equals_unsplit(
    pipeline: GenerationPipeline, references: list[list[int]], num_stages: int
) -> None:
    cuts = _cuts(pipeline.num_units, num_stages)
    pipeline.restage([(f"d{i}", cuts[i], cuts[i + 1]) for i in range(num_stages)])
    report = pipeline.generate(REQUESTS)
    assert [s.new_ids for s in report.sequences] == references
    assert report.new_tokens == NEW_TOKENS * len(REQUESTS)
    assert not report.failures


def test_a_fault_for_no_stage_is_refused_and_one_too_late_is_noted(
    pipeline: GenerationPipeline, references: list[list[int]]
) -> None:
    with pytest.raises(ConfigError, match="fault for 'nope', which runs no stage"):
        pipeline.generate(REQUESTS, faults=[ScheduledFault("nope", 0.5, "kill")])
    late = ScheduledFault(pipeline.stages[0][0], 600.0, "kill")
    report = pipeline.generate(REQUESTS, faults=[late])  # the pipeline is still usable
    assert [s.new_ids for s in report.sequences] == references
    assert not report.failures
    assert f"kill:{late.device}@600 did not fire" in report.notes


def test_kill_9_mid_generation_replays_and_matches(
    pipeline: GenerationPipeline, references: list[list[int]]
) -> None:
    cuts = _cuts(pipeline.num_units, 3)
    pipeline.restage([(f"d{i}", cuts[i], cuts[i + 1]) for i in range(3)])
    events = []
    for trial in range(3):
        victim = pipeline.stages[trial][0]  # first, then middle, then last stage
        killed = threading.Event()
        seen: list[int] = []

        def on_token(
            sequence_id: int,
            _: int,
            victim: str = victim,
            killed: threading.Event = killed,
            seen: list[int] = seen,
        ) -> None:
            seen.append(sequence_id)
            if not killed.is_set() and seen.count(0) == 20:
                killed.set()
                pipeline.fault(victim, "kill")

        report = pipeline.generate(REQUESTS, on_token=on_token)
        assert killed.is_set()
        assert [s.new_ids for s in report.sequences] == references, f"trial {trial}"
        assert len(seen) == NEW_TOKENS * len(REQUESTS)  # every token delivered exactly once
        (failure,) = report.failures
        assert failure.device == victim
        assert (failure.cause, failure.fault, failure.action) == ("actor_died", "kill", "standby")
        assert failure.replayed >= 20 + len(REQUESTS[0].prompt_ids)
        assert failure.detected_after_s < 1.0
        assert failure.recovered_after_s is not None
        events.append(failure)
        assert [s["device"] for s in report.stages][trial] == f"s{trial}"
    assert [e.device for e in events] == ["d0", "d1", "d2"]


def test_hung_stage_is_detected_and_replaced(
    pipeline: GenerationPipeline, references: list[list[int]]
) -> None:
    """SIGSTOP of a stage process mid-generation: heartbeats stop, a standby takes over."""
    cuts = _cuts(pipeline.num_units, 2)
    pipeline.restage([("d3", cuts[0], cuts[1]), ("h1", cuts[1], cuts[2])])
    stopped: list[int] = []
    seen: list[int] = []

    def on_token(sequence_id: int, _: int) -> None:
        seen.append(sequence_id)
        if not stopped and seen.count(0) == 10:
            stopped.append(pipeline.worker_pid("d3"))
            pipeline.fault("d3", "stop")

    # The scenario includes idle time between calls longer than the hang timeout: heartbeats
    # must count from the call, not declare every stage hung (a regression seen once).
    threading.Event().wait(pipeline.runtime.hang_timeout_s + 0.5)
    try:
        report = pipeline.generate(REQUESTS, on_token=on_token)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert [s.new_ids for s in report.sequences] == references
    assert len(seen) == NEW_TOKENS * len(REQUESTS)
    (failure,) = report.failures
    assert (failure.device, failure.fault, failure.cause) == ("d3", "stop", "hang")
    assert failure.detected_after_s < 3.0
    assert failure.action == "standby"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_engine_batches_joins_leaves_and_idles(
    pipeline: GenerationPipeline, references: list[list[int]]
) -> None:
    """The long-lived engine: sequences submitted while others decode join the running
    micro-batches (frames of several rows), an abort frees its sequence between steps, the
    engine idles past the hang timeout without an error, and every output equals the unsplit
    model's (sampling keyed by the caller's key, as `generate` keys by index)."""
    cuts = _cuts(pipeline.num_units, 2)
    before = pipeline.config
    pipeline.config = before.model_copy(update={"max_concurrent": 6})  # 3 rows per micro-batch
    pipeline.restage([("d0", cuts[0], cuts[1]), ("d1", cuts[1], cuts[2])])
    stop = threading.Event()
    finished: dict[int, list[int]] = {}
    reasons: dict[int, str] = {}
    lock = threading.Lock()
    arrived = threading.Condition(lock)

    def on_finish(result: SequenceResult) -> None:
        with arrived:
            finished[result.sequence_id] = result.new_ids
            reasons[result.sequence_id] = result.finished
            arrived.notify_all()

    def wait_for(count: int) -> None:
        with arrived:
            assert arrived.wait_for(lambda: len(finished) >= count, timeout=120)

    seen: dict[int, int] = {}

    def on_token(sequence_id: int, _: int) -> None:
        seen[sequence_id] = seen.get(sequence_id, 0) + 1

    thread = threading.Thread(target=pipeline.serve_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        pipeline.stats()  # forget earlier batch sizes
        first = [pipeline.submit(r, on_token, on_finish, key=i) for i, r in enumerate(REQUESTS)]
        doomed = pipeline.submit(
            GenerationRequest(prompt_ids=[3, 3, 3], max_new_tokens=500), on_token, on_finish
        )
        deadline = time.monotonic() + 60  # the others join while the first ones decode
        while seen.get(first[0], 0) < 8 and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        later = [pipeline.submit(r, on_token, on_finish, key=i) for i, r in enumerate(REQUESTS)]
        pipeline.abort(doomed)
        wait_for(5)
        assert reasons[doomed] == "abort"
        assert seen.get(doomed, 0) < 500
        for ids in (first, later):
            assert [finished[i] for i in ids] == references
        sizes = pipeline.stats().step_batch_sizes
        assert max(sizes) >= 2, sizes  # several sequences per forward pass
        # Idle past the hang timeout: no error, and the next request is served.
        threading.Event().wait(pipeline.runtime.hang_timeout_s + 0.5)
        assert pipeline.health().ok
        again = pipeline.submit(REQUESTS[0], None, on_finish, key=0)
        wait_for(6)
        assert finished[again] == references[0]
    finally:
        stop.set()
        thread.join(30)
        pipeline.config = before
    assert not thread.is_alive()


def test_emulated_stages_take_batched_frames(ray_cluster: object) -> None:
    """Emulated decode (sleep the profiled time, real-size hidden states) with the batch model
    handed to the stages: every sequence completes and the decode frames carry several rows."""
    from edgesplit.runtime.generation import StageTiming

    spec = model_spec_from_name(MODEL)
    n = len(unit_names(spec))
    seen: list[tuple[str, int, int]] = []

    def emulation(device: str, start: int, end: int) -> StageTiming:
        seen.append((device, start, end))
        return StageTiming(0.002 * (end - start), 0.0005, ((4, 1.5),))

    config = GenerationConfig(
        max_concurrent=4, runtime=RuntimeConfig(compute="emulated", placement="local")
    )
    cuts = _cuts(n, 2)
    stages = [("e0", cuts[0], cuts[1]), ("e1", cuts[1], cuts[2])]
    requests = [GenerationRequest(prompt_ids=[i + 1, 2, 3], max_new_tokens=12) for i in range(4)]
    with GenerationPipeline(
        spec, stages, config, num_units=n, emulation=emulation, hidden_size=32, vocab_size=50
    ) as pipe:
        report = pipe.generate(requests)
        sizes = pipe.stats().step_batch_sizes
    assert sorted(seen) == sorted(stages)
    assert [len(s.new_ids) for s in report.sequences] == [12] * 4
    assert all(0 <= t < 50 for s in report.sequences for t in s.new_ids)
    assert max(sizes) > 1  # rows of several sequences in one frame
