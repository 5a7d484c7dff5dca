"""Issue 19's probes, in-process: each row of its table, with the answer the server must give.

Image bombs and zlib bombs are refused from the protocol's geometry before anything inflates,
a non-ASCII bearer token is a 401, a request id is bound to its body, sessions are the server's,
the OpenAPI schema describes the binary body, and every 500 is JSON and counted.
"""

from __future__ import annotations

import tracemalloc

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from edgesplit.offload.codec import decode_patches, encode_patches
from edgesplit.offload.patches import patchify
from edgesplit.offload.pipeline import OffloadPipeline, RoundResult, tiny_pipeline
from edgesplit.offload.protocol import CONTENT_TYPE
from edgesplit.offload.server import ServerConfig, create_app
from tests.unit.offload.adversarial import (
    ALL_PATCHES,
    frame,
    jpeg_bomb,
    png_bomb,
    webp_bomb,
    webp_lossy_bomb,
    zlib_bomb,
)

TOKEN = "s3cret"
IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
OTHER_IMAGE = np.random.default_rng(1).integers(0, 256, (64, 64)).astype(np.uint8)


def image_frame(image: np.ndarray, indices: list[int], **fields: object) -> bytes:
    return frame(encode_patches(patchify(image, 8)[indices], "zlib"), "zlib", indices, **fields)


def make_client(pipeline: OffloadPipeline | None = None, **config: object) -> TestClient:
    app = create_app(pipeline or tiny_pipeline(), ServerConfig(token=TOKEN, **config))  # type: ignore[arg-type]
    return TestClient(
        app, headers={"authorization": f"Bearer {TOKEN}"}, raise_server_exceptions=False
    )


@pytest.fixture
def client() -> TestClient:
    return make_client()


def post(client: TestClient, body: bytes, **headers: str | bytes) -> httpx.Response:
    return client.post("/v1/infer", content=body, headers={"content-type": CONTENT_TYPE, **headers})


@pytest.mark.parametrize(
    ("codec", "payload"),
    [
        ("png", png_bomb(20_000, 20_000)),
        ("jpeg", jpeg_bomb(65_000, 65_000)),
        ("webp", webp_bomb()),
        ("webp", webp_lossy_bomb()),
        ("png", png_bomb(64, 20_000)),  # only one side too large
    ],
    ids=["png-20000", "jpeg-65000", "webp-vp8x-16384", "webp-vp8-16383", "png-tall"],
)
def test_image_bombs_are_refused_from_geometry_as_json_422(
    client: TestClient, codec: str, payload: bytes
) -> None:
    response = post(client, frame(payload, codec, ALL_PATCHES))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "payload"
    assert "64x64" in body["detail"]  # says what the protocol expected
    assert client.get("/health").json()["status"] == "ok"


def test_image_geometry_is_checked_before_pillow_decodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[object] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    for codec, payload in (("png", png_bomb(20_000, 20_000)), ("jpeg", jpeg_bomb(900, 900))):
        with pytest.raises(ValueError, match="expected 64x64"):
            decode_patches(payload, codec, 64, 8)  # type: ignore[arg-type]
    assert opened == []


def test_zlib_bomb_is_refused_without_inflating_it() -> None:
    bomb = zlib_bomb(64 * 1024 * 1024)  # 64 MiB of zeros in ~64 KB
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="more than"):
            decode_patches(bomb, "zlib", 64, 8)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 1024 * 1024, peak_bytes  # the old code held all 64 MiB at once


def test_zlib_bomb_over_http_is_422(client: TestClient) -> None:
    response = post(client, frame(zlib_bomb(8 * 1024 * 1024), "zlib", ALL_PATCHES))
    assert response.status_code == 422
    assert response.json()["error"] == "payload"


def test_zlib_truncated_or_trailing_data_is_refused() -> None:
    good = encode_patches(patchify(IMAGE, 8)[:4], "zlib")
    with pytest.raises(ValueError, match="truncated"):
        decode_patches(good[:-5], "zlib", 4, 8)
    with pytest.raises(ValueError, match="after the end"):
        decode_patches(good + b"junk", "zlib", 4, 8)
    assert decode_patches(good, "zlib", 4, 8).shape == (4, 8, 8)


