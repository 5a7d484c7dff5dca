"""The edge server: a FastAPI app that answers patch requests with a class and a confidence.

Owns HTTP: the binary frame endpoint (POST /v1/infer), /v1/info, /health, /metrics (Prometheus
text from a per-app registry), a small HTML status page at /, the OpenAPI schema of all of them
(the frame body included, so fuzzers reach the parser), the body size limit, optional
bearer-token auth, validation with clear 4xx errors, JSON 500s that are counted, and running it
under uvicorn with read deadlines and a connection cap (http_guard.py). Sessions and remembered
answers are in sessions.py, inference in pipeline.py. Imports protocol/codec/pipeline, never the
client.
"""

from __future__ import annotations

import argparse
import hmac
import html
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgesplit.core.schema import FrozenModel
from edgesplit.errors import ProtocolVersionError
from edgesplit.offload.codec import CODEC_NAMES, decode_patches, decode_segments
from edgesplit.offload.data import CLASS_NAMES
from edgesplit.offload.http_guard import GuardSettings, uvicorn_config
from edgesplit.offload.pipeline import OffloadPipeline, RoundResult, tiny_pipeline
from edgesplit.offload.protocol import (
    CONTENT_TYPE,
    PROTOCOL_VERSION,
    ErrorResponse,
    FrameError,
    PatchRequestHeader,
    PatchResponse,
    ServerInfo,
    decode_frame,
)
from edgesplit.offload.sessions import SessionConflictError, SessionStore, body_digest

