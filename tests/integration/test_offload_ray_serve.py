"""The offload server as a Ray Serve app with 2 replicas, over real HTTP on 127.0.0.1.

One embedded local Ray and one Serve app (tiny seeded model, bearer token) for the module; the
project's client talks to it. Answers equal a reference computation; round 2 reaches the
replica that holds round 1 when the client sends the session header, and falls back correctly
(409 -> one full round) when it does not; malformed requests get clear 4xx answers and the app
keeps serving; /health and /metrics answer.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from edgesplit.offload.client import OffloadClient, RetryConfig
from edgesplit.offload.patches import patchify
from edgesplit.offload.pipeline import OffloadPipeline, RoundResult, tiny_pipeline
from edgesplit.offload.policy import OffloadOption
from edgesplit.offload.protocol import CONTENT_TYPE
from edgesplit.offload.serve_ray import (
    REPLICA_HEADER,
    SESSION_HEADER,
    RayServeConfig,
    SessionAffinityTransport,
    running,
)
from edgesplit.offload.server import ServerConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("ray.serve", reason="ray[serve] extras not installed")

TOKEN = "serve-token"
K1, K2 = 16, 8
# One two-round option, taken every time (tau above any confidence, generous SLO), so that
# OffloadClient.classify exercises round 2 and its 409 fallback on every image.
TWO_ROUNDS = OffloadOption(
    sampling="server",
    codec="raw",
    k1=K1,
    k2=K2,
    tau=1.01,
    accuracy=0.9,
    accuracy_round1=0.8,
    round2_fraction=1.0,
    bytes1_mean=1300.0,
    bytes1_p95=1300.0,
    bytes2_mean=700.0,
    bytes2_p95=700.0,
    server1_s=0.01,
    server2_s=0.01,
)
RETRY = RetryConfig(max_attempts=5, base_backoff_s=0.05, max_backoff_s=0.5, timeout_s=60)


class Recorder(httpx.BaseTransport):
    """Passes requests on and records (path, status, answering replica) of each."""

    def __init__(self, *, strip_session: bool = False) -> None:
        self._inner = httpx.HTTPTransport()
        self.calls: list[tuple[str, int, str]] = []
        self._strip_session = strip_session  # act like a client that sends no x-session-id

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._strip_session and "x-session-id" in request.headers:
            del request.headers["x-session-id"]
        response = self._inner.handle_request(request)
        replica = response.headers.get(REPLICA_HEADER, "")
        self.calls.append((request.url.path, response.status_code, replica))
        return response

    def close(self) -> None:
        self._inner.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = ServerConfig(port=_free_port(), token=TOKEN, max_body_bytes=65536)
    with running(
        RayServeConfig(replicas=2, num_cpus=0.25, startup_timeout_s=180), server, tiny=True
    ) as base:
        yield base


PIPELINE = tiny_pipeline()  # same seed as the replicas': answers are reproducible


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 64)).astype(np.uint8)


def _run(image: np.ndarray, indices: list[int], previous: RoundResult | None = None) -> RoundResult:
    chosen = sorted(indices)
    return PIPELINE.run(patchify(image, 8)[chosen][None], np.array([chosen]), previous)


def _references(image: np.ndarray) -> tuple[int, int, list[int]]:
    """(label with round-1 reuse, label from scratch with k1 + k2 patches, round-2 indices)."""
    first_indices = list(range(K1))  # the tiny server publishes the identity patch order
    first = _run(image, first_indices)
    extra = [
        int(i)
        for i in OffloadPipeline.most_uncertain(first, K2)[0]
        if np.isfinite(first.uncertainty[0, i])
    ]
    reused = _run(image, extra, first)
    scratch = _run(image, first_indices + extra)
    return (
        int(np.argmax(reused.probabilities[0])),
        int(np.argmax(scratch.probabilities[0])),
        extra,
    )


def test_answers_equal_reference_on_both_replicas(url: str) -> None:
    recorder = Recorder()
    indices = list(range(0, 64, 3))
    with OffloadClient(url, token=TOKEN, retry=RETRY, transport=recorder) as client:
        for seed in range(16):
            image = _image(seed)
            answer, _ = client.send_round(image, indices, codec="raw")
            expected = _run(image, indices).probabilities[0]
            np.testing.assert_allclose(answer.probabilities, expected, atol=1e-5)
            assert answer.label == int(np.argmax(expected))
    replicas = {replica for _, status, replica in recorder.calls if status == 200}
    assert len(replicas) == 2, f"16 requests without a session header reached {replicas}"


def test_round2_reaches_round1_replica_with_affinity(url: str) -> None:
    recorder = Recorder()
    transport = SessionAffinityTransport(recorder)
    with OffloadClient(url, token=TOKEN, retry=RETRY, transport=transport) as client:
        for seed in range(100, 108):
            image = _image(seed)
            result = client.classify(image, [TWO_ROUNDS], slo_s=30.0)
            reused_label, _, _ = _references(image)
            assert len(result.rounds) == 2
            assert result.response.round_index == 2
            assert result.response.reused_round1
            assert result.response.num_received == K1 + K2
            assert result.response.label == reused_label
    infer = [(status, replica) for path, status, replica in recorder.calls if "infer" in path]
    assert [status for status, _ in infer] == [200] * 16, infer
    pairs = [(infer[i][1], infer[i + 1][1]) for i in range(0, len(infer), 2)]
    assert all(a == b for a, b in pairs), pairs  # both rounds of an image on one replica


def test_round2_without_affinity_falls_back_to_one_full_round(url: str) -> None:
    recorder = Recorder(strip_session=True)
    fallbacks = 0
    with OffloadClient(url, token=TOKEN, retry=RETRY, transport=recorder) as client:
        for seed in range(200, 216):
            image = _image(seed)
            result = client.classify(image, [TWO_ROUNDS], slo_s=30.0)
            reused_label, scratch_label, _ = _references(image)
            answer = result.response
            assert answer.num_received == K1 + K2
            if answer.round_index == 2:  # round 2 happened to reach round 1's replica
                assert answer.reused_round1
                assert answer.label == reused_label
            else:  # 409 unknown_session -> everything resent as one fresh round 1
                fallbacks += 1
                assert not answer.reused_round1
                assert answer.label == scratch_label
    conflicts = [status for path, status, _ in recorder.calls if status == 409]
    assert fallbacks == len(conflicts)
    # Uniform routing over 2 replicas: about half of the round 2s miss (P(none of 16) = 2^-16).
    assert 0 < fallbacks < 16, fallbacks


def test_bad_requests_get_4xx_and_app_keeps_serving(url: str) -> None:
    auth = {"authorization": f"Bearer {TOKEN}", "content-type": CONTENT_TYPE}
    cases = [
        (b"\x00\x01garbage", auth, 400, "bad_frame"),
        (b"ESPL\x07\x00\x00\x00\x00", auth, 400, "protocol_version"),
        (b"E" * 70_000, auth, 413, "too_large"),
        (b"ESPL", {"content-type": CONTENT_TYPE}, 401, "unauthorized"),
        (b"ESPL", {**auth, "content-type": "text/plain"}, 415, "content_type"),
    ]
    with httpx.Client(base_url=url, timeout=30) as http:
        for body, headers, status, code in cases:
            response = http.post("/v1/infer", content=body, headers=headers)
            assert response.status_code == status, response.text
            assert response.json()["error"] == code
            assert response.json()["detail"]
        health = http.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        # Each replica keeps its own Prometheus registry: read /metrics until both answered.
        texts: dict[str, str] = {}
        for _ in range(40):
            metrics = http.get("/metrics")
            assert metrics.status_code == 200
            texts[metrics.headers[REPLICA_HEADER]] = metrics.text
            if len(texts) == 2:
                break
        assert len(texts) == 2
        joined = "\n".join(texts.values())
        assert "edgesplit_offload_requests_total" in joined
        for status in (400, 401, 413, 415):
            assert f'status="{status}"' in joined
        # a session header on a request that is not a frame changes nothing
        response = http.post("/v1/infer", content=b"junk", headers={**auth, SESSION_HEADER: "abc"})
        assert response.status_code == 400
    with OffloadClient(url, token=TOKEN, retry=RETRY) as client:
        answer, _ = client.send_round(_image(7), [1, 2, 3, 40], codec="zlib")
        assert answer.num_received == 4
