"""The /v1/completions endpoint over a stub pipeline: validation (4xx) and SSE framing."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edgesplit.models.textdata import decode_bytes, encode_bytes
from edgesplit.runtime.generation import GenerationReport, GenerationRequest, SequenceResult
from edgesplit.runtime.generation_server import GenerationService, make_app


class StubPipeline:
    """Emits "abc..." one byte per token; records requests."""

    def __init__(self) -> None:
        self.stages = [("a", 0, 5), ("b", 5, 10)]
        self.requests: list[GenerationRequest] = []

    def generate(
        self, requests: Sequence[GenerationRequest], on_token: Callable[[int, int], None]
    ) -> GenerationReport:
        (request,) = requests
        self.requests.append(request)
        new = [ord("a") + i % 26 for i in range(request.max_new_tokens)]
        for token in new:
            on_token(0, token)
        result = SequenceResult(
            sequence_id=0,
            prompt_ids=request.prompt_ids,
            new_ids=new,
            first_token_s=0.0,
            time_per_token_s=0.0,
            finished="length",
        )
        return GenerationReport(
            sequences=[result],
            elapsed_s=1.0,
            new_tokens=len(new),
            tokens_per_s=1.0,
            time_per_token_s=0.0,
        )


@pytest.fixture
def client() -> tuple[TestClient, StubPipeline]:
    stub = StubPipeline()
    service = GenerationService(
        pipeline=stub,  # type: ignore[arg-type]
        model_name="toy",
        encode=encode_bytes,
        decode=decode_bytes,
        vocab_size=256,
        max_tokens_limit=64,
    )
    return TestClient(make_app(service)), stub


def test_non_streaming_completion(client: tuple[TestClient, StubPipeline]) -> None:
    http, stub = client
    reply = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 5, "seed": 3})
    assert reply.status_code == 200
    body = reply.json()
    assert body["choices"][0]["text"] == "abcde"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert stub.requests[0].prompt_ids == [72, 105]
    assert stub.requests[0].seed == 3


def test_streaming_sends_one_event_per_token_then_done(
    client: tuple[TestClient, StubPipeline],
) -> None:
    http, _ = client
    with http.stream(
        "POST", "/v1/completions", json={"prompt": [1, 2], "max_tokens": 4, "stream": True}
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "abcd"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "text_completion" for c in chunks)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"max_tokens": 4}, 422),  # no prompt
        ({"prompt": "x", "max_tokens": 0}, 422),
        ({"prompt": "x", "max_tokens": "many"}, 422),
        ({"prompt": "x", "temperature": -1}, 422),
        ({"prompt": "x", "bogus": 1}, 422),  # unknown field
        ({"prompt": "x", "max_tokens": 65}, 400),  # above the server's limit
        ({"prompt": ""}, 400),
        ({"prompt": [1, 999]}, 400),  # token id outside the vocabulary
        ({"prompt": "x", "model": "other"}, 404),
    ],
)
def test_malformed_requests_get_4xx(
    client: tuple[TestClient, StubPipeline], body: dict[str, Any], status: int
) -> None:
    http, stub = client
    assert http.post("/v1/completions", json=body).status_code == status
    assert stub.requests == []


def test_invalid_json_is_rejected(client: tuple[TestClient, StubPipeline]) -> None:
    http, _ = client
    reply = http.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 422
