"""Discrete-event simulation of plans. Imports core only."""

from __future__ import annotations

from edgesplit.sim.pipeline import SimConfig, SimResult, simulate

__all__ = ["SimConfig", "SimResult", "simulate"]
