"""Inputs the offload library checks itself (review session 12, B2/F4/F5): the server URL,
the checkpoint directory, a live run cut short (no server sockets; the tiny app in-process)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgesplit.errors import ConfigError
from edgesplit.offload.client import OffloadClient, check_url
from edgesplit.offload.live import FrameRecord, LiveRun, classify_frames, iter_frames
from edgesplit.offload.pipeline import tiny_pipeline
from edgesplit.offload.server import DEFAULT_WEIGHTS_DIR, check_weights, create_app
from tests.unit.offload.test_client import TWO_ROUNDS, _client


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("127.0.0.1:8470", "http://127.0.0.1:8470"),
        ("localhost:8470", "http://localhost:8470"),  # not the scheme "localhost"
        (" http://edge:8470/prefix ", "http://edge:8470/prefix"),
        ("https://edge", "https://edge"),
        ("[::1]:8470", "http://[::1]:8470"),
    ],
)
def test_check_url_adds_http_when_there_is_no_scheme(url: str, expected: str) -> None:
    assert check_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://edge:21", "must start with http:// or https://"),
        ("http://", "names no host"),
        ("http://127.0.0.1:99999", "port 99999 is not in 1..65535"),
        ("http://127.0.0.1:0", "port 0 is not in 1..65535"),
        ("127.0.0.1:84x0", "is not a URL"),
    ],
)
def test_check_url_rejects_what_no_request_could_reach(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_url(url)


def test_the_client_sends_to_a_url_given_without_scheme() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(503)

    with OffloadClient("127.0.0.1:8470", transport=httpx.MockTransport(handle)) as client:
        client.retry = client.retry.model_copy(update={"max_attempts": 1})
        with pytest.raises(Exception, match="failed 1 times"):
            client.info()
    assert seen == ["http://127.0.0.1:8470/v1/info"]
    with pytest.raises(ConfigError, match="http:// or https://"):
        OffloadClient("ftp://edge")


def test_check_weights(tmp_path: Path) -> None:
    assert check_weights(None) == DEFAULT_WEIGHTS_DIR  # the bundled checkpoints are complete
    with pytest.raises(ConfigError, match=r"nope is not a directory; run `make models`"):
        check_weights(tmp_path / "nope")
    (tmp_path / "mae.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"\(classifier.safetensors, meta.json missing\)"):
        check_weights(tmp_path)


def test_iter_frames_yields_each_frame_as_it_is_done() -> None:
    """A caller stopped after two frames (Ctrl-C in `offload bench`) keeps those two."""
    server = TestClient(create_app(tiny_pipeline()))
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 64)).astype(np.uint8)
    labels = np.array([1, 2, 3, 4])
    with _client({"r1": server, "r2": server}, []) as client:
        frames = iter_frames(client, images, labels, [TWO_ROUNDS], slo_s=5.0, period_s=0.0)
        done = [next(frames), next(frames)]
        frames.close()
        run = LiveRun.from_frames(done)
        assert run.num_frames == 2
        assert (run.rounds == 2).all()
        whole = classify_frames(client, images, labels, [TWO_ROUNDS], slo_s=5.0, period_s=0.0)
    assert whole.num_frames == 4


def test_a_live_run_needs_a_frame() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        LiveRun.from_frames([])
    run = LiveRun.from_frames([FrameRecord(latency_s=0.2, correct=False, body_bytes=7, rounds=1)])
    assert run.latency_percentile_s(99) == pytest.approx(0.2)
    assert run.slo_attainment(0.1) == 0.0
