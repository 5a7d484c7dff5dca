"""edgesplit's one public API: one submodule per capability, all typed.

- `edgesplit.api.pipeline` (re-exported here): profile, plan, compare, simulate, run (EdgePipe).
- `edgesplit.api.generation`: KV-cached decoding across devices and its planner.
- `edgesplit.api.robust`: width-split robust placements and failure-aware fine-tuning (EASTER).
- `edgesplit.api.offload`: the adaptive-offloading edge server and device client (A-MOT).
- `edgesplit.api.cosearch`: device-aware co-search (EdgeTran).
- `edgesplit.api.cluster`: multi-machine Ray clusters.
- `edgesplit.api.testbed`: a described cluster on one machine (namespaces, cgroups, survey).
- `edgesplit.api.precision`: stage dtypes, link encodings, quality tables (issue 17).
- `edgesplit.api.serving`: `edgesplit serve` (OpenAI-compatible HTTP) and `run --inputs`.

The CLI reaches every capability through this package only (tests/unit/test_layering.py).
Submodules other than `pipeline` load on first use, so `import edgesplit.api` stays light.

Example: see `edgesplit.api.pipeline` (profile -> plan -> run in five lines).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgesplit.api import pipeline as _pipeline
from edgesplit.api.pipeline import *  # noqa: F403  (the pipeline capability is the top level)

CAPABILITIES = (
    "pipeline",
    "generation",
    "robust",
    "offload",
    "cosearch",
    "cluster",
    "precision",
    "testbed",
    "serving",
)

__all__ = ["CAPABILITIES"]
__all__ += _pipeline.__all__


def __getattr__(name: str) -> ModuleType:
    """`api.generation`, `api.robust`, ... import their submodule on first use."""
    if name in CAPABILITIES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
