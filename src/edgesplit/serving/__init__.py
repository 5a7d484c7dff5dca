"""The HTTP front end of `edgesplit serve` (OpenAI-compatible routes, encoders, metrics).

Talks to the model only through the engine protocols of `serving.engine`; `api.serving` wires
them to the runtime. Imports core only (no torch, no runtime, no models).
"""

from __future__ import annotations

from edgesplit.serving.app import EmbeddingCodec, ImageCodec, ServerConfig, TextCodec, make_app
from edgesplit.serving.engine import (
    BatchEngine,
    DecodeEngine,
    DecodeRequest,
    EngineHealth,
    EngineStats,
    TokenSink,
)
from edgesplit.serving.metrics import ServingMetrics

__all__ = [
    "BatchEngine",
    "DecodeEngine",
    "DecodeRequest",
    "EmbeddingCodec",
    "EngineHealth",
    "EngineStats",
    "ImageCodec",
    "ServerConfig",
    "ServingMetrics",
    "TextCodec",
    "TokenSink",
    "make_app",
]
