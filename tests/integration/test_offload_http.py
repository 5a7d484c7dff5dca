"""Offload server and client over real HTTP on 127.0.0.1 (server in a subprocess, tiny model).

Malformed, oversized and unauthenticated requests get clear 4xx answers and the server keeps
serving; a server killed mid-stream and restarted loses no request that the client retries.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgesplit.offload.client import LinkEmulator, OffloadClient, RetryConfig
from edgesplit.offload.emulation import BandwidthTrace, TokenBucket
from edgesplit.offload.patches import patchify
from edgesplit.offload.pipeline import tiny_pipeline
from edgesplit.offload.policy import OffloadOption
from edgesplit.offload.protocol import CONTENT_TYPE

pytestmark = pytest.mark.integration

TOKEN = "test-token"
SRC = Path(__file__).resolve().parents[2] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> None:
    pause = threading.Event()
    deadline = timeout_s / interval_s
    for _ in range(int(deadline)):
        if predicate():
            return
        pause.wait(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def _start(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgesplit.offload.server",
            "--tiny",
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--max-body-bytes",
            "65536",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: _healthy(port) or process.poll() is not None, timeout_s=90)
    except AssertionError:
        process.kill()
        raise
    assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def server() -> Iterator[int]:
    port = _free_port()
    process = _start(port)
    yield port
    _stop(process)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 64)).astype(np.uint8)


def test_bad_requests_get_4xx_and_server_keeps_serving(server: int) -> None:
    url = f"http://127.0.0.1:{server}"
    auth = {"authorization": f"Bearer {TOKEN}", "content-type": CONTENT_TYPE}
    cases = [
        (b"\x00\x01garbage", auth, 400),
        (b"ESPL\x07\x00\x00\x00\x00", auth, 400),  # unknown protocol version
        (b"E" * 70_000, auth, 413),
        (b"ESPL", {"content-type": CONTENT_TYPE}, 401),
        (b"ESPL", {**auth, "authorization": "Bearer nope"}, 401),
    ]
    with httpx.Client(base_url=url, timeout=10) as http:
        for body, headers, status in cases:
            response = http.post("/v1/infer", content=body, headers=headers)
            assert response.status_code == status, response.text
            assert response.json()["detail"]
        # a streamed oversized body without content-length is cut off too
        chunks = iter([b"E" * 40_000, b"E" * 40_000])
        response = http.post("/v1/infer", content=chunks, headers=auth)
        assert response.status_code == 413
        assert http.get("/health").status_code == 200
    with OffloadClient(url, token=TOKEN) as client:
        info = client.info()
        answer, stats = client.send_round(
            _image(0), info.patch_order[:16], codec="jpeg", quality=50, extra_k=8
        )
        assert answer.num_received == 16
        assert len(answer.requested_indices) == 8
        second, _ = client.send_round(
            _image(0),
            answer.requested_indices,
            codec="jpeg",
            quality=50,
            request_id=answer.request_id,
            round_index=2,
            session_id=answer.session_id,
        )
        assert second.num_received == 24
        assert second.reused_round1
        assert stats.body_bytes > 0
        metrics = httpx.get(f"{url}/metrics").text
        assert 'status="413"' in metrics
        assert 'status="401"' in metrics


@pytest.mark.slow
def test_restart_mid_stream_loses_no_retried_request() -> None:
    port = _free_port()
    process = _start(port)
    pipeline = tiny_pipeline()  # same seed as the server's: answers are reproducible
    images = [_image(seed) for seed in range(24)]
    indices = list(range(0, 64, 3))
    expected = [
        int(
            np.argmax(
                pipeline.run(patchify(im, 8)[indices][None], np.array([indices])).probabilities[0]
            )
        )
        for im in images
    ]
    answers: dict[int, int] = {}
    errors: list[BaseException] = []
    killed = threading.Event()  # the stream cannot finish before the kill (a loaded host once
    # let all 24 frames through before the test thread got to kill the server)

    def stream() -> None:
        retry = RetryConfig(max_attempts=200, base_backoff_s=0.05, max_backoff_s=0.3, timeout_s=20)
        try:
            with OffloadClient(f"http://127.0.0.1:{port}", token=TOKEN, retry=retry) as client:
                for i, image in enumerate(images):
                    if i == len(images) // 2:
                        killed.wait(timeout=60)
                    answer, _ = client.send_round(
                        image, indices, codec="raw", request_id=f"frame-{i}"
                    )
                    answers[i] = answer.label
        except BaseException as e:  # surfaced to the test thread below
            errors.append(e)

    worker = threading.Thread(target=stream, daemon=True)
    worker.start()
    try:
        wait_until(lambda: len(answers) >= 6 or bool(errors), timeout_s=60)
        process.send_signal(signal.SIGKILL)  # crash, not a graceful stop
        process.wait(timeout=10)
        killed_at = len(answers)
        killed.set()  # the frames from here on meet a dead port first, then the restarted server
        process = _start(port)
        worker.join(timeout=120)
    finally:
        _stop(process)
    assert not errors, errors
    assert killed_at < len(images)
    assert sorted(answers) == list(range(len(images)))
    assert [answers[i] for i in range(len(images))] == expected


def _progressive_option(codec_quality: tuple[str, int] = ("webp", 50)) -> OffloadOption:
    return OffloadOption(
        sampling="server",
        codec=codec_quality[0],  # type: ignore[arg-type]
        quality=codec_quality[1],
        k1=32,
        accuracy=0.85,
        accuracy_round1=0.85,
        bytes1_mean=1000,
        bytes1_p95=1000,
        server1_s=0.01,
        prefix_ends=(4, 8, 16, 32),
        prefix_accuracy=(0.6, 0.7, 0.8, 0.85),
        prefix_bytes_mean=(300, 400, 600, 1000),
        prefix_bytes_p95=(300, 400, 600, 1000),
        prefix_server_s=(0.01, 0.01, 0.01, 0.01),
    )


def test_progressive_round1_streams_and_is_cut_over_real_http(server: int) -> None:
    """A chunked progressive body reaches the server whole on a fast link; on a slow emulated
    link the device cuts it at the deadline and the server answers from the segments that came."""
    url = f"http://127.0.0.1:{server}"
    option = _progressive_option()
    with OffloadClient(url, token=TOKEN, initial_bandwidth_bytes_per_s=1e6) as client:
        whole = client.classify(_image(7), [option], slo_s=5.0)
    assert whole.response.num_received == 32
    trace = BandwidthTrace("slow", 1.0, np.array([3000.0]))
    link = LinkEmulator(TokenBucket(trace, burst_bytes=0.0), one_way_latency_s=0.005)
    with OffloadClient(
        url, token=TOKEN, link=link, initial_bandwidth_bytes_per_s=3000.0, rtt_s=0.01
    ) as client:
        cut = client.classify(_image(7), [option], slo_s=0.45)
    assert 4 <= cut.response.num_received < 32
    assert cut.rounds[0].body_bytes < whole.rounds[0].body_bytes
