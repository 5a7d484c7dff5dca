"""Runtime: executes a Plan on Ray (stage actors, micro-batch pipeline, failover, emulation).

`run_plan` is the entry point api.py wraps. Ray is imported only in runtime/cluster.py; the
runtime never imports planners (re-planning goes through an injected callable).
"""

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
