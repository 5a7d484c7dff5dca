"""The decode executor's batched path (meta "seqs"): the same tokens as its one-sequence path.

Two gpt2-tiny stages as `DecodeExecutor`s, called directly (no Ray): prefill frames one sequence
each, then decode frames carrying every sequence; greedy and seeded-sampled rows give the same
tokens as sending each sequence alone; "done" frees caches; a row that does not continue the
cache answers cache_mismatch naming it.
"""

from __future__ import annotations

import numpy as np

from edgesplit.models import model_spec_from_name, unit_names
from edgesplit.models.kv_stage import KvStage
from edgesplit.runtime.executors import DecodeExecutor

PROMPTS = {3: [5, 6, 7], 4: [9], 5: [1, 2, 3, 4, 5]}
SAMPLING = {3: [0.0, 0, 0], 4: [0.8, 5, 42], 5: [0.0, 0, 0]}
NEW = 6


def _executors() -> list[DecodeExecutor]:
    spec = model_spec_from_name("gpt2-tiny")
    n = len(unit_names(spec))
    return [
        DecodeExecutor(KvStage.build(spec, 0, n // 2)),
        DecodeExecutor(KvStage.build(spec, n // 2, n)),
    ]


def _chain(
    executors: list[DecodeExecutor], rid: int, tensors: dict, meta: dict
) -> tuple[dict, dict]:
    for executor in executors:
        tensors, meta = executor.run(rid, tensors, meta)
        if "error" in meta:
            return tensors, meta
    return tensors, meta


def test_batched_frames_equal_single_sequence_frames() -> None:
    single = _executors()
    want: dict[int, list[int]] = {}
    for sid, prompt in PROMPTS.items():
        seq, fed = list(prompt), 0
        while len(seq) - len(prompt) < NEW:
            ids = np.array([seq[fed:]], dtype=np.int64)
            out, _ = _chain(
                single, sid, {"input_ids": ids}, {"pos": fed, "sampling": SAMPLING[sid]}
            )
            fed = len(seq)
            seq.append(int(out["token"][0]))
        want[sid] = seq[len(prompt) :]

    batched = _executors()
    seqs = {sid: list(p) for sid, p in PROMPTS.items()}
    fed = dict.fromkeys(PROMPTS, 0)
    for sid in PROMPTS:  # prefill: one sequence per frame
        ids = np.array([seqs[sid]], dtype=np.int64)
        meta = {"seqs": [sid], "pos": [0], "sampling": [SAMPLING[sid]]}
        out, _ = _chain(batched, 0, {"input_ids": ids}, meta)
        fed[sid] = len(seqs[sid])
        seqs[sid].append(int(out["token"][0]))
    order = list(PROMPTS)
    for _ in range(NEW - 1):  # decode: every sequence in one frame
        ids = np.array([[seqs[s][-1]] for s in order], dtype=np.int64)
        meta = {
            "seqs": order,
            "pos": [fed[s] for s in order],
            "sampling": [SAMPLING[s] for s in order],
        }
        out, _ = _chain(batched, 0, {"input_ids": ids}, meta)
        for row, sid in enumerate(order):
            fed[sid] += 1
            seqs[sid].append(int(out["token"][row]))
    assert {sid: seqs[sid][len(p) :] for sid, p in PROMPTS.items()} == want

    stale = {"seqs": [3, 4], "pos": [fed[3] - 1, fed[4]], "sampling": [[0.0, 0, 0]] * 2}
    _, meta = batched[0].run(0, {"input_ids": np.array([[1], [2]], dtype=np.int64)}, stale)
    assert meta["error"] == "cache_mismatch"
    assert meta["mismatched"] == [3]
    done = {"seqs": [5], "pos": [fed[5]], "done": [3, 4], "sampling": [[0.0, 0, 0]]}
    _chain(batched, 0, {"input_ids": np.array([[seqs[5][-1]]], dtype=np.int64)}, done)
    assert [e.batch.sequences() for e in batched] == [[5], [5]]
