"""The server app in-process (tiny random model): validation, auth, sessions, reuse, metrics."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgesplit.offload.codec import encode_patches
from edgesplit.offload.patches import patchify
from edgesplit.offload.pipeline import tiny_pipeline
from edgesplit.offload.protocol import CONTENT_TYPE, PatchRequestHeader, encode_frame
from edgesplit.offload.server import ServerConfig, create_app

IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)


def _body(indices: list[int], **overrides: object) -> bytes:
    payload = encode_patches(patchify(IMAGE, 8)[indices], "zlib")
    fields: dict[str, object] = {
        "request_id": "req-1",
        "image_size": 64,
        "patch_size": 8,
        "codec": "zlib",
        "indices": indices,
        "payload_bytes": len(payload),
    }
    fields.update(overrides)
    return encode_frame(PatchRequestHeader.model_validate(fields), payload)


@pytest.fixture
def client() -> TestClient:
    config = ServerConfig(token="s3cret", max_body_bytes=4096)
    app = create_app(tiny_pipeline(), config)
    return TestClient(app, headers={"authorization": "Bearer s3cret"})


def _post(client: TestClient, body: bytes, **headers: str) -> object:
    return client.post("/v1/infer", content=body, headers={"content-type": CONTENT_TYPE, **headers})


def test_round1_then_round2_reuses_session(client: TestClient) -> None:
    first = _post(client, _body([0, 9, 18, 27], extra_k=4)).json()  # type: ignore[attr-defined]
    assert first["num_received"] == 4
    assert len(first["requested_indices"]) == 4
    assert not set(first["requested_indices"]) & {0, 9, 18, 27}
    assert abs(sum(first["probabilities"]) - 1) < 1e-4
    second = _post(
        client,
        _body(
            first["requested_indices"],
            request_id="req-1",
            round_index=2,
            session_id=first["session_id"],
        ),
    ).json()  # type: ignore[attr-defined]
    assert second["num_received"] == 8
    assert second["reused_round1"] is True
    again = _post(client, _body([0, 9, 18, 27], extra_k=4)).json()  # type: ignore[attr-defined]
    assert again == first  # a retried request id gets the remembered answer


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"garbage-body", {}, 400, "bad_frame"),
        (_body([0]), {"authorization": "Bearer wrong"}, 401, "unauthorized"),
        (_body([0]), {"content-type": "application/octet-stream"}, 415, "content_type"),
        (b"E" * 5000, {}, 413, "too_large"),
        (_body([0], image_size=128), {}, 422, "geometry"),
        (_body([0], round_index=2, session_id="nope"), {}, 409, "unknown_session"),
    ],
)
def test_errors_are_clear_4xx(
    client: TestClient, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    response = _post(client, body, **headers)
    assert response.status_code == status  # type: ignore[attr-defined]
    assert response.json()["error"] == code  # type: ignore[attr-defined]
    assert response.json()["detail"]  # type: ignore[attr-defined]
    assert client.get("/health").status_code == 200


def test_payload_that_does_not_decode_is_422(client: TestClient) -> None:
    header = PatchRequestHeader(
        request_id="x", image_size=64, patch_size=8, codec="raw", indices=[1, 2], payload_bytes=3
    )
    response = _post(client, encode_frame(header, b"abc"))
    assert response.status_code == 422  # type: ignore[attr-defined]
    assert "expected 128" in response.json()["detail"]  # type: ignore[attr-defined]


def test_info_metrics_status_page(client: TestClient) -> None:
    info = client.get("/v1/info").json()
    assert info["num_patches"] == 64
    assert sorted(info["patch_order"]) == list(range(64))
    assert TestClient(client.app).get("/v1/info").status_code == 401  # no token
    _post(client, _body([1, 2]))
    metrics = client.get("/metrics").text
    assert 'edgesplit_offload_requests_total{round="1",status="200"} 1.0' in metrics
    assert "edgesplit_offload_compute_seconds_bucket" in metrics
    page = client.get("/").text
    assert "answered requests" in page
