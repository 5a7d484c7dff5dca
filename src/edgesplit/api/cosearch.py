"""The co-search capability (EdgeTran): profile configs, fit predictors, search, grow-and-prune.

Each entry point reads and writes the files of one step (docs/cosearch.md); the real work lives
in `edgesplit.cosearch.workflow`. Torch runs on one thread here, as the predictors were fitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgesplit.core.schema import read_json_file
from edgesplit.cosearch.costs import PredictorRecipe
from edgesplit.cosearch.tasks import TASKS
from edgesplit.cosearch.workflow import (
    cosearch,
    cosearch_fit,
    cosearch_profile,
    cosearch_refine,
    cosearch_search,
    round_drift,
)
from edgesplit.errors import ConfigError, did_you_mean

__all__ = [
    "TASKS",
    "check_search_inputs",
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


def _unknown(
    what: str, name: str, choices: Sequence[str], among: str = "choose one of"
) -> ConfigError:
    hint = did_you_mean(name, choices)
    return ConfigError(f"unknown {what} {name!r}; {hint}{among} {', '.join(choices)}")


def check_search_inputs(
    predictors: Path, *, task: str, devices: Sequence[str] | None = None
) -> PredictorRecipe:
    """What `cosearch search` would otherwise find only after loading data and training: the
    predictors file is there and is one, the task and the devices exist. Returns the recipe.

    Raises:
        ConfigError: a missing or wrong predictors file, an unknown task or device.
    """
    if not Path(predictors).is_file():
        raise ConfigError(
            f"predictors file not found: {predictors} (cwd is {Path.cwd()}); write it with "
            f"`edgesplit cosearch fit -o {predictors}`"
        )
    recipe = read_json_file(PredictorRecipe, predictors)
    if task not in TASKS:
        raise _unknown("task", task, TASKS)
    for device in devices or ():
        if device not in recipe.devices:
            raise _unknown(
                "device", device, recipe.devices, among=f"{predictors} has predictors for"
            )
    return recipe
