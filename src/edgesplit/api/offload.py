"""The adaptive-offloading capability (A-MOT): the edge server, the device client, their data.

The server and client live in `edgesplit.offload` (docs/offload.md); this module is the one
door the CLI and scripts use. Ray Serve is imported only when `serve_offload_ray` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import get_args

from pydantic_core import ErrorDetails

from edgesplit.core.schema import validate_as
from edgesplit.errors import ConfigError
from edgesplit.offload import load_tables
from edgesplit.offload.client import LinkEmulator, OffloadClient, check_url
from edgesplit.offload.codec import CODEC_NAMES, CodecName
from edgesplit.offload.data import CLASS_NAMES, load_fashion_mnist, upscale
from edgesplit.offload.emulation import TokenBucket, TraceName, make_trace
from edgesplit.offload.live import FrameRecord, LiveRun, classify_frames, iter_frames
from edgesplit.offload.patches import SamplingName, sample_indices
from edgesplit.offload.server import ServerConfig, check_weights

__all__ = [
    "CLASS_NAMES",
    "CODEC_NAMES",
    "TRACE_NAMES",
    "CodecName",
    "FrameRecord",
    "LinkEmulator",
    "LiveRun",
    "OffloadClient",
    "SamplingName",
    "ServerConfig",
    "TokenBucket",
    "TraceName",
    "check_serve_offload",
    "check_url",
    "classify_frames",
    "iter_frames",
    "load_fashion_mnist",
    "load_tables",
    "make_trace",
    "sample_indices",
    "serve_offload",
    "serve_offload_ray",
    "server_config",
    "upscale",
]

TRACE_NAMES: tuple[str, ...] = get_args(TraceName)


# the `offload serve` option of a ServerConfig / RayServeConfig field, where it is not the name
_FLAGS = {"replicas": "--ray-replicas", "num_cpus": "--ray-cpus", "affinity": "--ray-affinity"}


def _as_flag(item: ErrorDetails) -> str | None:
    """A config problem in `offload serve`'s words: `--max-body-bytes should be ...`."""
    loc = tuple(item["loc"])
    if len(loc) != 1 or not isinstance(loc[0], str):
        return None
    flag = _FLAGS.get(loc[0], f"--{loc[0].replace('_', '-')}")
    message = item["msg"]
    message = message[6:] if message.startswith("Input ") else f"is invalid: {message}"
    return f"{flag} {message} (got {item.get('input')!r})"


def server_config(options: Mapping[str, object]) -> ServerConfig:
    """`ServerConfig` from `offload serve`'s options; a bad value is a ConfigError naming its flag.

    Raises:
        ConfigError: one line per bad option (core.schema.format_validation_error).
    """
    return validate_as(ServerConfig, dict(options), "offload serve", special=_as_flag)


def check_serve_offload(
    config: ServerConfig, weights_dir: Path | None = None, *, tiny: bool = False
) -> None:
    """What `serve_offload_ray` checks before Ray starts: the checkpoints, then that the port
    can be bound (it is released again; Serve's proxy binds it). Milliseconds.

    Raises:
        ConfigError: no checkpoints in `weights_dir`, port 0, a busy port or a bad host.
    """
    from edgesplit.api.serving import bind_listener

    if not tiny:
        check_weights(weights_dir)
    if config.port == 0:
        raise ConfigError("--port 0 (any free port) does not work with --ray-replicas; give one")
    bind_listener(config.host, config.port).close()


def serve_offload(
    config: ServerConfig | None = None,
    weights_dir: Path | None = None,
    *,
    tiny: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the A-MOT edge server (FastAPI + uvicorn) until interrupted; see docs/offload.md.

    The checkpoints are checked, the port bound and the model loaded before `on_ready(url)`:
    a bad `weights_dir` or a busy port is a ConfigError before anything claims to serve.
    """
    from edgesplit.api.serving import bind_listener
    from edgesplit.offload.server import serve

    config = config or ServerConfig()
    if not tiny:
        check_weights(weights_dir)  # cheap; the full load follows the bind
    sock = bind_listener(config.host, config.port)
    try:
        serve(config, weights_dir, tiny=tiny, sock=sock, on_ready=on_ready)
    finally:
        sock.close()


def serve_offload_ray(
    server_config: ServerConfig,
    *,
    replicas: int,
    num_cpus: float = 1.0,
    affinity: bool = True,
    weights_dir: Path | None = None,
    tiny: bool = False,
    on_start: Callable[[], None] | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """The same app as a Ray Serve application of `replicas` replicas, until interrupted.

    `check_serve_offload` runs first; then `on_start()`, as Ray starts (15-35 s), and
    `on_ready(url)` once the replicas answer.
    """
    from edgesplit.offload.serve_ray import RayServeConfig, serve_forever

    layout = {"replicas": replicas, "num_cpus": num_cpus, "affinity": affinity}
    config = validate_as(RayServeConfig, layout, "offload serve", special=_as_flag)
    check_serve_offload(server_config, weights_dir, tiny=tiny)
    if on_start is not None:
        on_start()
    serve_forever(config, server_config, weights_dir, tiny=tiny, on_ready=on_ready)
