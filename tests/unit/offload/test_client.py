"""The client's adaptive two-round flow against the app in-process (tiny model, no sockets)."""

from __future__ import annotations

import httpx
import numpy as np
from fastapi.testclient import TestClient

from edgesplit.offload.client import OffloadClient, RetryConfig
from edgesplit.offload.pipeline import tiny_pipeline
from edgesplit.offload.policy import OffloadOption
from edgesplit.offload.protocol import PatchRequestHeader, decode_frame
from edgesplit.offload.server import create_app

IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
TWO_ROUNDS = OffloadOption(
    sampling="server",
    codec="webp",
    quality=50,
    k1=8,
    k2=8,
    tau=1.01,
    accuracy=0.8,
    accuracy_round1=0.7,
    round2_fraction=1.0,
    bytes1_mean=300,
    bytes1_p95=300,
    bytes2_mean=200,
    bytes2_p95=200,
    server1_s=0.01,
    server2_s=0.01,
)


def _transport(
    route: dict[str, TestClient], headers_seen: list[PatchRequestHeader]
) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        target = route["r1"]
        if request.url.path == "/v1/infer":
            header, _ = decode_frame(request.content)
            headers_seen.append(header)
            target = route["r2"] if header.round_index == 2 else route["r1"]
        answer = target.request(
            request.method,
            request.url.path,
            content=request.content,
            headers=dict(request.headers),
        )
        # Starlette's TestClient answers with its own httpx-like Response type: copy it over.
        return httpx.Response(
            answer.status_code, headers=dict(answer.headers), content=answer.content
        )

    return httpx.MockTransport(handle)


def _client(route: dict[str, TestClient], seen: list[PatchRequestHeader]) -> OffloadClient:
    return OffloadClient(
        "http://edge",
        transport=_transport(route, seen),
        retry=RetryConfig(max_attempts=2, base_backoff_s=0.001),
        sleep=lambda s: None,
    )


def test_two_rounds_send_only_the_requested_patches() -> None:
    server = TestClient(create_app(tiny_pipeline()))
    seen: list[PatchRequestHeader] = []
    with _client({"r1": server, "r2": server}, seen) as client:
        result = client.classify(IMAGE, [TWO_ROUNDS], slo_s=5.0)
    assert len(result.rounds) == 2
    assert result.response.num_received == 16
    assert result.response.reused_round1
    first, second = seen
    assert len(first.indices) == 8
    assert len(second.indices) == 8
    assert not set(first.indices) & set(second.indices)
    assert second.session_id
    assert result.total_bytes == sum(r.body_bytes for r in result.rounds) > 0


def test_round2_after_a_restart_falls_back_to_one_full_round() -> None:
    before = TestClient(create_app(tiny_pipeline()))
    restarted = TestClient(create_app(tiny_pipeline()))  # knows no session
    seen: list[PatchRequestHeader] = []
    route = {"r1": before, "r2": restarted}
    with _client(route, seen) as client:
        client.info()
        result = client.classify(IMAGE, [TWO_ROUNDS], slo_s=5.0)
    assert [h.round_index for h in seen] == [1, 2, 1]
    assert len(seen[2].indices) == 16
    assert result.response.num_received == 16
    assert not result.response.reused_round1


def test_no_round2_when_the_slo_leaves_no_time() -> None:
    server = TestClient(create_app(tiny_pipeline()))
    seen: list[PatchRequestHeader] = []
    ticks = iter(np.arange(0.0, 100.0, 0.3))  # every clock read advances 0.3 s
    with OffloadClient(
        "http://edge",
        transport=_transport({"r1": server, "r2": server}, seen),
        clock=lambda: float(next(ticks)),
        sleep=lambda s: None,
    ) as client:
        result = client.classify(IMAGE, [TWO_ROUNDS], slo_s=0.8)
    assert len(result.rounds) == 1
    assert [h.round_index for h in seen] == [1]
