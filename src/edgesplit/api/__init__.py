"""edgesplit's one public API: one submodule per capability, all typed.

- `edgesplit.api.pipeline` (re-exported here): profile, plan, compare, simulate, run (EdgePipe).
- `edgesplit.api.generation`: KV-cached decoding across devices, its planner and HTTP endpoint.
- `edgesplit.api.robust`: width-split robust placements and failure-aware fine-tuning (EASTER).
- `edgesplit.api.offload`: the adaptive-offloading edge server and device client (A-MOT).
- `edgesplit.api.cosearch`: device-aware co-search (EdgeTran).
- `edgesplit.api.cluster`: multi-machine Ray clusters.
- `edgesplit.api.precision`: stage dtypes, link encodings, quality tables (issue 17).

The CLI reaches every capability through this package only (tests/unit/test_layering.py).
Submodules other than `pipeline` load on first use, so `import edgesplit.api` stays light.

Example:
    >>> from edgesplit import api
    >>> profile = api.import_pipeedge_profile("google/vit-large-patch16-224")
    >>> cluster = api.load_cluster("examples/pipeedge-4+4.toml")
    >>> plan = api.plan(profile, cluster)
    >>> round(plan.predicted.period_s, 2)
    5.04
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgesplit.api.pipeline import (
    PlannerOutcome,
    RunReport,
    RuntimeConfig,
    ScheduledFault,
    available_planners,
    compare,
    import_pipeedge_profile,
    load_cluster,
    load_plan,
    load_profile,
    parse_fault,
    parse_kill,
    plan,
    prepare_profile,
    profile,
    run,
    save,
    simulate,
)

CAPABILITIES = ("pipeline", "generation", "robust", "offload", "cosearch", "cluster", "precision")

__all__ = [
    "CAPABILITIES",
    "PlannerOutcome",
    "RunReport",
    "RuntimeConfig",
    "ScheduledFault",
    "available_planners",
    "compare",
    "import_pipeedge_profile",
    "load_cluster",
    "load_plan",
    "load_profile",
    "parse_fault",
    "parse_kill",
    "plan",
    "prepare_profile",
    "profile",
    "run",
    "save",
    "simulate",
]


def __getattr__(name: str) -> ModuleType:
    """`api.generation`, `api.robust`, ... import their submodule on first use."""
    if name in CAPABILITIES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
