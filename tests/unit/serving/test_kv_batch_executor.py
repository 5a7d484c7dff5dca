"""The decode executors' frames (meta "seqs"): the same tokens as each sequence decoded alone.

Two gpt2-tiny stages as `DecodeExecutor`s, called directly (no Ray): one padded prefill frame of
every prompt (right-aligned rows, meta "lens"), then decode frames carrying every sequence;
greedy and seeded-sampled rows give the tokens of each sequence stepped alone through `KvStage`
(`choose_token` at the same positions); "done" frees caches; a row that does not continue the
cache answers cache_mismatch naming it. The emulated executor keeps the same frame contract and
sleeps the profiled time scaled by the batch model.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from edgesplit.models import model_spec_from_name, unit_names
from edgesplit.models.kv_stage import KvStage, Sampling, choose_token
from edgesplit.runtime.executors import DecodeExecutor, EmulatedDecodeExecutor

PROMPTS = {3: [5, 6, 7], 4: [9], 5: [1, 2, 3, 4, 5]}
SAMPLING = {3: [0.0, 0, 0], 4: [0.8, 5, 42], 5: [0.0, 0, 0]}
NEW = 6


def _stages() -> list[KvStage]:
    spec = model_spec_from_name("gpt2-tiny")
    n = len(unit_names(spec))
    return [KvStage.build(spec, 0, n // 2), KvStage.build(spec, n // 2, n)]


def _chain(executors: list[DecodeExecutor], tensors: dict, meta: dict) -> tuple[dict, dict]:
    for executor in executors:
        tensors, meta = executor.run(0, tensors, meta)
        if "error" in meta:
            return tensors, meta
    return tensors, meta


def _alone() -> dict[int, list[int]]:
    stages = _stages()
    want: dict[int, list[int]] = {}
    for sid, prompt in PROMPTS.items():
        seq, fed = list(prompt), 0
        while len(seq) - len(prompt) < NEW:
            act: dict[str, torch.Tensor] = {"input_ids": torch.tensor([seq[fed:]])}
            for stage in stages:
                act = stage.step(sid, act, fed)
            temperature, top_k, seed = SAMPLING[sid]
            token = choose_token(
                act["logits"][0], Sampling(temperature, top_k, seed), sid, len(seq) - 1
            )
            fed = len(seq)
            seq.append(token)
        want[sid] = seq[len(prompt) :]
    return want


def test_batched_frames_equal_each_sequence_alone() -> None:
    want = _alone()
    batched = [DecodeExecutor(stage) for stage in _stages()]
    for executor in batched:
        executor.reset()
    seqs = {sid: list(p) for sid, p in PROMPTS.items()}
    order = list(PROMPTS)
    width = max(len(p) for p in PROMPTS.values())
    prefill = np.zeros((len(order), width), dtype=np.int64)
    for row, sid in enumerate(order):
        prefill[row, width - len(PROMPTS[sid]) :] = PROMPTS[sid]
    meta = {
        "seqs": order,
        "pos": [0] * len(order),
        "lens": [len(PROMPTS[s]) for s in order],
        "sampling": [SAMPLING[s] for s in order],
    }
    out, _ = _chain(batched, {"input_ids": prefill}, meta)  # every prompt in one frame
    fed = {sid: len(p) for sid, p in PROMPTS.items()}
    for row, sid in enumerate(order):
        seqs[sid].append(int(out["token"][row]))
    for _ in range(NEW - 1):  # decode: every sequence in one frame
        order = order[::-1]  # any row order
        ids = np.array([[seqs[s][-1]] for s in order], dtype=np.int64)
        meta = {
            "seqs": order,
            "pos": [fed[s] for s in order],
            "sampling": [SAMPLING[s] for s in order],
        }
        out, _ = _chain(batched, {"input_ids": ids}, meta)
        for row, sid in enumerate(order):
            fed[sid] += 1
            seqs[sid].append(int(out["token"][row]))
    assert {sid: seqs[sid][len(p) :] for sid, p in PROMPTS.items()} == want

    stale = {"seqs": [3, 4], "pos": [fed[3] - 1, fed[4]], "sampling": [[0.0, 0, 0]] * 2}
    _, meta = batched[0].run(0, {"input_ids": np.array([[1], [2]], dtype=np.int64)}, stale)
    assert meta["error"] == "cache_mismatch"
    assert meta["mismatched"] == [3]
    done = {"seqs": [5], "pos": [fed[5]], "done": [3, 4], "sampling": [[0.0, 0, 0]]}
    _chain(batched, {"input_ids": np.array([[seqs[5][-1]]], dtype=np.int64)}, done)
    assert [e.batch.sequences() for e in batched] == [[5], [5]]
    rowless = {"seqs": [], "pos": [], "done": [5]}
    assert _chain(batched, {}, rowless) == ({}, rowless)
    assert [e.batch.sequences() for e in batched] == [[], []]
    bad = {"seqs": [7], "pos": [0], "lens": [3]}  # more real tokens than the frame's width
    with pytest.raises(ValueError, match="lengths"):
        batched[0].run(0, {"input_ids": np.array([[1, 2]], dtype=np.int64)}, bad)


class _Clock(threading.Event):
    """A stop event whose wait records the requested sleep instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.slept.append(float(timeout or 0.0))
        return False


