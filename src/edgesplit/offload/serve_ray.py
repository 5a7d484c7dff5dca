"""The edge server as a Ray Serve application: N replicas of `server.create_app` behind one port.

Owns: the Serve deployment (each replica builds its own pipeline and FastAPI app in-process, so
only a small JSON-able config crosses Ray), an embedded local Ray (`ray.init(address="local")`,
no dashboard, no log forwarding, a per-process auth token), start/stop as a context manager,
and round-2 session affinity. Use it when one uvicorn process (one inference at a time) is not
enough; the plain `server.serve` stays the default.

Round 2 reuses round-1 state kept in one replica's memory. With `affinity=True` (default) the
deployment uses Ray Serve 2.60's `ConsistentHashRouter`, which maps the `x-session-id` request
header to a replica on a hash ring; `SessionAffinityTransport` (an httpx transport for
`OffloadClient(transport=...)`) copies each frame's request id, which both rounds share, into
that header, so round 2 lands where round 1 ran. Without the header (or if the chosen replica is
saturated and the router falls back) round 2 reaches a replica without the session, gets 409
`unknown_session`, and the client resends everything as one fresh round 1: always correct, only
the reuse saving is lost. The wire protocol is unchanged (binary frame in, JSON out; no pickle).

Importing this module is cheap: ray and torch load inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import signal
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgpack
from pydantic import Field

from edgesplit.core.schema import FrozenModel
from edgesplit.errors import ConfigError
from edgesplit.offload.protocol import MAGIC
from edgesplit.offload.server import ServerConfig

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "APP_NAME",
    "REPLICA_HEADER",
    "SESSION_HEADER",
    "RayServeConfig",
    "SessionAffinityTransport",
    "build_application",
    "deploy",
    "frame_request_id",
    "running",
    "serve_forever",
]

log = logging.getLogger(__name__)

APP_NAME = "edgesplit-offload"
# Ray Serve's session header (ray.serve._private.constants.SERVE_SESSION_ID, default
# "x-session-id", configurable with RAY_SERVE_SESSION_ID_HEADER_KEY before Ray starts).
SESSION_HEADER = "x-session-id"
REPLICA_HEADER = "x-edgesplit-replica"  # which replica answered (tests, benchmark, debugging)
CONSISTENT_HASH_ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
_PREFIX = struct.Struct(">4sBI")  # protocol.py's frame prefix: magic, version, header length


class RayServeConfig(FrozenModel):
    """How the Serve application is laid out (the HTTP server's own knobs stay in ServerConfig)."""

    replicas: int = Field(default=2, ge=1, le=64)
    num_cpus: float = Field(default=1.0, gt=0)  # Ray CPUs reserved per replica
    # Concurrent requests Serve sends to one replica; the app runs one inference at a time
    # (a lock), so more only queue inside the replica instead of at the router.
    max_ongoing_requests: int = Field(default=4, ge=1)
    affinity: bool = True  # consistent-hash routing on SESSION_HEADER (round 2 -> same replica)
    # Replicas tried after the hashed one when it is saturated (0: strict, wait for it).
    fallback_replicas: int = Field(default=1, ge=0)
    ray_address: str | None = None  # None: embedded local Ray started (and stopped) here
    startup_timeout_s: float = Field(default=300.0, gt=0)


# -- client side: session affinity without changing the wire protocol -------------------------


def frame_request_id(head: bytes) -> str | None:
    """The request id in a frame's msgpack header, read from the first bytes of a body.

    Returns None when `head` is not (the start of) an edgesplit frame; never raises.
    """
    if len(head) < _PREFIX.size:
        return None
    magic, _version, length = _PREFIX.unpack_from(head)
    end = _PREFIX.size + length
    if magic != MAGIC or len(head) < end:
        return None
    try:
        header = msgpack.unpackb(head[_PREFIX.size : end], raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return None
    value = header.get("request_id") if isinstance(header, dict) else None
    return value if isinstance(value, str) and value else None


class _Replay(httpx.SyncByteStream):
    """A request stream whose first chunk was already taken (to read the frame header)."""

    def __init__(self, first: bytes, rest: Iterator[bytes]) -> None:
        self._first, self._rest = first, rest

    def __iter__(self) -> Iterator[bytes]:
        yield self._first
        yield from self._rest


class SessionAffinityTransport(httpx.BaseTransport):
    """An httpx transport that sets `x-session-id` to the frame's request id on POST /v1/infer.

    Round 1 and round 2 of one image share the request id, so Ray Serve's consistent-hash
    router sends both to the same replica. Streamed (progressive) bodies are handled by
    reading their first chunk, which carries the whole frame header. Other requests pass
    through untouched. Pass it as `OffloadClient(url, transport=SessionAffinityTransport())`.
    """

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if (
            request.method == "POST"
            and request.url.path.endswith("/v1/infer")
            and SESSION_HEADER not in request.headers
        ):
            key: str | None
            try:
                key = frame_request_id(request.content)
            except httpx.RequestNotRead:  # streamed body: peek at its first chunk
                chunks = iter(request.stream)  # type: ignore[arg-type]
                first = next(chunks, b"")
                request.stream = _Replay(first, chunks)
                key = frame_request_id(first)
            if key is not None:
                request.headers[SESSION_HEADER] = key
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


# -- server side ---------------------------------------------------------------------------------


class _ReplicaHeader:
    """ASGI middleware adding `x-edgesplit-replica: <replica id>` to every HTTP answer."""

    def __init__(self, app: ASGIApp, value: str) -> None:
        self._app, self._value = app, value.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (REPLICA_HEADER.encode(), self._value)]
                message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, receive, send_tagged)


