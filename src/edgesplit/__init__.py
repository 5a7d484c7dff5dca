"""edgesplit: run transformer inference across heterogeneous, failure-prone edge devices."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
