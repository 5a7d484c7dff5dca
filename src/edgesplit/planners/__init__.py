"""Planners: pure functions (ModelProfile, Cluster, Objective) -> Plan. Import core only."""

from __future__ import annotations

from edgesplit.planners.base import available_planners, get_planner, make_plan, register_planner

__all__ = ["available_planners", "get_planner", "make_plan", "register_planner"]