__all__ = [
    "DEFAULT_WEIGHTS_DIR",
    "ServerConfig",
    "check_weights",
    "create_app",
    "load_pipeline",
    "serve",
    "server_uvicorn_config",
]

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class ServerConfig(FrozenModel):
    """Knobs of the edge server (defaults < file < flags)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8470, ge=0, le=65535)
    max_body_bytes: int = Field(default=256 * 1024, gt=0)
    token: str | None = None  # bearer token; None = no auth
    session_ttl_s: float = Field(default=60.0, gt=0)
    # A kept session (round 1 with extra_k > 0) holds ~250 KiB (64 patches, bundled model):
    # max_sessions bounds that memory (docs/offload.md, "Resource bounds").
    max_sessions: int = Field(default=1024, gt=0)
    max_remembered_responses: int = Field(default=4096, gt=0)
    reuse: Literal["incremental", "recompute"] = "incremental"
    # Slow clients (issue 19; enforced by http_guard under `serve`, not by the app itself):
    # complete headers within header_timeout_s of the connection opening (or of the previous
    # response), the whole body within body_timeout_s of the headers; at most max_connections
    # open at once, one request in flight each.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=64, gt=0)
    keep_alive_s: int = Field(default=5, gt=0)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)


class _HttpError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def check_weights(weights_dir: Path | None = None) -> Path:
    """The checkpoint directory (default: bundled), once it holds the server's checkpoints.

    Cheap (no torch): callers check before they bind a port or start Ray.

    Raises:
        ConfigError: the checkpoints are missing (run `make models`).
    """
    from edgesplit.errors import ConfigError

    directory = weights_dir or DEFAULT_WEIGHTS_DIR
    advice = "run `make models` (scripts/train_offload_models.py) or pass --weights DIR"
    if not directory.is_dir():
        raise ConfigError(f"no offloading checkpoints: {directory} is not a directory; {advice}")
    missing = [
        name
        for name in ("mae.safetensors", "classifier.safetensors", "meta.json")
        if not (directory / name).is_file()
    ]
    if missing:
        raise ConfigError(
            f"no offloading checkpoints in {directory} ({', '.join(missing)} missing); {advice}"
        )
    return directory


def load_pipeline(weights_dir: Path | None = None) -> tuple[OffloadPipeline, list[int]]:
    """The trained pipeline and its server patch order from `weights_dir` (default: bundled).

    Raises:
        ConfigError: the checkpoints are missing (run `make models`).
    """
    import json

    from edgesplit.offload.models import load_models

    directory = check_weights(weights_dir)
    mae, classifier = load_models(directory)
    meta = json.loads((directory / "meta.json").read_text())
    return OffloadPipeline(mae, classifier), [int(i) for i in meta["server_patch_order"]]


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edgesplit_offload_requests",
            "Requests by endpoint outcome",
            ["round", "status"],
            registry=self.registry,
        )
        self.compute = Histogram(
            "edgesplit_offload_compute_seconds",
            "Server compute per round",
            ["round"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
            registry=self.registry,
        )
        self.bytes_received = Counter(
            "edgesplit_offload_received_bytes",
            "Request body bytes accepted",
            registry=self.registry,
        )
        self.sessions = Gauge(
            "edgesplit_offload_sessions",
            "Round-1 sessions held for round 2",
            registry=self.registry,
        )


def create_app(
    pipeline: OffloadPipeline,
    config: ServerConfig | None = None,
    *,
    patch_order: list[int] | None = None,
    class_names: tuple[str, ...] = CLASS_NAMES,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """Build the FastAPI app around one pipeline. All state lives in this closure (no globals)."""
    config = config or ServerConfig()
    metrics = _Metrics()
    lock = threading.Lock()  # one inference at a time (one torch thread); guards the store
    store: SessionStore[RoundResult, PatchResponse] = SessionStore(
        ttl_s=config.session_ttl_s,
        max_sessions=config.max_sessions,
        max_answers=config.max_remembered_responses,
        clock=clock,
    )
    started_s = clock()
    num_patches = pipeline.num_patches
    order = patch_order or list(range(num_patches))
    counts = {"ok": 0, "client_error": 0, "server_error": 0}
    token = config.token.encode() if config.token is not None else None
    app = FastAPI(title="edgesplit offload server", version=str(PROTOCOL_VERSION))

    def _error(exc: _HttpError, round_label: str = "?") -> JSONResponse:
        metrics.requests.labels(round=round_label, status=str(exc.status)).inc()
        counts["server_error" if exc.status >= 500 else "client_error"] += 1
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        body = ErrorResponse(error=exc.code, detail=exc.detail)
        return JSONResponse(body.model_dump(mode="json"), status_code=exc.status, headers=headers)

    def _internal_error(exc: BaseException, round_label: str) -> JSONResponse:
        log.error("internal error answering a request: %r", exc, exc_info=exc)
        return _error(
            _HttpError(500, "internal", "the server failed on this request; see its log"),
            round_label,
        )

    app.add_middleware(_JsonServerErrors, on_error=lambda e: _internal_error(e, "?"))

    def _authorise(request: Request) -> None:
        if token is None:
            return
        # Starlette decodes header values as latin-1: encoding back gives the bytes sent, so a
        # non-ASCII token byte compares (and fails) instead of raising in compare_digest.
        given = request.headers.get("authorization", "").encode("latin-1")
        scheme, _, value = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), token):
            raise _HttpError(401, "unauthorized", "missing or wrong bearer token")

    async def _read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise _HttpError(
                413,
                "too_large",
                f"body of {declared} bytes exceeds the limit of {config.max_body_bytes} bytes",
            )
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > config.max_body_bytes:
                    raise _HttpError(
                        413,
                        "too_large",
                        f"body exceeds the limit of {config.max_body_bytes} bytes",
                    )
                chunks.append(chunk)
        except ClientDisconnect as e:  # closed by the client or by a read deadline
            raise _HttpError(499, "disconnected", "the client went away mid-body") from e
        return b"".join(chunks)

    def _decode(header: PatchRequestHeader, payload: bytes) -> np.ndarray:
        """The frame's patches (k, p, p), decoded within what the header declares."""
        if header.image_size != pipeline.image_size or header.patch_size != pipeline.patch_size:
            raise _HttpError(
                422,
                "geometry",
                f"server model takes {pipeline.image_size}x{pipeline.image_size} images in "
                f"{pipeline.patch_size}x{pipeline.patch_size} patches, request has "
                f"{header.image_size}/{header.patch_size}; see GET /v1/info",
            )
        try:
            if header.segment_ends is not None and header.segment_bytes is not None:
                return decode_segments(
                    payload,
                    header.segment_bytes,
                    header.segment_ends,
                    header.codec,
                    header.patch_size,
                    header.quality,
                )
            return decode_patches(
                payload, header.codec, len(header.indices), header.patch_size, header.quality
            )
        except ValueError as e:
            raise _HttpError(422, "payload", str(e)) from e

    def _process(header: PatchRequestHeader, payload: bytes, digest: bytes) -> PatchResponse:
        patches = _decode(header, payload)
        if header.server_order:
            assert header.segment_ends is not None  # validated with the header
            header = header.model_copy(
                update={"indices": order[: header.segment_ends[-1]], "server_order": False}
            )
        indices = np.asarray(header.indices, dtype=np.int64)
        with lock:
            try:
                response = _answer(header, patches, indices, digest)
            except SessionConflictError as e:
                raise _HttpError(409, e.code, e.detail) from e
        metrics.compute.labels(round=str(header.round_index)).observe(response.server_compute_s)
        return response

    def _answer(
        header: PatchRequestHeader, patches: np.ndarray, indices: np.ndarray, digest: bytes
    ) -> PatchResponse:
        """One round under the lock: a remembered answer, or inference and a session."""
        remembered = store.remembered(header.request_id, header.round_index, digest)
        if remembered is not None:  # a retry of an answered request: same answer
            return remembered
        previous: RoundResult | None = None
        if header.round_index == 2:
            assert header.session_id is not None  # validated with the header
            session = store.for_round2(header.session_id, header.request_id)
            overlap = set(header.indices) & set(session.result.state.indices[0].tolist())
            if overlap:
                raise _HttpError(
                    422, "indices", f"round-2 patches {sorted(overlap)[:5]} were already sent"
                )
            previous = session.result
        else:
            store.check_round1(header.session_id)
        result = pipeline.run(patches[None], indices[None], previous, reuse=config.reuse)
        if header.round_index == 2:
            assert header.session_id is not None
            session_id = header.session_id
            store.close(session_id, result)
        else:
            session_id = store.open(header.request_id, result, keep=header.extra_k > 0)
        requested: list[int] = []
        if header.extra_k > 0 and header.round_index == 1:
            requested = OffloadPipeline.most_uncertain(result, header.extra_k)[0].tolist()
            requested = [i for i in requested if np.isfinite(result.uncertainty[0, i])]
        probabilities = result.probabilities[0]
        label = int(np.argmax(probabilities))
        response = PatchResponse(
            request_id=header.request_id,
            session_id=session_id,
            round_index=header.round_index,
            label=label,
            class_name=class_names[label] if label < len(class_names) else str(label),
            confidence=float(probabilities[label]),
            probabilities=[round(float(p), 6) for p in probabilities],
            num_received=int(result.state.indices.shape[1]),
            requested_indices=requested,
            reused_round1=previous is not None and config.reuse == "incremental",
            server_compute_s=result.timings_s["total_s"],
            server_timings_s=result.timings_s,
        )
        store.remember(header.request_id, header.round_index, digest, response)
        metrics.sessions.set(len(store))
        return response

    @app.post(
        "/v1/infer",
        response_model=PatchResponse,
        responses=_ERROR_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "One frame: b'ESPL', version u8, header length u32 big-endian, "
                "msgpack header (PatchRequestHeader), encoded patch pixels.",
                "content": {CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def infer(request: Request) -> Response:
        round_label = "?"
        try:
            _authorise(request)
            content_type = request.headers.get("content-type", "")
            if content_type.split(";")[0].strip() != CONTENT_TYPE:
                raise _HttpError(
                    415,
                    "content_type",
                    f"content-type must be {CONTENT_TYPE!r}, got {content_type!r}",
                )
            body = await _read_body(request)
            try:
                header, payload = decode_frame(body)
            except ProtocolVersionError as e:
                raise _HttpError(400, "protocol_version", str(e)) from e
            except FrameError as e:
                raise _HttpError(400, "bad_frame", str(e)) from e
            round_label = str(header.round_index)
            response = await run_in_threadpool(_process, header, payload, body_digest(body))
        except _HttpError as e:
            return _error(e, round_label)
        except Exception as e:
            return _internal_error(e, round_label)
        metrics.bytes_received.inc(len(body))
        metrics.requests.labels(round=round_label, status="200").inc()
        counts["ok"] += 1
        return JSONResponse(response.model_dump(mode="json"))

    @app.get("/v1/info", response_model=ServerInfo, responses=_ERROR_RESPONSES)
    async def info(request: Request) -> Response:
        try:
            _authorise(request)
        except _HttpError as e:
            return _error(e)
        body = ServerInfo(
            image_size=pipeline.image_size,
            patch_size=pipeline.patch_size,
            channels=1,
            num_patches=num_patches,
            class_names=list(class_names),
            patch_order=order,
            max_body_bytes=config.max_body_bytes,
            codecs=list(CODEC_NAMES),
        )
        return JSONResponse(body.model_dump(mode="json"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "protocol_version": PROTOCOL_VERSION,
            "uptime_s": round(clock() - started_s, 3),
        }

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics_text() -> Response:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def status_page() -> str:
        rows = {
            "protocol version": PROTOCOL_VERSION,
            "model": f"{pipeline.image_size}x{pipeline.image_size}, "
            f"{pipeline.patch_size}x{pipeline.patch_size} patches ({num_patches})",
            "uptime (s)": f"{clock() - started_s:.0f}",
            "answered requests": counts["ok"],
            "rejected requests (4xx)": counts["client_error"],
            "server errors (5xx)": counts["server_error"],
            "round-1 sessions held": len(store),
            "round-2 reuse": config.reuse,
            "auth": "bearer token" if config.token else "none",
            "body limit (bytes)": config.max_body_bytes,
        }
        cells = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in rows.items()
        )
        return (
            "<!doctype html><html><head><title>edgesplit offload</title></head><body>"
            f"<h1>edgesplit offload server</h1><table>{cells}</table>"
            '<p><a href="/metrics">/metrics</a> · <a href="/health">/health</a> · '
            '<a href="/v1/info">/v1/info</a></p></body></html>'
        )

    return app


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "not a valid frame (bad magic, truncated, invalid header, other protocol version)",
        401: "missing or wrong bearer token",
        409: "request id reused for another body, or a session that is unknown or not yours",
        413: "body over the limit",
        415: "wrong content-type",
        422: "frame valid but its payload or geometry is not what the server takes",
        500: "the server failed (JSON, counted in /metrics)",
    }.items()
}


