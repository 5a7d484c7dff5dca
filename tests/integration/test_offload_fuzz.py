"""schemathesis against the offload server's own OpenAPI schema, over HTTP on 127.0.0.1 (issue 19).

The schema documents the binary frame body of POST /v1/infer, so generated bodies reach the frame
parser instead of stopping at 415. Every operation gets a bounded, derandomised number of
examples (positive and negative); schemathesis' default checks (no 5xx, documented status codes,
content types and response schemas) must hold. Afterwards /health is ok and a valid two-round
request gives the same answer as the pipeline computes directly.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import hypothesis
import numpy as np
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from edgesplit.offload.client import OffloadClient
from edgesplit.offload.codec import CODEC_NAMES
from edgesplit.offload.patches import patchify
from edgesplit.offload.pipeline import tiny_pipeline
from edgesplit.offload.protocol import CONTENT_TYPE, PatchRequestHeader, encode_frame
from edgesplit.offload.server import ServerConfig, create_app, server_uvicorn_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "fuzz-token"
EXAMPLES_PER_OPERATION = 60

# Frames are bytes: serialise generated bodies as schemathesis serialises octet streams.
schemathesis.serializer.alias(CONTENT_TYPE, "application/octet-stream")


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> None:
    pause = threading.Event()
    for _ in range(int(timeout_s / interval_s)):
        if predicate():
            return
        pause.wait(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


@pytest.fixture
def server_url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = ServerConfig(port=port, token=TOKEN, max_body_bytes=65536)
    instance = uvicorn.Server(server_uvicorn_config(create_app(tiny_pipeline(), config), config))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    wait_until(lambda: instance.started, timeout_s=30)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


def _framed(case: schemathesis.Case, codec: str, index: int) -> schemathesis.Case:
    """The generated body as the payload of a well-formed frame: reaches the codecs."""
    payload = case.body if isinstance(case.body, bytes) else b""
    header = PatchRequestHeader.model_validate(
        {
            "request_id": f"fuzz-{index}",
            "image_size": 64,
            "patch_size": 8,
            "codec": codec,
            "indices": [0],
            "payload_bytes": len(payload),
        }
    )
    case.body = encode_frame(header, payload)
    return case


def _fuzz(
    operation: schemathesis.APIOperation, headers: dict[str, str], *, framed: bool = False
) -> set[int]:
    """Run the bounded example budget on one operation; the statuses it answered."""
    seen: set[int] = set()
    cases = operation.as_strategy()
    if framed:
        cases = st.builds(_framed, cases, st.sampled_from(CODEC_NAMES), st.integers(0, 10**9))

    @hypothesis.given(case=cases)
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        # A binary schema cannot say "an ESPL frame", so schema-valid bytes are mostly refused
        # (400): positive_data_acceptance does not apply; every other default check does.
        response = case.call_and_validate(
            headers=headers, excluded_checks=[positive_data_acceptance]
        )
        seen.add(response.status_code)

    check()
    return seen


def test_schemathesis_finds_no_5xx_and_the_server_still_answers_right(server_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server_url}/openapi.json")
    auth = {"authorization": f"Bearer {TOKEN}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = sorted(operation.label for operation in operations)
    assert "POST /v1/infer" in labels
    infer = next(op for op in operations if op.label == "POST /v1/infer")
    assert CONTENT_TYPE in [body.media_type for body in infer.body]  # fuzzers reach the parser
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        statuses[operation.label] = _fuzz(operation, auth)
    statuses["POST /v1/infer (framed)"] = _fuzz(infer, auth, framed=True)
    print("statuses by operation:", statuses)
    assert all(status < 500 for seen in statuses.values() for status in seen), statuses
    assert 400 in statuses["POST /v1/infer"], statuses  # bodies were parsed and refused
    assert 422 in statuses["POST /v1/infer (framed)"], statuses  # and reached the decoders
    with OffloadClient(server_url, token=TOKEN) as client:
        info = client.info()
        image = np.random.default_rng(7).integers(0, 256, (64, 64)).astype(np.uint8)
        first_indices = sorted(info.patch_order[:12])
        first, _ = client.send_round(image, first_indices, codec="zlib", extra_k=6)
        second, _ = client.send_round(
            image,
            first.requested_indices,
            codec="zlib",
            request_id=first.request_id,
            round_index=2,
            session_id=first.session_id,
        )
        assert client._http.get("/health").json()["status"] == "ok"
    reference = tiny_pipeline()
    patches = patchify(image, 8)
    round1 = reference.run(
        patches[first_indices][None], np.asarray(first_indices)[None], reuse="incremental"
    )
    extra = sorted(first.requested_indices)
    round2 = reference.run(
        patches[extra][None], np.asarray(extra)[None], round1, reuse="incremental"
    )
    assert first.label == int(np.argmax(round1.probabilities[0]))
    assert second.label == int(np.argmax(round2.probabilities[0]))
    np.testing.assert_allclose(second.probabilities, round2.probabilities[0], atol=1e-5)
