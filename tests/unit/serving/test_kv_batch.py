"""Continuous batching (models/kv_batch.py) equals decoding one sequence at a time.

Two stages of GPT-2 and Llama test presets; sequences with different prompt lengths prefill one
at a time or together (padded steps, also beside decode rows), then decode in shared steps while
others join, leave and regroup. Greedy tokens must
be identical to `KvStage` one-at-a-time decoding, logits within 1e-4 (float32; batching only
changes the summation order), and a dropped sequence's cache is freed at once.
"""

from __future__ import annotations

import pytest
import torch

from edgesplit.errors import ConfigError
from edgesplit.models import model_spec_from_name, unit_names
from edgesplit.models.kv_batch import KvBatch
from edgesplit.models.kv_stage import CacheMismatchError, KvStage

LOGIT_TOLERANCE = 1e-4
PROMPTS = {11: [5, 6, 7, 8, 9], 12: [3], 13: [40, 41, 42], 14: [7, 7, 7, 7, 7, 7, 7, 1]}
NEW_TOKENS = {11: 9, 12: 6, 13: 8, 14: 5}


def _stages(model: str, cls: type) -> list:
    spec = model_spec_from_name(model)
    n = len(unit_names(spec))
    return [cls.build(spec, 0, n // 2), cls.build(spec, n // 2, n)]


def _reference(model: str) -> tuple[dict[int, list[int]], dict[int, list[torch.Tensor]]]:
    """Each sequence decoded alone through KvStage (the existing one-at-a-time path)."""
    stages = _stages(model, KvStage)
    tokens: dict[int, list[int]] = {}
    logits: dict[int, list[torch.Tensor]] = {}
    for sid, prompt in PROMPTS.items():
        seq, fed, out_logits = list(prompt), 0, []
        while len(seq) - len(prompt) < NEW_TOKENS[sid]:
            act: dict[str, torch.Tensor] = {"input_ids": torch.tensor([seq[fed:]])}
            for stage in stages:
                act = stage.step(sid, act, fed)
            fed = len(seq)
            out_logits.append(act["logits"][0])
            seq.append(int(torch.argmax(act["logits"][0])))
        tokens[sid], logits[sid] = seq[len(prompt) :], out_logits
    return tokens, logits


def _batched_step(stages: list[KvBatch], ids: list[int], inputs: torch.Tensor, pos: list[int]):
    act: dict[str, torch.Tensor] = {"input_ids": inputs}
    for stage in stages:
        act = stage.step(ids, act, pos)
    return act["logits"]


@pytest.mark.parametrize("model", ["gpt2-tiny", "llama-tiny"])
def test_batched_decode_equals_one_at_a_time(model: str) -> None:
    torch.manual_seed(0)
    want_tokens, want_logits = _reference(model)
    stages = _stages(model, KvBatch)
    seqs: dict[int, list[int]] = {}
    got_logits: dict[int, list[torch.Tensor]] = {s: [] for s in PROMPTS}
    fed: dict[int, int] = {}

    def join(sid: int) -> None:  # prefill alone
        seqs[sid], fed[sid] = list(PROMPTS[sid]), 0
        logits = _batched_step(stages, [sid], torch.tensor([seqs[sid]]), [0])
        fed[sid] = len(seqs[sid])
        got_logits[sid].append(logits[0])
        seqs[sid].append(int(torch.argmax(logits[0])))

    def decode(ids: list[int]) -> None:
        inputs = torch.tensor([[seqs[s][-1]] for s in ids])
        logits = _batched_step(stages, ids, inputs, [fed[s] for s in ids])
        for row, sid in enumerate(ids):
            fed[sid] += 1
            got_logits[sid].append(logits[row])
            seqs[sid].append(int(torch.argmax(logits[row])))

    def done(sid: int) -> bool:
        return len(seqs[sid]) - len(PROMPTS[sid]) >= NEW_TOKENS[sid]

    join(11)
    join(12)
    decode([11, 12])
    decode([12, 11])  # same group, other row order: no re-pack
    join(13)  # joins between steps
    decode([13, 11, 12])
    decode([11])  # a subset: regroup (two micro-batches in flight, as with 2 stages)
    decode([13, 12])
    decode([11])
    decode([12, 13])
    join(14)
    dropped: set[int] = set()
    while len(dropped) < len(seqs):
        for sid in [s for s in seqs if done(s) and s not in dropped]:
            for stage in stages:
                stage.drop(sid)  # leaves between steps
            dropped.add(sid)
        live = [s for s in seqs if not done(s)]
        if live:
            decode(live)
    for sid in PROMPTS:
        assert seqs[sid][len(PROMPTS[sid]) :] == want_tokens[sid], sid
        for got, want in zip(got_logits[sid], want_logits[sid], strict=True):
            torch.testing.assert_close(got, want, atol=LOGIT_TOLERANCE, rtol=0)
    for stage in stages:
        assert stage.sequences() == []
        assert stage.cache_bytes() == 0


def test_steady_groups_do_not_repack_and_drop_frees_memory() -> None:
    (stage,) = [KvBatch.build(model_spec_from_name("gpt2-tiny"), 0, 4)]
    for sid in (1, 2, 3):
        stage.step([sid], {"input_ids": torch.tensor([[sid, sid + 1]])}, [0])
    stage.step([1, 2, 3], {"input_ids": torch.tensor([[1], [2], [3]])}, [2, 2, 2])
    repacks = stage.repacks
    for step in range(3):
        stage.step([3, 1, 2], {"input_ids": torch.tensor([[1], [2], [3]])}, [3 + step] * 3)
    assert stage.repacks == repacks
    full = stage.cache_bytes()
    stage.drop(2)
    assert stage.cache_bytes() == pytest.approx(full * 2 / 3)
    assert stage.sequences() == [1, 3]


def test_mismatched_positions_raise_for_replay() -> None:
    stage = KvBatch.build(model_spec_from_name("llama-tiny"), 0, 3)
    stage.step([1], {"input_ids": torch.tensor([[4, 5, 6]])}, [0])
    assert stage.mismatched([1, 2], [2, 5]) == [1, 2]
    with pytest.raises(CacheMismatchError):
        stage.step([1], {"input_ids": torch.tensor([[7]])}, [2])
    stage.step([1], {"input_ids": torch.tensor([[7]])}, [3])
    assert stage.cached_length(1) == 4


def _padded_step(stages: list[KvBatch], ids: list[int], rows: list[list[int]], pos: list[int]):
    """One step of rows with different numbers of new tokens, right-aligned (left padding)."""
    width = max(len(r) for r in rows)
    act: dict[str, torch.Tensor] = {
        "input_ids": torch.tensor([[0] * (width - len(r)) + r for r in rows])
    }
    for stage in stages:
        act = stage.step(ids, act, pos, [len(r) for r in rows])
    return act["logits"]


@pytest.mark.parametrize("model", ["gpt2-tiny", "llama-tiny"])
@pytest.mark.parametrize("schedule", ["prefill_together", "prefill_rides_along"])
def test_padded_steps_equal_one_at_a_time(model: str, schedule: str) -> None:
    """Several prefills in one step (and prefills beside decode rows, leaving holes in those
    rows' caches) give the tokens of each sequence alone ([Note: padded steps])."""
    want_tokens, want_logits = _reference(model)
    stages = _stages(model, KvBatch)
    seqs: dict[int, list[int]] = {}
    fed: dict[int, int] = {}
    got_logits: dict[int, list[torch.Tensor]] = {s: [] for s in PROMPTS}

    def step(ids: list[int]) -> None:
        for sid in ids:
            if sid not in seqs:
                seqs[sid], fed[sid] = list(PROMPTS[sid]), 0
        rows = [seqs[s][fed[s] :] for s in ids]
        logits = _padded_step(stages, ids, rows, [fed[s] for s in ids])
        for row, sid in enumerate(ids):
            fed[sid] = len(seqs[sid])
            got_logits[sid].append(logits[row])
            seqs[sid].append(int(torch.argmax(logits[row])))

    if schedule == "prefill_together":
        step([14, 12, 11, 13])  # prompts of 8, 1, 5 and 3 tokens in one forward pass
    else:
        step([11])
        step([11, 12])  # 12's one-token prefill beside 11's decode row
        step([12, 11, 13])  # 13's 3-token prefill beside two decode rows
        step([11])
        step([13, 14, 12])
    while live := [s for s in PROMPTS if len(seqs[s]) - len(PROMPTS[s]) < NEW_TOKENS[s]]:
        step(live[::-1])
    for sid in PROMPTS:
        new = seqs[sid][len(PROMPTS[sid]) :][: NEW_TOKENS[sid]]
        assert new == want_tokens[sid], sid
        for got, want in zip(got_logits[sid], want_logits[sid], strict=False):
            torch.testing.assert_close(got, want, atol=LOGIT_TOLERANCE, rtol=0)
    for sid in PROMPTS:
        for stage in stages:
            stage.drop(sid)
    assert all(stage.cache_bytes() == 0 for stage in stages)


def test_padded_step_lengths_are_checked() -> None:
    stage = KvBatch.build(model_spec_from_name("gpt2-tiny"), 0, 2)
    with pytest.raises(ConfigError, match="length"):
        stage.step([1, 2], {"input_ids": torch.tensor([[1, 2], [3, 4]])}, [0, 0], [2, 3])
