"""Planners: pure functions (ModelProfile, Cluster, Objective) -> Plan. Import core only."""

from __future__ import annotations

from edgesplit.planners.base import (
    PlanOptions,
    PrecisionChoices,
    available_planners,
    get_planner,
    make_plan,
    register_planner,
)
from edgesplit.planners.progress import ProgressFn, SolveProgress

__all__ = [
    "PlanOptions",
    "PrecisionChoices",
    "ProgressFn",
    "SolveProgress",
    "available_planners",
    "get_planner",
    "make_plan",
    "register_planner",
]