class _JsonServerErrors:
    """ASGI middleware: an exception no route handled becomes a JSON 500 (and is counted)."""

    def __init__(self, app: ASGIApp, on_error: Callable[[BaseException], Response]) -> None:
        self.app, self.on_error = app, on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as e:
            if started:  # too late for a clean answer; the server closes the connection
                raise
            await self.on_error(e)(scope, receive, send)


def serve(
    config: ServerConfig,
    weights_dir: Path | None = None,
    *,
    tiny: bool = False,
    sock: socket.socket | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the server with uvicorn until interrupted (blocking).

    sock: a socket already bound to config.host:port (api.serving.bind_listener), so that a
    busy port failed before anything loaded; None lets uvicorn bind. It is set listening at
    once, so clients that connect after `on_ready(url)` wait in its backlog, never refused.

    Raises:
        ConfigError: the checkpoints are missing (before `on_ready`).
        EdgesplitError: uvicorn did not start (it logged why).
    """
    import torch

    from edgesplit.errors import EdgesplitError

    torch.set_num_threads(1)
    if tiny:
        pipeline, order = tiny_pipeline(), None
    else:
        pipeline, order = load_pipeline(weights_dir)
    app = create_app(pipeline, config, patch_order=order)
    server = uvicorn.Server(server_uvicorn_config(app, config))
    port = config.port
    if sock is not None:
        sock.listen(2048)  # uvicorn's default backlog; it listens again, harmlessly
        port = sock.getsockname()[1]
    if on_ready is not None:
        host = f"[{config.host}]" if ":" in config.host else config.host
        on_ready(f"http://{host}:{port}")
    server.run(sockets=None if sock is None else [sock])
    if not server.started:
        raise EdgesplitError(f"the offload server on {config.host}:{port} did not start (above)")


def server_uvicorn_config(app: FastAPI, config: ServerConfig) -> uvicorn.Config:
    """uvicorn settings for `app`: h11 with the read deadlines and connection cap of `config`."""
    settings = GuardSettings(
        header_timeout_s=config.header_timeout_s,
        body_timeout_s=config.body_timeout_s,
        max_connections=config.max_connections,
    )
    return uvicorn_config(
        app,
        host=config.host,
        port=config.port,
        settings=settings,
        keep_alive_s=config.keep_alive_s,
        max_header_bytes=config.max_header_bytes,
    )


def main(argv: list[str] | None = None) -> None:
    """`python -m edgesplit.offload.server`: the server without the CLI (tests use this)."""
    parser = argparse.ArgumentParser(prog="python -m edgesplit.offload.server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8470)
    parser.add_argument("--token", default=None)
    parser.add_argument("--max-body-bytes", type=int, default=256 * 1024)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="random tiny model (tests)")
    args = parser.parse_args(argv)
    config = ServerConfig(
        host=args.host, port=args.port, token=args.token, max_body_bytes=args.max_body_bytes
    )
    serve(config, args.weights, tiny=args.tiny)


if __name__ == "__main__":
    main()