class OffloadReplica:
    """Body of one Serve replica; Serve calls `__serve_build_asgi_app__` once it is placed.

    The pipeline is loaded inside the replica (one torch thread), so no model crosses Ray.
    """

    def __init__(self, server_config: dict[str, Any], weights_dir: str | None, tiny: bool) -> None:
        self._config = ServerConfig.model_validate(server_config)
        self._weights_dir = Path(weights_dir) if weights_dir else None
        self._tiny = tiny

    def __serve_build_asgi_app__(self) -> FastAPI:
        import torch
        from ray import serve

        from edgesplit.offload.pipeline import tiny_pipeline
        from edgesplit.offload.server import create_app, load_pipeline

        torch.set_num_threads(1)
        if self._tiny:
            pipeline, order = tiny_pipeline(), None
        else:
            pipeline, order = load_pipeline(self._weights_dir)
        app = create_app(pipeline, self._config, patch_order=order)
        replica = serve.get_replica_context().replica_id.unique_id
        app.add_middleware(_ReplicaHeader, value=replica)
        return app


def build_application(
    config: RayServeConfig,
    server_config: ServerConfig,
    weights_dir: Path | None = None,
    *,
    tiny: bool = False,
) -> Any:
    """The Serve application (`Deployment.bind(...)`) for `serve.run`; needs ray[serve]."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    options: dict[str, Any] = {
        "name": "OffloadServer",
        "num_replicas": config.replicas,
        "max_ongoing_requests": config.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": config.num_cpus},
        "health_check_period_s": 2.0,
    }
    if config.affinity:
        router: dict[str, Any] = {
            "request_router_class": CONSISTENT_HASH_ROUTER,
            "request_router_kwargs": {"num_fallback_replicas": config.fallback_replicas},
        }
        options["request_router_config"] = RequestRouterConfig(**router)
    deployment = serve.deployment(**options)(serve.ingress()(OffloadReplica))
    return deployment.bind(
        server_config.model_dump(mode="json"), str(weights_dir) if weights_dir else None, tiny
    )


def _init_ray(config: RayServeConfig) -> str:
    """Start or connect to Ray: "embedded" (started here), "connected" or "existing"."""
    import ray

    if ray.is_initialized():
        return "existing"
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # replicas inherit it (one torch thread)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if config.ray_address:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        ray.init(address=config.ray_address, log_to_driver=False)
        return "connected"
    # As runtime/cluster.py: a per-process auth token so Ray never writes one under $HOME.
    if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
    needed = math.ceil(config.replicas * config.num_cpus)
    ray.init(
        address="local",  # never attach to a cluster some other process left behind
        num_cpus=max(needed, os.cpu_count() or 1),  # logical CPUs: every replica gets placed
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    return "embedded"


def _wait_healthy(url: str, timeout_s: float) -> None:
    """Poll the app's /health through the proxy until it answers 200 (or raise)."""
    pause = threading.Event()
    deadline = max(1, int(timeout_s / 0.2))
    last: str = "no answer"
    for _ in range(deadline):
        try:
            response = httpx.get(f"{url}/health", timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as e:
            last = str(e)
        pause.wait(0.2)
    raise TimeoutError(f"Ray Serve app at {url} not healthy after {timeout_s:.0f} s ({last})")


def deploy(
    config: RayServeConfig,
    server_config: ServerConfig,
    weights_dir: Path | None = None,
    *,
    tiny: bool = False,
    name: str = APP_NAME,
    route_prefix: str = "/",
) -> str:
    """Deploy the app on the running Serve instance; returns its base URL once it answers.

    Several apps (say 1 and 2 replicas, for a side-by-side benchmark) can share the proxy
    under different `route_prefix`es; OffloadClient takes the prefixed URL as its base.

    Raises:
        ConfigError: Ray has fewer free CPUs than the replicas reserve (Serve would wait
            forever for a replica it cannot place).
    """
    import ray
    from ray import serve

    needed = config.replicas * config.num_cpus
    free = float(ray.available_resources().get("CPU", 0.0))
    if needed > free + 1e-3:
        raise ConfigError(
            f"{config.replicas} replica(s) x {config.num_cpus:g} CPU need {needed:g} Ray CPUs, "
            f"only {free:g} free; lower --ray-cpus (a logical reservation, not pinning)"
        )

    serve.run(
        build_application(config, server_config, weights_dir, tiny=tiny),
        name=name,
        route_prefix=route_prefix,
        blocking=False,
    )
    url = f"http://{server_config.host}:{server_config.port}{route_prefix.rstrip('/')}"
    _wait_healthy(url, config.startup_timeout_s)
    return url


@contextlib.contextmanager
def running(
    config: RayServeConfig,
    server_config: ServerConfig,
    weights_dir: Path | None = None,
    *,
    tiny: bool = False,
) -> Iterator[str]:
    """Run the app on `server_config.host:port`; yields the base URL; tears everything down.

    Blocks until the replicas are up (each loads torch and the pipeline). On exit, also when
    the body raises: an embedded Ray is shut down with Serve; on a Ray that was already there
    (`ray_address`, or initialised by the caller) only this app is deleted.
    """
    from ray import serve

    ray_mode = _init_ray(config)
    try:
        serve.start(
            http_options={"host": server_config.host, "port": server_config.port},
            logging_config={"log_level": "WARNING", "enable_access_log": False},
        )
        yield deploy(config, server_config, weights_dir, tiny=tiny)
    finally:
        import ray

        with contextlib.suppress(Exception):
            if ray_mode == "embedded":
                serve.shutdown()  # our own Ray: stop Serve's controller and proxy too
            else:
                serve.delete(APP_NAME)  # a shared Ray: remove only our app
        if ray_mode != "existing":
            ray.shutdown()


def serve_forever(
    config: RayServeConfig,
    server_config: ServerConfig,
    weights_dir: Path | None = None,
    *,
    tiny: bool = False,
    stop: threading.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run until Ctrl-C, SIGTERM or `stop`; the CLI's `offload serve --ray-replicas N`.

    `on_ready` gets the base URL once the replicas answer /health. Serve and the embedded Ray
    are shut down on the way out (no stray Ray processes).
    """
    stop = stop or threading.Event()
    with (
        contextlib.suppress(KeyboardInterrupt),
        running(config, server_config, weights_dir, tiny=tiny) as url,
    ):
        if on_ready is not None:
            on_ready(url)
        previous = None
        if threading.current_thread() is threading.main_thread():
            # After ray.init, which installs a crash handler that would dump a stack on SIGTERM.
            previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):
                pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
