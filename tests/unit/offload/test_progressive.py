"""Progressive round 1: segments that decode on their own, frames cut at a segment boundary, the
policy's expected accuracy for a cut upload and the online cut rule, and the client cutting a
real upload on an emulated link (fake clock) against the app in-process."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from edgesplit.offload.client import LinkEmulator, OffloadClient, RetryConfig, _StreamedBody
from edgesplit.offload.codec import decode_segments, encode_segments
from edgesplit.offload.emulation import BandwidthTrace, TokenBucket
from edgesplit.offload.patches import patchify
from edgesplit.offload.pipeline import tiny_pipeline
from edgesplit.offload.policy import OffloadOption, choose, segment_fits
from edgesplit.offload.protocol import (
    FrameError,
    PatchRequestHeader,
    decode_frame,
    encode_frame,
)
from edgesplit.offload.server import create_app

IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
ENDS = [4, 8, 16, 32]


def _option(**overrides: object) -> OffloadOption:
    fields: dict[str, object] = {
        "sampling": "server",
        "codec": "zlib",
        "k1": 32,
        "accuracy": 0.85,
        "accuracy_round1": 0.85,
        "bytes1_mean": 2000,
        "bytes1_p95": 2000,
        "server1_s": 0.01,
        "prefix_ends": tuple(ENDS),
        "prefix_accuracy": (0.6, 0.7, 0.78, 0.85),
        "prefix_bytes_mean": (400, 700, 1200, 2000),
        "prefix_bytes_p95": (400, 700, 1200, 2000),
        "prefix_server_s": (0.01, 0.01, 0.01, 0.01),
    }
    fields.update(overrides)
    return OffloadOption.model_validate(fields)


def _frame(codec: str = "zlib") -> tuple[bytes, list[bytes], PatchRequestHeader]:
    patches = patchify(IMAGE, 8)[:32]
    segments = encode_segments(patches, ENDS, codec, 50)  # type: ignore[arg-type]
    header = PatchRequestHeader(
        request_id="r1",
        image_size=64,
        patch_size=8,
        codec=codec,  # type: ignore[arg-type]
        quality=50 if codec != "zlib" else None,
        indices=list(range(32)),
        payload_bytes=sum(len(s) for s in segments),
        segment_ends=ENDS,
        segment_bytes=[len(s) for s in segments],
    )
    return encode_frame(header, b"".join(segments)), segments, header


def test_every_prefix_of_segments_decodes_to_its_patches() -> None:
    patches = patchify(IMAGE, 8)[:32]
    segments = encode_segments(patches, ENDS, "zlib")
    for j, end in enumerate(ENDS):
        got = decode_segments(
            b"".join(segments[: j + 1]),
            [len(s) for s in segments[: j + 1]],
            ENDS[: j + 1],
            "zlib",
            8,
        )
        np.testing.assert_array_equal(got, patches[:end])
    with pytest.raises(ValueError, match="increase strictly"):
        encode_segments(patches, [8, 8, 32], "zlib")
    with pytest.raises(ValueError, match="segment 1"):
        decode_segments(
            b"".join(segments[:2])[:-3] + b"xyz",
            [len(s) for s in segments[:2]],
            ENDS[:2],
            "zlib",
            8,
        )


def test_a_frame_cut_after_a_segment_describes_only_what_arrived() -> None:
    body, segments, header = _frame()
    prefix = len(body) - header.payload_bytes
    for j, end in enumerate(ENDS):
        cut = body[: prefix + sum(len(s) for s in segments[: j + 1])]
        got, payload = decode_frame(cut)
        assert got.indices == list(range(end))
        assert got.segment_ends == ENDS[: j + 1]
        assert got.payload_bytes == len(payload)
    with pytest.raises(FrameError, match="segment boundary"):
        decode_frame(body[: prefix + len(segments[0]) + 1])
    bad = header.model_dump()
    bad["segment_bytes"] = [1, 1, 1, 1]
    with pytest.raises(ValidationError, match="segment_bytes"):
        PatchRequestHeader.model_validate(bad)


def test_the_server_answers_from_the_segments_that_arrived() -> None:
    app = TestClient(create_app(tiny_pipeline()))
    body, segments, header = _frame("webp")
    prefix = len(body) - header.payload_bytes
    cut = body[: prefix + len(segments[0]) + len(segments[1])]
    answer = app.post(
        "/v1/infer", content=cut, headers={"content-type": "application/x-edgesplit-patches"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["num_received"] == 8
    torn = app.post(
        "/v1/infer",
        content=cut[:-1],
        headers={"content-type": "application/x-edgesplit-patches"},
    )
    assert torn.status_code == 400
    assert "segment boundary" in torn.json()["detail"]


def test_policy_expects_the_accuracy_of_the_prefix_that_fits() -> None:
    option = _option()
    # 1 kB/s: 400+300 B take 0.7 s, 700+300 B 1.0 s; budget 0.9 * 1.2 = 1.08 s minus rtt/server.
    decision = choose([option], bandwidth_bytes_per_s=1000, rtt_s=0.02, slo_s=1.2)
    assert decision.feasible
    assert decision.expected_accuracy == pytest.approx(0.7)
    fast = choose([option], bandwidth_bytes_per_s=1e6, rtt_s=0.02, slo_s=1.2)
    assert fast.expected_accuracy == pytest.approx(0.85)
    # Not even the first segment fits: no progressive score, best effort instead.
    hopeless = choose([option], bandwidth_bytes_per_s=100, rtt_s=0.02, slo_s=1.2)
    assert not hopeless.feasible
    # A drop like those seen before would sink even the first segment: not chosen robustly.
    one_shot = _option(
        prefix_ends=(),
        prefix_accuracy=(),
        prefix_bytes_mean=(),
        prefix_bytes_p95=(),
        prefix_server_s=(),
        k1=4,
        bytes1_p95=100,
        bytes1_mean=100,
        accuracy=0.5,
        accuracy_round1=0.5,
    )
    robust = choose(
        [option, one_shot],
        bandwidth_bytes_per_s=1e4,
        rtt_s=0.02,
        slo_s=0.2,
        pessimistic_bytes_per_s=2500.0,
    )
    assert robust.option is one_shot


def test_segment_rule_uses_the_rate_this_upload_achieved() -> None:
    option = _option()
    common = {"segment_bytes": 500.0, "slo_s": 1.0, "rtt_s": 0.02}
    assert segment_fits(
        option, 0, sent_bytes=0, upload_s=0, elapsed_s=5.0, bandwidth_bytes_per_s=1.0, **common
    )  # the first always goes
    # The estimate says 10 kB/s, but this upload moved 700 B in 0.7 s: 1 kB/s -> 0.5 s more.
    assert not segment_fits(
        option,
        1,
        sent_bytes=700,
        upload_s=0.7,
        elapsed_s=0.7,
        bandwidth_bytes_per_s=10_000,
        **common,
    )
    assert segment_fits(
        option,
        1,
        sent_bytes=700,
        upload_s=0.07,
        elapsed_s=0.07,
        bandwidth_bytes_per_s=10_000,
        **common,
    )


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += max(0.0, s)


def _route(app: TestClient, seen: list[bytes]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        body = request.read()
        if request.url.path == "/v1/infer":
            seen.append(body)
        answer = app.request(
            request.method, request.url.path, content=body, headers=dict(request.headers)
        )
        return httpx.Response(
            answer.status_code, headers=dict(answer.headers), content=answer.content
        )

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(("rate", "expect_cut"), [(200_000.0, False), (4_000.0, True)])
def test_client_cuts_a_slow_upload_at_the_deadline(rate: float, expect_cut: bool) -> None:
    app = TestClient(create_app(tiny_pipeline()))
    clock = _FakeClock()
    trace = BandwidthTrace("flat", 1.0, np.array([rate]))
    link = LinkEmulator(
        TokenBucket(trace, burst_bytes=0.0), 0.01, clock=clock, sleep=clock.sleep, origin_s=0.0
    )
    seen: list[bytes] = []
    option = _option(codec="webp", quality=50)
    with OffloadClient(
        "http://edge",
        transport=_route(app, seen),
        link=link,
        clock=clock,
        sleep=clock.sleep,
        retry=RetryConfig(max_attempts=1),
        initial_bandwidth_bytes_per_s=rate,
    ) as client:
        result = client.classify(IMAGE, [option], slo_s=0.3)
    header, _ = decode_frame(seen[0])
    assert header.server_order
    assert header.segment_ends is not None
    assert result.response.num_received == header.segment_ends[-1]
    if expect_cut:
        assert result.response.num_received < 32
        assert result.latency_s <= 0.3  # the cut kept the frame within its SLO
    else:
        assert result.response.num_received == 32


def test_streamed_body_replays_the_same_parts_on_retry() -> None:
    decisions = iter([True, False])
    body = _StreamedBody([b"aa", b"bb", b"cc"], lambda j, sent, wire: next(decisions))
    assert b"".join(body) == b"aabb"
    assert b"".join(body) == b"aabb"  # a retry sends exactly what the first pass did
    assert body.sent_bytes == 4
