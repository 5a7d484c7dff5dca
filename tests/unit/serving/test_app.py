"""The front end over fake engines: OpenAI shapes (official client), hardening, auth, batching."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest
from starlette.testclient import TestClient

from edgesplit.serving import ServerConfig, make_app
from tests.unit.serving.fakes import (
    CONTEXT,
    FakeBatchEngine,
    FakeDecodeEngine,
    byte_codec,
    embedding_codec,
    expected_tokens,
    image_codec,
    pixel_logits,
    token_states,
)

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _text(prompt: str, count: int) -> str:
    return bytes(expected_tokens(list(prompt.encode()), count)).decode()


@pytest.fixture
def engine() -> FakeDecodeEngine:
    return FakeDecodeEngine()


@pytest.fixture
def client(engine: FakeDecodeEngine) -> Iterator[TestClient]:
    app = make_app(
        ServerConfig(token=TOKEN, max_body_bytes=64 << 10, queue_size=4),
        text=(byte_codec(), engine),
        embeddings=(embedding_codec(), FakeBatchEngine(token_states)),
        classify=(image_codec(), FakeBatchEngine(pixel_logits)),
    )
    with TestClient(app, headers=AUTH) as c:
        yield c


@pytest.fixture
def oai(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=TOKEN, http_client=client)


def test_openai_client_completion_and_chat(oai: openai.OpenAI) -> None:
    done = oai.completions.create(model="fake-lm", prompt="Hi", max_tokens=5, temperature=0)
    assert done.choices[0].text == _text("Hi", 5)
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (2, 5)
    chat = oai.chat.completions.create(
        model="fake-lm", messages=[{"role": "user", "content": "yo"}], max_tokens=4
    )
    prompt = "user: yo\nassistant: "
    assert chat.choices[0].message.content == _text(prompt, 4)
    assert chat.usage is not None
    assert chat.usage.prompt_tokens == len(prompt)
    assert [m.id for m in oai.models.list().data] == ["fake-lm", "fake-encoder", "fake-vit"]


def test_openai_client_streams_with_usage(oai: openai.OpenAI) -> None:
    stream = oai.completions.create(
        model="fake-lm",
        prompt="Hi",
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == _text("Hi", 7)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    chat = list(
        oai.chat.completions.create(
            model="fake-lm", messages=[{"role": "user", "content": "x"}], max_tokens=3, stream=True
        )
    )
    assert chat[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chat)
    assert text == _text("user: x\nassistant: ", 3)


def test_openai_client_embeddings_base64_and_float(oai: openai.OpenAI, client: TestClient) -> None:
    result = oai.embeddings.create(model="fake-encoder", input=["ab", "abcd"])  # base64 default
    raw = client.post("/v1/embeddings", json={"input": ["ab", "abcd"], "encoding_format": "float"})
    for index, text in enumerate(["ab", "abcd"]):
        ids = np.array([1, *text.encode(), 2], dtype=np.float64)
        expected = np.array([ids.mean(), (ids**2).mean(), 1.0])
        expected /= np.linalg.norm(expected)
        np.testing.assert_allclose(result.data[index].embedding, expected, rtol=1e-6)
        np.testing.assert_allclose(raw.json()["data"][index]["embedding"], expected, rtol=1e-6)
    assert result.usage.prompt_tokens == 4 + 6


def test_stop_strings_and_stop_reason(client: TestClient) -> None:
    full = _text("Hi", 10)
    stop = full[3:5]
    body = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 10, "stop": stop})
    assert body.json()["choices"][0]["text"] == full[:3]
    assert body.json()["choices"][0]["finish_reason"] == "stop"


def _error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"])
    return dict(body["error"])


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "a", "temperature": NaN}',
        b'{"prompt": "a", "temperature": Infinity}',
        b'{"prompt": "a", "temperature": -Infinity}',
        b'{"prompt": "\\ud800x"}',
        b'{"prompt": [true]}',
        b'{"prompt": "a", "max_tokens": "4"}',
        b'{"prompt": "a", "max_tokens": 4.0}',
        b'{"prompt": "a", "max_tokens": true}',
        b'{"prompt": "a", "unknown_field": 1}',
        b'{"prompt": "a", "max_tokens": 0}',
        b'{"prompt": "a", "max_tokens": 100000000000000000000000}',
        b'{"prompt": []}',
        b'{"prompt": [-1]}',
        b'{"prompt": [300]}',
        b'{"prompt": "a", "n": 2}',
        b'{"prompt": "a", "top_p": 0.5}',
        b'{"prompt": "a", "model": "other"}',
        b'{"prompt": "a", "stream_options": {"include_usage": "yes"}}',
        b'{"prompt": "a"',
        b"\xff\xfe garbage",
        b"[]",
        b"null",
    ],
)
def test_malformed_bodies_are_4xx_and_server_stays_healthy(client: TestClient, raw: bytes) -> None:
    response = client.post(
        "/v1/completions", content=raw, headers={"Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    _error(response)
    assert client.get("/health").status_code == 200
    ok = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3})
    assert ok.json()["choices"][0]["text"] == _text("Hi", 3)


def test_context_bound(client: TestClient) -> None:
    response = client.post("/v1/completions", json={"prompt": "a" * 60, "max_tokens": 5})
    assert response.status_code == 400
    assert _error(response)["code"] == "context_length_exceeded"
    ok = client.post("/v1/completions", json={"prompt": "a" * 60, "max_tokens": 4})
    assert ok.status_code == 200
    too_long_chat = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "a" * 80}]}
    )
    assert too_long_chat.status_code == 400  # the default max_tokens never goes negative
    chat_default = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "a" * 40}]}
    )
    assert chat_default.json()["usage"]["total_tokens"] == CONTEXT  # defaults fill the room


def test_body_size_bound(client: TestClient) -> None:
    response = client.post("/v1/completions", json={"prompt": "a" * (70 << 10)})
    assert response.status_code == 413
    _error(response)


def test_degenerate_temperature_is_greedy(client: TestClient, engine: FakeDecodeEngine) -> None:
    for temperature in (1e-300, 5e-324, 0.0):
        response = client.post(
            "/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "temperature": temperature}
        )
        assert response.status_code == 200
    assert engine.temperatures == [0.0, 0.0, 0.0]


def test_auth_on_every_route_but_health() -> None:
    app = make_app(ServerConfig(token=TOKEN), text=(byte_codec(), FakeDecodeEngine()))
    with TestClient(app) as anonymous:
        assert anonymous.get("/health").status_code == 200
        for method, path in [
            ("GET", "/v1/models"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
            ("GET", "/docs"),
            ("POST", "/v1/completions"),
            ("POST", "/v1/chat/completions"),
            ("GET", "/nowhere"),
        ]:
            response = anonymous.request(method, path)
            assert response.status_code == 401, path
            assert _error(response)["type"] == "authentication_error"
        wrong = anonymous.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert anonymous.get("/v1/models", headers=AUTH).status_code == 200


def test_queue_full_answers_429_then_recovers(client: TestClient, engine: FakeDecodeEngine) -> None:
    engine.gate = threading.Event()
    results: list[int] = []

    def call() -> None:
        results.append(
            client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code
        )

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    server = client.app.server  # type: ignore[attr-defined]
    deadline = threading.Event()
    for _ in range(500):
        if server.active_text == 4:
            break
        deadline.wait(0.01)
    assert server.active_text == 4
    refused = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert refused.status_code == 429
    assert _error(refused)["code"] == "rate_limit_exceeded"
    engine.gate.set()
    for t in threads:
        t.join(10)
    assert results == [200] * 4
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_engine_error_is_503_and_unhealthy_stage_fails_health(
    client: TestClient, engine: FakeDecodeEngine
) -> None:
    engine.fail_with = "stage b raised"
    response = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert response.status_code == 503
    assert "stage b raised" in _error(response)["message"]
    engine.fail_with = ""
    engine.healthy = False
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable"
    engine.healthy = True
    assert client.get("/health").status_code == 200


def test_stream_abandoned_aborts_sequence(client: TestClient, engine: FakeDecodeEngine) -> None:
    engine.step_s = 0.02
    body = {"prompt": "x", "max_tokens": 50, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break  # leave after the first token
    server = client.app.server  # type: ignore[attr-defined]
    for _ in range(500):
        if not engine.live and server.active_text == 0:
            break
        threading.Event().wait(0.01)
    assert not engine.live, "the sequence kept decoding after its client left"
    assert engine.submitted[-1].request_id in engine.aborted
    assert server.active_text == 0


def test_embeddings_bounds(client: TestClient) -> None:
    too_long = client.post("/v1/embeddings", json={"input": "a" * 40})
    assert too_long.status_code == 400
    assert _error(too_long)["code"] == "context_length_exceeded"
    ids = client.post("/v1/embeddings", json={"input": [[5, 6], [7]], "encoding_format": "base64"})
    vectors = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in ids.json()["data"]]
    assert len(vectors) == 2
    assert vectors[1][0] == pytest.approx(7 / np.sqrt(49 + 49**2 + 1))
    assert client.post("/v1/embeddings", json={"input": [True]}).status_code == 400


def test_classify_upload(client: TestClient) -> None:
    response = client.post(
        "/v1/classify?top_k=2", files={"file": ("a.png", b"IMG\x01\x09\x03\x02", "image/png")}
    )
    labels = response.json()["labels"]
    assert [x["label"] for x in labels] == ["l1", "l2"]
    assert labels[0]["score"] > labels[1]["score"]
    bad = client.post("/v1/classify", files={"file": ("a.png", b"nope", "image/png")})
    assert bad.status_code == 400
    empty = client.post("/v1/classify", files={"file": ("a.png", b"", "image/png")})
    assert empty.status_code == 400
    assert client.post("/v1/classify").status_code == 400


def test_metrics_report_tokens_and_batches(client: TestClient) -> None:
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
    client.post("/v1/embeddings", json={"input": ["a", "b", "c"]})
    text = client.get("/metrics").text
    assert "edgesplit_serving_generated_tokens_total 3.0" in text
    assert "edgesplit_serving_time_to_first_token_seconds_count 1.0" in text
    assert "edgesplit_serving_batch_size_count" in text
    assert 'edgesplit_serving_requests_total{route="/v1/completions",status="200"}' in text
    for index in range(3):
        client.get(f"/random/{index}")
    text = client.get("/metrics").text
    assert "/random/" not in text  # unknown paths share one label value
    assert 'route="unmatched",status="404"' in text


def test_serves_only_what_it_has() -> None:
    app = make_app(ServerConfig(), text=(byte_codec(chat=False), FakeDecodeEngine()))
    with TestClient(app) as c:
        assert c.post("/v1/embeddings", json={"input": "a"}).status_code == 404
        chat = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}]})
        assert chat.status_code == 400
        json.loads(c.get("/openapi.json").text)
