"""Adapters that cut HF transformers models into units and stages; local checkpoints.

Public surface (see notes/CONTRACTS.md): ModelSpec, model_spec_from_name, build_model,
unit_names, build_stage, StageModule, example_input, unsplit_output, save_checkpoint, crossing,
default_seq_len, tune_kernels. Design and what crosses a cut: docs/models.md.
Importing this package does not import torch until a function needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgesplit.models.spec import (
    PRESETS,
    TEST_PRESETS,
    ModelSpec,
    default_seq_len,
    model_spec_from_name,
)

if TYPE_CHECKING:
    from edgesplit.models.build import (
        StageModule,
        build_model,
        build_stage,
        example_input,
        save_checkpoint,
        tune_kernels,
        unit_names,
        unsplit_output,
    )
    from edgesplit.models.units import Activation, crossing

__all__ = [
    "PRESETS",
    "TEST_PRESETS",
    "Activation",
    "ModelSpec",
    "StageModule",
    "build_model",
    "build_stage",
    "crossing",
    "default_seq_len",
    "example_input",
    "model_spec_from_name",
    "save_checkpoint",
    "tune_kernels",
    "unit_names",
    "unsplit_output",
]

_LAZY_UNITS = {"Activation", "crossing"}
_LAZY = {
    "StageModule",
    "build_model",
    "build_stage",
    "example_input",
    "save_checkpoint",
    "tune_kernels",
    "unit_names",
    "unsplit_output",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_UNITS:
        from edgesplit.models import units

        return getattr(units, name)
    if name in _LAZY:
        from edgesplit.models import build

        return getattr(build, name)
    raise AttributeError(name)
