"""The edge server: a FastAPI app that answers patch requests with a class and a confidence.

Owns HTTP: the binary frame endpoint (POST /v1/infer), /v1/info, /health, /metrics (Prometheus
text from a per-app registry), a small HTML status page at /, the body size limit, optional
bearer-token auth, validation with clear 4xx errors, and the round-1 session cache that round 2
reuses. Inference itself is in pipeline.py. Imports protocol/codec/pipeline, never the client.
"""

from __future__ import annotations

import argparse
import hmac
import html
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from edgesplit.core.schema import FrozenModel
from edgesplit.errors import ProtocolVersionError
from edgesplit.offload.codec import CODEC_NAMES, decode_patches, decode_segments
from edgesplit.offload.data import CLASS_NAMES
from edgesplit.offload.pipeline import OffloadPipeline, RoundResult, tiny_pipeline
from edgesplit.offload.protocol import (
    CONTENT_TYPE,
    PROTOCOL_VERSION,
    FrameError,
    PatchRequestHeader,
    PatchResponse,
    ServerInfo,
    decode_frame,
)

__all__ = ["DEFAULT_WEIGHTS_DIR", "ServerConfig", "create_app", "load_pipeline", "serve"]

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class ServerConfig(FrozenModel):
    """Knobs of the edge server (defaults < file < flags)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8470, ge=0, le=65535)
    max_body_bytes: int = Field(default=256 * 1024, gt=0)
    token: str | None = None  # bearer token; None = no auth
    session_ttl_s: float = Field(default=60.0, gt=0)
    max_sessions: int = Field(default=4096, gt=0)
    max_remembered_responses: int = Field(default=4096, gt=0)
    reuse: Literal["incremental", "recompute"] = "incremental"


class _HttpError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(slots=True)
class _Session:
    result: RoundResult
    header: PatchRequestHeader
    expires_s: float
    round_index: int


def load_pipeline(weights_dir: Path | None = None) -> tuple[OffloadPipeline, list[int]]:
    """The trained pipeline and its server patch order from `weights_dir` (default: bundled).

    Raises:
        ConfigError: the checkpoints are missing (run `make models`).
    """
    import json

    from edgesplit.errors import ConfigError
    from edgesplit.offload.models import load_models

    directory = weights_dir or DEFAULT_WEIGHTS_DIR
    if not (directory / "mae.safetensors").exists():
        raise ConfigError(
            f"no offloading checkpoints in {directory}; run `make models` "
            "(scripts/train_offload_models.py) or pass --weights DIR"
        )
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
    lock = threading.Lock()  # one inference at a time (one torch thread); guards the caches
    sessions: OrderedDict[str, _Session] = OrderedDict()
    responses: OrderedDict[tuple[str, int], PatchResponse] = OrderedDict()
    started_s = clock()
    num_patches = pipeline.num_patches
    order = patch_order or list(range(num_patches))
    counts = {"ok": 0, "client_error": 0}
    app = FastAPI(title="edgesplit offload server", version=str(PROTOCOL_VERSION))

    def _error(exc: _HttpError, round_label: str = "?") -> JSONResponse:
        metrics.requests.labels(round=round_label, status=str(exc.status)).inc()
        counts["client_error"] += 1
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(
            {"error": exc.code, "detail": exc.detail, "protocol_version": PROTOCOL_VERSION},
            status_code=exc.status,
            headers=headers,
        )

    def _authorise(request: Request) -> None:
        if config.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), config.token):
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
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise _HttpError(
                    413, "too_large", f"body exceeds the limit of {config.max_body_bytes} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _expire() -> None:
        now = clock()
        while sessions:
            key, session = next(iter(sessions.items()))
            if session.expires_s > now and len(sessions) <= config.max_sessions:
                break
            sessions.pop(key)
        metrics.sessions.set(len(sessions))

    def _process(header: PatchRequestHeader, payload: bytes) -> PatchResponse:
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
                patches = decode_segments(
                    payload,
                    header.segment_bytes,
                    header.segment_ends,
                    header.codec,
                    header.patch_size,
                    header.quality,
                )
            else:
                patches = decode_patches(
                    payload, header.codec, len(header.indices), header.patch_size, header.quality
                )
        except ValueError as e:
            raise _HttpError(422, "payload", str(e)) from e
        if header.server_order:
            assert header.segment_ends is not None  # validated with the header
            header = header.model_copy(
                update={"indices": order[: header.segment_ends[-1]], "server_order": False}
            )
        indices = np.asarray(header.indices, dtype=np.int64)
        with lock:
            remembered = responses.get((header.request_id, header.round_index))
            if remembered is not None:  # a retry of an answered request: same answer
                return remembered
            _expire()
            previous: RoundResult | None = None
            if header.round_index == 2:
                assert header.session_id is not None
                session = sessions.get(header.session_id)
                if session is None:
                    raise _HttpError(
                        409,
                        "unknown_session",
                        f"session {header.session_id!r} is unknown (expired or server "
                        "restarted); resend all patches as a new round 1",
                    )
                if session.round_index != 1:
                    raise _HttpError(409, "round_done", "this session already had its round 2")
                overlap = set(header.indices) & set(session.result.state.indices[0].tolist())
                if overlap:
                    raise _HttpError(
                        422,
                        "indices",
                        f"round-2 patches {sorted(overlap)[:5]} were already sent",
                    )
                previous = session.result
            result = pipeline.run(patches[None], indices[None], previous, reuse=config.reuse)
            session_id = header.session_id or uuid.uuid4().hex
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
            sessions.pop(session_id, None)
            sessions[session_id] = _Session(
                result, header, clock() + config.session_ttl_s, header.round_index
            )
            responses[(header.request_id, header.round_index)] = response
            while len(responses) > config.max_remembered_responses:
                responses.popitem(last=False)
            _expire()
        metrics.compute.labels(round=str(header.round_index)).observe(result.timings_s["total_s"])
        return response

    @app.post("/v1/infer")
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
            response = await run_in_threadpool(_process, header, payload)
        except _HttpError as e:
            return _error(e, round_label)
        metrics.bytes_received.inc(len(body))
        metrics.requests.labels(round=round_label, status="200").inc()
        counts["ok"] += 1
        return JSONResponse(response.model_dump(mode="json"))

    @app.get("/v1/info")
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

    @app.get("/metrics")
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
            "round-1 sessions held": len(sessions),
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


def serve(config: ServerConfig, weights_dir: Path | None = None, *, tiny: bool = False) -> None:
    """Run the server with uvicorn until interrupted (blocking)."""
    import torch
    import uvicorn

    torch.set_num_threads(1)
    if tiny:
        pipeline, order = tiny_pipeline(), None
    else:
        pipeline, order = load_pipeline(weights_dir)
    app = create_app(pipeline, config, patch_order=order)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")


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
