"""Runtime: executes a Plan on Ray (stage actors, micro-batch pipeline, failover, emulation).

`run_plan` is the entry point `api.run` wraps; `generation.GenerationPipeline` and
`shards.ChannelShardBackend` run decode and width shards on the same stage worker. Ray is
imported only in runtime/cluster.py; the runtime never imports planners (re-planning goes
through an injected callable). Names are resolved lazily so that
`import edgesplit.runtime.config` does not start importing Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgesplit.runtime.config import RuntimeConfig, ScheduledFault, parse_fault, parse_kill
    from edgesplit.runtime.pipeline import Activation, Replanner, run_plan
    from edgesplit.runtime.report import FailureRecord, RunReport

__all__ = [
    "Activation",
    "FailureRecord",
    "Replanner",
    "RunReport",
    "RuntimeConfig",
    "ScheduledFault",
    "parse_fault",
    "parse_kill",
    "run_plan",
]

_WHERE = {
    "Activation": "pipeline",
    "Replanner": "pipeline",
    "run_plan": "pipeline",
    "FailureRecord": "report",
    "RunReport": "report",
    "RuntimeConfig": "config",
    "ScheduledFault": "config",
    "parse_fault": "config",
    "parse_kill": "config",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"edgesplit.runtime.{_WHERE[name]}"), name)
    raise AttributeError(name)
