"""No trust in what arrives, through real stage actors: strangers at a stage port, poisonous input.

Strangers (garbage, a well-formed frame without the handshake, a header declaring 256 MiB) hit a
live decode stage's port while it generates: they are dropped and counted, the output is
unchanged. A request that makes an executor raise errors alone (after one retry); the requests
around it and later ones are correct — for the batch and the decode driver.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from tests.unit.runtime.test_channel import declared_frame

from conftest import make_plan, toy_cluster, toy_profile
from edgesplit.models import build_model, model_spec_from_name, unit_names
from edgesplit.models.kv_stage import Sampling, generate_unsplit
from edgesplit.runtime import RuntimeConfig, run_plan
from edgesplit.runtime.generation import GenerationConfig, GenerationPipeline, GenerationRequest
from edgesplit.runtime.transport import MAGIC, Frame, encode_header

pytestmark = pytest.mark.integration

MODEL = "gpt2-tiny"
NEW_TOKENS = 24
GOOD = [
    GenerationRequest(prompt_ids=[5, 6, 7], max_new_tokens=NEW_TOKENS),
    GenerationRequest(prompt_ids=[9, 1], max_new_tokens=NEW_TOKENS, temperature=1.0, seed=3),
]


def _attacks() -> list[bytes]:
    frame = Frame("data", 0, 0, 0, {"input_ids": np.array([[1, 2, 3]], dtype=np.int64)}, {"pos": 0})
    well_formed = encode_header(frame) + frame.tensors["input_ids"].tobytes()
    return [b"\xde\xad\xbe\xef" * 100, well_formed, declared_frame([256 << 20])]


def _attack(address: tuple[str, int], payload: bytes, outcome: list[str]) -> None:
    with socket.create_connection(address, timeout=10) as sock:
        challenge = sock.recv(len(MAGIC))
        sock.sendall(payload)
        try:
            while sock.recv(4096):
                pass
            outcome.append(f"closed after {challenge!r}")
        except ConnectionResetError:
            outcome.append(f"reset after {challenge!r}")
        except TimeoutError:
            outcome.append("kept open")


@pytest.fixture(scope="module")
def references() -> list[list[int]]:
    torch.set_num_threads(1)
    model = build_model(model_spec_from_name(MODEL))
    return [
        generate_unsplit(
            model, r.prompt_ids, NEW_TOKENS, Sampling(r.temperature, r.top_k, r.seed), i
        )
        for i, r in enumerate(GOOD)
    ]


@pytest.fixture(scope="module")
def pipeline(ray_cluster: object) -> Iterator[GenerationPipeline]:
    spec = model_spec_from_name(MODEL)
    n = len(unit_names(spec))
    runtime = RuntimeConfig(compute="real", placement="local")
    with GenerationPipeline(
        spec,
        [("sec0", 0, n // 2), ("sec1", n // 2, n)],
        GenerationConfig(max_concurrent=3, runtime=runtime),
        num_units=n,
    ) as running:
        yield running


@pytest.mark.slow
def test_strangers_at_a_stage_port_are_dropped_and_change_nothing(
    pipeline: GenerationPipeline, references: list[list[int]]
) -> None:
    outcomes: list[str] = []
    threads: list[threading.Thread] = []

    def on_token(sequence_id: int, _: int) -> None:
        if threads:
            return
        for device in ("sec0", "sec1"):
            for payload in _attacks():
                thread = threading.Thread(
                    target=_attack, args=(pipeline.group.addresses[device], payload, outcomes)
                )
                thread.start()
                threads.append(thread)

    report = pipeline.generate(GOOD, on_token=on_token)
    for thread in threads:
        thread.join(15)
    assert [s.new_ids for s in report.sequences] == references
    assert not report.failures
    assert len(outcomes) == 6
    assert all(o.startswith(("closed", "reset")) and repr(MAGIC) in o for o in outcomes), outcomes
    pings = [pipeline.group.actors[d].call("ping") for d in ("sec0", "sec1")]
    refused = [p["refused"] for p in pipeline.group.session.get(pings, 30.0)]
    assert refused == [3, 3]
    # And the next call is still served correctly.
    again = pipeline.generate(GOOD[:1])
    assert again.sequences[0].new_ids == references[0]


@pytest.mark.slow
def test_poisonous_prompt_errors_alone(
    pipeline: GenerationPipeline, references: list[list[int]]
) -> None:
    poison = GenerationRequest(prompt_ids=[3, 10**6], max_new_tokens=NEW_TOKENS)  # not a token
    report = pipeline.generate([GOOD[0], poison, GOOD[1]])
    good0, bad, good1 = report.sequences
    sampled = GOOD[1]  # now sequence 2: its seeded samples depend on the sequence id
    expected1 = generate_unsplit(
        build_model(model_spec_from_name(MODEL)),
        sampled.prompt_ids,
        NEW_TOKENS,
        Sampling(sampled.temperature, sampled.top_k, sampled.seed),
        2,
    )
    assert (good0.new_ids, good1.new_ids) == (references[0], expected1)
    assert bad.finished == "error"
    assert bad.new_ids == []
    assert "IndexError" in bad.error
    assert "stage 0 @ sec0" in bad.error
    assert not report.failures  # one bad request does not make a stage "failed"
    assert pipeline.generate(GOOD[:1]).sequences[0].new_ids == references[0]


def test_poisonous_micro_batch_errors_alone(ray_cluster: object) -> None:
    profile, cluster = toy_profile(time_s=0.01), toy_cluster(["p0", "p1"])
    plan = make_plan(profile, cluster, [("p0", 0, 3), ("p1", 3, 6)])
    size = int(profile.input_bytes)
    requests = [{"input": np.zeros(size, dtype=np.uint8)} for _ in range(12)]
    requests[4] = {"input": np.zeros(size - 1, dtype=np.uint8)}  # the wrong size: the stage raises
    order: list[int] = []
    report = run_plan(
        plan,
        cluster,
        profile,
        config=RuntimeConfig(placement="local"),
        requests=requests,
        on_result=lambda rid, out: order.append(rid),
    )
    assert order == [i for i in range(12) if i != 4]
    assert report.requests.errored == 1
    assert (report.requests.lost, report.requests.duplicated) == (0, 0)
    assert "micro-batch 4 has" in report.notes
    assert not report.failures
