"""Runtime: executes a Plan on Ray (stage actors, micro-batch pipeline, failover, emulation).

`run_plan` is the entry point api.py wraps. Ray is imported only in runtime/cluster.py; the
runtime never imports planners (re-planning goes through an injected callable). Names are
resolved lazily so that `import edgesplit.runtime.config` does not start importing Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgesplit.runtime.config import RuntimeConfig, ScheduledFault, parse_kill
    from edgesplit.runtime.pipeline import Activation, Replanner, run_plan
    from edgesplit.runtime.report import RunReport

__all__ = [
    "Activation",
    "Replanner",
    "RunReport",
    "RuntimeConfig",
    "ScheduledFault",
    "parse_kill",
    "run_plan",
]

_WHERE = {
    "Activation": "pipeline",
    "Replanner": "pipeline",
    "run_plan": "pipeline",
    "RunReport": "report",
    "RuntimeConfig": "config",
    "ScheduledFault": "config",
    "parse_kill": "config",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"edgesplit.runtime.{_WHERE[name]}"), name)
    raise AttributeError(name)