@pytest.mark.parametrize("path", ["/v1/infer", "/v1/info"])
def test_non_ascii_bearer_is_401(client: TestClient, path: str) -> None:
    headers = {"authorization": b"Bearer \xe9t\xe9", "content-type": CONTENT_TYPE}
    if path == "/v1/info":
        response = client.get(path, headers=headers)
    else:
        response = client.post(path, content=image_frame(IMAGE, [0]), headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "unauthorized"


def test_non_ascii_token_configured_compares_as_utf8() -> None:
    app = create_app(tiny_pipeline(), ServerConfig(token="s\u00e9cret"))
    client = TestClient(app, raise_server_exceptions=False)
    ok = client.get("/v1/info", headers={"authorization": "Bearer s\u00e9cret".encode()})
    assert ok.status_code == 200
    wrong = client.get("/v1/info", headers={"authorization": "Bearer s\u00e9cre".encode()})
    assert wrong.status_code == 401


def test_request_id_is_bound_to_its_body(client: TestClient) -> None:
    first = post(client, image_frame(IMAGE, [0, 9, 18]))
    assert first.status_code == 200
    retry = post(client, image_frame(IMAGE, [0, 9, 18]))
    assert retry.json() == first.json()  # an identical retry: the remembered answer
    other = post(client, image_frame(OTHER_IMAGE, [0, 9, 18]))
    assert other.status_code == 409, other.text
    assert other.json()["error"] == "request_id_reused"


def test_round1_cannot_name_a_session(client: TestClient) -> None:
    victim = post(client, image_frame(IMAGE, [0, 9, 18, 27], extra_k=4)).json()
    attack = post(
        client,
        image_frame(OTHER_IMAGE, [1, 2], request_id="attacker", session_id=victim["session_id"]),
    )
    assert attack.status_code == 409, attack.text
    assert attack.json()["error"] == "session_assigned_by_server"
    # the victim's round 2 merges only its own patches
    second = post(
        client,
        image_frame(
            IMAGE,
            victim["requested_indices"],
            round_index=2,
            session_id=victim["session_id"],
        ),
    ).json()
    assert second["num_received"] == 8
    assert second["reused_round1"] is True


def test_round2_of_another_request_is_refused(client: TestClient) -> None:
    victim = post(client, image_frame(IMAGE, [0, 9, 18, 27], extra_k=4)).json()
    foreign = post(
        client,
        image_frame(
            OTHER_IMAGE,
            [1, 2],
            request_id="attacker",
            round_index=2,
            session_id=victim["session_id"],
        ),
    )
    assert foreign.status_code == 409, foreign.text
    assert foreign.json()["error"] == "session_mismatch"
    second = post(
        client,
        image_frame(
            IMAGE, victim["requested_indices"], round_index=2, session_id=victim["session_id"]
        ),
    )
    assert second.status_code == 200


def test_sessions_are_server_generated_and_unguessable(client: TestClient) -> None:
    ids = {
        post(client, image_frame(IMAGE, [i], request_id=f"r{i}")).json()["session_id"]
        for i in range(4)
    }
    assert len(ids) == 4
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_openapi_documents_binary_body_and_text_metrics(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    infer = schema["paths"]["/v1/infer"]["post"]
    body = infer["requestBody"]
    assert body["required"] is True
    assert body["content"][CONTENT_TYPE]["schema"] == {"type": "string", "format": "binary"}
    for status in ("200", "400", "401", "409", "413", "415", "422", "500"):
        assert status in infer["responses"], status
    metrics = schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


class _BrokenPipeline(OffloadPipeline):
    """A pipeline whose inference fails: the server must answer a JSON 500 and count it."""

    def __init__(self) -> None:
        tiny = tiny_pipeline()
        super().__init__(tiny.mae, tiny.classifier)

    def run(self, *args: object, **kwargs: object) -> RoundResult:
        raise RuntimeError("boom")


def test_every_500_is_json_and_counted() -> None:
    client = make_client(_BrokenPipeline())
    response = post(client, image_frame(IMAGE, [0]))
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "internal"
    assert "boom" not in response.text  # no internals leak

    def fail() -> None:
        raise KeyError("boom")

    client.app.add_api_route("/v1/fails", fail)  # type: ignore[attr-defined]
    other = client.get("/v1/fails")
    assert other.status_code == 500
    assert other.json()["error"] == "internal"
    metrics = client.get("/metrics").text
    assert 'edgesplit_offload_requests_total{round="1",status="500"} 1.0' in metrics
    assert 'edgesplit_offload_requests_total{round="?",status="500"} 1.0' in metrics
    assert client.get("/health").status_code == 200


def test_round1_without_extra_k_keeps_no_session(client: TestClient) -> None:
    first = post(client, image_frame(IMAGE, [0, 9], request_id="one-round")).json()
    again = post(
        client,
        image_frame(
            IMAGE, [1], request_id="one-round", round_index=2, session_id=first["session_id"]
        ),
    )
    assert again.status_code == 409
    assert again.json()["error"] == "unknown_session"
    assert "edgesplit_offload_sessions 0.0" in client.get("/metrics").text
