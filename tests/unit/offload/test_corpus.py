"""Replay the committed corpus of adversarial frames against one server app (issue 19).

Every frame gets one of the statuses the manifest allows and never a 5xx; afterwards the server
is healthy and a valid two-round request gives the same answer as on a fresh server.
"""

from __future__ import annotations

import json

import httpx
from fastapi.testclient import TestClient

from edgesplit.offload.codec import encode_patches
from edgesplit.offload.patches import patchify
from edgesplit.offload.pipeline import tiny_pipeline
from edgesplit.offload.protocol import CONTENT_TYPE
from edgesplit.offload.server import ServerConfig, create_app
from tests.unit.offload.adversarial import CORPUS_DIR, IMAGE, build_corpus, frame

TOKEN = "s3cret"


def _client() -> TestClient:
    app = create_app(tiny_pipeline(), ServerConfig(token=TOKEN))
    return TestClient(
        app, headers={"authorization": f"Bearer {TOKEN}"}, raise_server_exceptions=False
    )


def _post(client: TestClient, body: bytes) -> httpx.Response:
    return client.post("/v1/infer", content=body, headers={"content-type": CONTENT_TYPE})


def _two_rounds(client: TestClient) -> tuple[dict[str, object], dict[str, object]]:
    first_indices = [0, 9, 18, 27, 36, 45]
    payload = encode_patches(patchify(IMAGE, 8)[first_indices], "zlib")
    first = _post(client, frame(payload, "zlib", first_indices, request_id="ok", extra_k=6))
    assert first.status_code == 200, first.text
    extra = sorted(first.json()["requested_indices"])
    payload = encode_patches(patchify(IMAGE, 8)[extra], "zlib")
    second = _post(
        client,
        frame(
            payload,
            "zlib",
            extra,
            request_id="ok",
            round_index=2,
            session_id=first.json()["session_id"],
        ),
    )
    assert second.status_code == 200, second.text
    return first.json(), second.json()


def _answer(reply: dict[str, object]) -> tuple[object, ...]:
    return reply["label"], reply["probabilities"], reply["num_received"]


def test_committed_corpus_is_what_the_generator_builds() -> None:
    manifest = json.loads((CORPUS_DIR / "manifest.json").read_text())
    corpus = build_corpus()
    assert sorted(manifest) == sorted(corpus)
    for name, (body, statuses) in corpus.items():
        assert (CORPUS_DIR / f"{name}.bin").read_bytes() == body, name
        assert manifest[name] == list(statuses)


def test_corpus_replay_never_5xx_and_server_still_answers_right() -> None:
    reference = _two_rounds(_client())
    client = _client()
    manifest = json.loads((CORPUS_DIR / "manifest.json").read_text())
    seen: dict[str, int] = {}
    for name, statuses in sorted(manifest.items()):
        response = _post(client, (CORPUS_DIR / f"{name}.bin").read_bytes())
        seen[name] = response.status_code
        assert response.status_code in statuses, (name, response.status_code, response.text)
        if response.status_code != 200:
            assert response.json()["detail"], name  # a JSON error that says what failed
    assert len(seen) > 50
    assert sum(status == 422 for status in seen.values()) >= 8  # bombs reached the decoder
    assert client.get("/health").json()["status"] == "ok"
    metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics
    after = _two_rounds(client)
    assert [_answer(r) for r in after] == [_answer(r) for r in reference]
    assert after[1]["reused_round1"] is True
