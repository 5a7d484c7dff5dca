"""The adaptive-offloading capability (A-MOT): the edge server, the device client, their data.

The server and client live in `edgesplit.offload` (docs/offload.md); this module is the one
door the CLI and scripts use. Ray Serve is imported only when `serve_offload_ray` runs.
"""

from __future__ import annotations

from pathlib import Path

from edgesplit.offload import load_tables
from edgesplit.offload import serve as _serve
from edgesplit.offload.client import LinkEmulator, OffloadClient
from edgesplit.offload.codec import CODEC_NAMES, CodecName
from edgesplit.offload.data import CLASS_NAMES, load_fashion_mnist, upscale
from edgesplit.offload.emulation import TokenBucket, make_trace
from edgesplit.offload.live import LiveRun, classify_frames
from edgesplit.offload.patches import SamplingName, sample_indices
from edgesplit.offload.server import ServerConfig

__all__ = [
    "CLASS_NAMES",
    "CODEC_NAMES",
    "CodecName",
    "LinkEmulator",
    "LiveRun",
    "OffloadClient",
    "SamplingName",
    "ServerConfig",
    "TokenBucket",
    "classify_frames",
    "load_fashion_mnist",
    "load_tables",
    "make_trace",
    "sample_indices",
    "serve_offload",
    "serve_offload_ray",
    "upscale",
]


def serve_offload(
    config: ServerConfig | None = None, weights_dir: Path | None = None, *, tiny: bool = False
) -> None:
    """Run the A-MOT edge server (FastAPI + uvicorn) until interrupted; see docs/offload.md."""
    _serve(config or ServerConfig(), weights_dir, tiny=tiny)


def serve_offload_ray(
    server_config: ServerConfig,
    *,
    replicas: int,
    num_cpus: float = 1.0,
    affinity: bool = True,
    weights_dir: Path | None = None,
    tiny: bool = False,
) -> None:
    """The same app as a Ray Serve application of `replicas` replicas, until interrupted."""
    from edgesplit.offload.serve_ray import RayServeConfig, serve_forever

    config = RayServeConfig(replicas=replicas, num_cpus=num_cpus, affinity=affinity)
    serve_forever(config, server_config, weights_dir, tiny=tiny)
