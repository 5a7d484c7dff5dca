"""OpenAI fields we do not implement (review B14): accepted at the neutral value common clients
send (penalties 0, `logit_bias: {}`, `tools: []`, text content parts, `best_of: 1`), refused
as "not supported" at any other value, so no answer silently ignores what was asked; fields
OpenAI does not have stay errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from edgesplit.serving import ServerConfig, make_app
from tests.unit.serving.fakes import FakeDecodeEngine, byte_codec, expected_tokens

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app(ServerConfig(), text=(byte_codec(), FakeDecodeEngine()))) as c:
        yield c


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/v1/chat/completions", {"presence_penalty": 0, "frequency_penalty": 0.0}),
        ("/v1/chat/completions", {"logit_bias": {}, "n": 1, "top_p": 1}),
        ("/v1/chat/completions", {"response_format": {"type": "text"}, "tools": []}),
        ("/v1/chat/completions", {"tool_choice": "none", "parallel_tool_calls": True}),
        ("/v1/chat/completions", {"logprobs": False, "top_logprobs": 0}),
        ("/v1/completions", {"best_of": 1, "suffix": None, "echo": False, "logprobs": None}),
    ],
)
def test_neutral_values_are_accepted(client: TestClient, path: str, extra: dict[str, Any]) -> None:
    body = {"messages": HI} if "chat" in path else {"prompt": "hi"}
    response = client.post(path, json={**body, "max_tokens": 2, **extra})
    assert response.status_code == 200, response.text


def test_text_parts_are_one_message(client: TestClient) -> None:
    parts = [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]
    as_parts = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": parts}], "max_tokens": 3},
    )
    as_text = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi\nthere"}], "max_tokens": 3},
    )
    assert as_parts.status_code == 200, as_parts.text
    text = as_parts.json()["choices"][0]["message"]["content"]
    assert text == as_text.json()["choices"][0]["message"]["content"]
    prompt = list(b"user: hi\nthere\nassistant: ")
    assert text == bytes(expected_tokens(prompt, 3)).decode()


@pytest.mark.parametrize(
    ("path", "extra", "message"),
    [
        (
            "/v1/completions",
            {"presence_penalty": 0.5},
            "presence_penalty: not supported (no penalties here); only 0.0 is accepted (got 0.5)",
        ),
        ("/v1/completions", {"logprobs": 1}, "logprobs: not supported"),
        ("/v1/completions", {"echo": True}, "echo: not supported"),
        ("/v1/completions", {"best_of": 3}, "best_of: not supported"),
        ("/v1/completions", {"suffix": "end"}, "suffix: not supported (no insertion)"),
        ("/v1/chat/completions", {"logit_bias": {"50256": -100}}, "logit_bias: not supported"),
        (
            "/v1/chat/completions",
            {"response_format": {"type": "json_object"}},
            "response_format.type: not supported (no JSON mode or schemas)",
        ),
        (
            "/v1/chat/completions",
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools: not supported (this server has no tool calling)",
        ),
        ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
        ("/v1/chat/completions", {"top_k_typo": 1}, "unknown field 'top_k_typo'"),
    ],
)
def test_other_values_are_refused_as_not_supported(
    client: TestClient, path: str, extra: dict[str, Any], message: str
) -> None:
    body = {"messages": HI} if "chat" in path else {"prompt": "hi"}
    response = client.post(path, json={**body, **extra})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(message), response.text


def test_non_text_parts_are_refused_by_what_content_accepts(client: TestClient) -> None:
    image = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    response = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": image}]}
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        'messages.0.content must be a string or a list of text parts ({"type": "text", '
        '"text": ...})'
    )
