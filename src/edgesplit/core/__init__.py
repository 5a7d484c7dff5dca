"""Frozen data types and the cost model. No torch, no ray."""