def test_emulated_frames_sleep_the_batch_model() -> None:
    clock = _Clock()
    last = EmulatedDecodeExecutor(0.01, 0.002, 8, 100, True, clock)
    prefill = {"seqs": [1, 2], "pos": [0, 0], "lens": [3, 1]}
    out, _ = last.run(0, {"input_ids": np.zeros((2, 3), dtype=np.int64)}, prefill)
    assert out["token"].tolist() == [(1 * 7919 + 3) % 100, (2 * 7919 + 1) % 100]
    assert clock.slept[-1] == pytest.approx(0.01 * 1 + 0.002 * 3)  # a 1-token prompt decodes
    step = {"seqs": [2, 1], "pos": [1, 3]}
    last.run(0, {"input_ids": np.zeros((2, 1), dtype=np.int64)}, step)
    assert clock.slept[-1] == pytest.approx(0.02)  # no batch data: each row as long as alone
    _, meta = last.run(
        0, {"input_ids": np.zeros((1, 1), dtype=np.int64)}, {"seqs": [1], "pos": [3]}
    )
    assert meta["mismatched"] == [1]

    middle = EmulatedDecodeExecutor(0.01, 0.0, 8, 100, False, clock, ((4, 2.0), (8, 3.0)))
    assert [middle.scale(b) for b in (1, 2, 4, 6, 8, 16)] == pytest.approx(
        [1.0, 1 + 1 / 3, 2.0, 2.5, 3.0, 5.0]  # linear between (1, 1), (4, 2), (8, 3), then on
    )
    rows = {"seqs": [1, 2, 3, 4], "pos": [0] * 4}
    out, _ = middle.run(0, {"hidden": np.zeros((4, 1, 8), dtype=np.float32)}, rows)
    assert out["hidden"].shape == (4, 1, 8)
    assert clock.slept[-1] == pytest.approx(0.02)
    assert middle.run(0, {}, {"seqs": [], "pos": [], "done": [1, 2, 3, 4]})[0] == {}
    assert middle._lengths == {}


def test_a_stage_spec_hands_its_batch_points_to_the_emulated_executor() -> None:
    from edgesplit.runtime.stage import StageSpec, StageWorker

    spec = StageSpec(
        index=1,
        device="b",
        start=4,
        end=8,
        epoch=0,
        executor="decode",
        compute="emulated",
        run_key_hex="00" * 32,
        num_units=8,
        hidden_size=8,
        vocab_size=100,
        decode_s=0.01,
        decode_batch_scale=((4, 2.0), (8, 3.0)),
    )
    crossed = StageSpec.model_validate(spec.model_dump(mode="json"))  # as over a Ray call
    executor = StageWorker("b", "127.0.0.1")._executor(crossed, threading.Event())
    assert isinstance(executor, EmulatedDecodeExecutor)
    assert executor.batch_scale == ((4, 2.0), (8, 3.0))
    assert executor.is_last
    assert executor.scale(8) == pytest.approx(3.0)
