"""`decode_stages`: a decoder split over devices balancing the weights a decode step reads.

Checked against brute force over every contiguous split (largest stage's parameter count, the
embedding lookup free) for GPT-2 and Llama test presets, and against the even split by unit
count it replaces: the LM head's stage gets fewer blocks.
"""

from __future__ import annotations

import itertools

import pytest

from edgesplit.api.generation import decode_stages, even_stages
from edgesplit.errors import ConfigError
from edgesplit.models import model_spec_from_name
from edgesplit.models.build import _meta_model
from edgesplit.models.units import make_units


def _costs(model: str) -> list[int]:
    spec = model_spec_from_name(model)
    units = make_units(_meta_model(spec)[1], spec.family)
    return [0 if u.unit_name == "embed" else sum(p.numel() for p in u.parameters()) for u in units]


def _largest(costs: list[int], bounds: list[int]) -> int:
    return max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds))


@pytest.mark.parametrize("model", ["gpt2-tiny", "llama-tiny"])
@pytest.mark.parametrize("devices", [1, 2, 3])
def test_decode_stages_minimize_the_largest_stage(model: str, devices: int) -> None:
    costs = _costs(model)
    names = [f"d{i}" for i in range(devices)]
    stages = decode_stages(model, names)
    assert [d for d, _, _ in stages] == names
    bounds = [0, *(e for _, _, e in stages)]
    assert [s for _, s, _ in stages] == bounds[:-1]  # contiguous, from unit 0
    assert bounds[-1] == len(costs)
    best = min(
        _largest(costs, [0, *cuts, len(costs)])
        for cuts in itertools.combinations(range(1, len(costs)), devices - 1)
    )
    assert _largest(costs, bounds) == best
    even = [0, *(e for _, _, e in even_stages(model, names))]
    assert _largest(costs, bounds) <= _largest(costs, even)


def test_decode_stages_refuse_too_many_devices() -> None:
    with pytest.raises(ConfigError, match="devices"):
        decode_stages("gpt2-tiny", [f"d{i}" for i in range(100)])


def test_generate_devices_split_like_serve() -> None:
    """`edgesplit generate --devices a,b` splits by decode weights, as `serve --devices` does."""
    from edgesplit.cli.generate import _stages_and_model

    model, stages, micro_batches = _stages_and_model(None, "llama-tiny", None, "a,b")
    assert (model, micro_batches) == ("llama-tiny", 0)
    assert stages == decode_stages("llama-tiny", ["a", "b"])
    assert stages != even_stages("llama-tiny", ["a", "b"])
