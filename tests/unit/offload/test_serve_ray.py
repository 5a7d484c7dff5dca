"""Ray Serve hosting without starting Ray: session header, replica tag, config, CLI wiring."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from edgesplit.cli.offload import register
from edgesplit.offload import serve_ray
from edgesplit.offload.codec import encode_patches
from edgesplit.offload.patches import patchify
from edgesplit.offload.pipeline import tiny_pipeline
from edgesplit.offload.protocol import CONTENT_TYPE, PatchRequestHeader, encode_frame
from edgesplit.offload.serve_ray import (
    REPLICA_HEADER,
    SESSION_HEADER,
    RayServeConfig,
    SessionAffinityTransport,
    frame_request_id,
)
from edgesplit.offload.server import ServerConfig, create_app


def _frame(request_id: str = "img-42", round_index: int = 1) -> bytes:
    image = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    payload = encode_patches(patchify(image, 8)[[0, 5, 9]], "zlib")
    header = PatchRequestHeader(
        request_id=request_id,
        round_index=round_index,  # type: ignore[arg-type]
        session_id="s1" if round_index == 2 else None,
        image_size=64,
        patch_size=8,
        codec="zlib",
        indices=[0, 5, 9],
        payload_bytes=len(payload),
    )
    return encode_frame(header, payload)


def test_frame_request_id_reads_the_header_only() -> None:
    frame = _frame()
    assert frame_request_id(frame) == "img-42"
    header_end = 9 + int.from_bytes(frame[5:9], "big")  # magic, version, length, header
    assert frame_request_id(frame[:header_end]) == "img-42"  # the payload is not needed
    assert frame_request_id(frame[: header_end - 1]) is None
    assert frame_request_id(_frame("r", round_index=2)) == "r"


@pytest.mark.parametrize(
    "head",
    [b"", b"ESP", b"\x00\x01garbage", b"JUNK\x01\x00\x00\x00\x02ab", b"ESPL\x01\x00\x00\x00\x09ab"],
)
def test_frame_request_id_never_raises_on_junk(head: bytes) -> None:
    assert frame_request_id(head) is None


def _recording_transport() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handler), seen


def test_transport_sets_session_header_from_frame() -> None:
    inner, seen = _recording_transport()
    frame = _frame("same-id")
    with httpx.Client(base_url="http://x", transport=SessionAffinityTransport(inner)) as http:
        http.post("/v1/infer", content=frame, headers={"content-type": CONTENT_TYPE})
        http.post("/prefix/v1/infer", content=_frame("same-id", 2))
        http.get("/v1/info")
        http.post("/v1/infer", content=b"not a frame")
        http.post("/v1/infer", content=frame, headers={SESSION_HEADER: "caller-chose"})
    assert [r.headers.get(SESSION_HEADER) for r in seen] == [
        "same-id",
        "same-id",
        None,
        None,
        "caller-chose",
    ]
    assert seen[0].content == frame  # body untouched


def test_transport_peeks_streamed_bodies_without_losing_bytes() -> None:
    inner, seen = _recording_transport()
    frame = _frame("streamed")
    cut = len(frame) - 20

    def chunks() -> Iterator[bytes]:
        yield frame[:cut]  # first chunk: whole frame header (as OffloadClient.send_progressive)
        yield frame[cut:]

    with httpx.Client(base_url="http://x", transport=SessionAffinityTransport(inner)) as http:
        http.post("/v1/infer", content=chunks())
    assert seen[0].headers[SESSION_HEADER] == "streamed"
    assert seen[0].content == frame


def test_replica_header_middleware_tags_every_answer() -> None:
    app = create_app(tiny_pipeline(), ServerConfig())
    app.add_middleware(serve_ray._ReplicaHeader, value="replica-a")
    client = TestClient(app)
    assert client.get("/health").headers[REPLICA_HEADER] == "replica-a"
    bad = client.post("/v1/infer", content=b"junk", headers={"content-type": CONTENT_TYPE})
    assert bad.status_code == 400
    assert bad.headers[REPLICA_HEADER] == "replica-a"


def test_config_validates() -> None:
    assert RayServeConfig().replicas == 2
    with pytest.raises(ValueError):
        RayServeConfig(replicas=0)
    with pytest.raises(ValueError):
        RayServeConfig(num_cpus=0)


def _cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_cli_help_teaches_ray_replicas() -> None:
    result = CliRunner().invoke(_cli(), ["offload", "serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--ray-replicas" in result.output
    assert "uvicorn" in result.output


def test_cli_routes_to_ray_serve_only_with_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []

    def fake_ray(
        config: RayServeConfig, server: ServerConfig, weights: Path | None, **kw: Any
    ) -> None:
        calls.append(("ray", (config, server, kw)))

    def fake_uvicorn(server: ServerConfig | None, weights: Path | None, **kw: Any) -> None:
        calls.append(("uvicorn", (server, kw)))

    monkeypatch.setattr(serve_ray, "serve_forever", fake_ray)
    # the CLI reaches the server through the api (issue 14): patch the api's door
    monkeypatch.setattr("edgesplit.api.offload.serve_offload", fake_uvicorn)
    runner = CliRunner()
    with socket.socket() as probe:  # a free port: the Ray path checks it can be bound first
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    assert runner.invoke(_cli(), ["offload", "serve", "--tiny", "--port", port]).exit_code == 0
    result = runner.invoke(
        _cli(),
        ["offload", "serve", "--tiny", "--ray-replicas", "3", "--ray-cpus", "0.5", "--port", port],
    )
    assert result.exit_code == 0, result.output
    assert [kind for kind, _ in calls] == ["uvicorn", "ray"]
    config, server, kw = calls[1][1]
    assert (config.replicas, config.num_cpus, config.affinity) == (3, 0.5, True)
    assert server.port == int(port)
    assert kw.pop("tiny") is True
    assert set(kw) == {"on_ready"}  # the "server on" line waits for the replicas
