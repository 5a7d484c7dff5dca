"""The co-search capability (EdgeTran): profile configs, fit predictors, search, grow-and-prune.

Each entry point reads and writes the files of one step (docs/cosearch.md); the real work lives
in `edgesplit.cosearch.workflow`. Torch runs on one thread here, as the predictors were fitted.
"""

from __future__ import annotations

from edgesplit.cosearch.workflow import (
    cosearch,
    cosearch_fit,
    cosearch_profile,
    cosearch_refine,
    cosearch_search,
    round_drift,
)

__all__ = [
    "cosearch",
    "cosearch_fit",
    "cosearch_profile",
    "cosearch_refine",
    "cosearch_search",
    "round_drift",
    "single_thread",
]


def single_thread() -> None:
    """Run torch on one thread (what every co-search measurement and fit assumes)."""
    import torch

    torch.set_num_threads(1)
