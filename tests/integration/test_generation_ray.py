"""Generation stages as Ray actors (RayLauncher): split == unsplit, kill -9 of a stage process.

Uses the session Ray (tests/integration/conftest.py); the devices own no Ray node here, so the
actors are placed locally, each running its stage as a child process.
"""

from __future__ import annotations

import os
import threading

import pytest
import torch

from edgesplit.models import build_model, model_spec_from_name, unit_names
from edgesplit.models.kv_stage import Sampling, generate_unsplit
from edgesplit.runtime.generation import GenerationConfig, GenerationPipeline, GenerationRequest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "gpt2-tiny"
NEW_TOKENS = 64
REQUEST = GenerationRequest(prompt_ids=[5, 6, 7], max_new_tokens=NEW_TOKENS)


def test_ray_stages_match_unsplit_and_survive_kill_9(ray_cluster: object) -> None:
    from edgesplit.runtime.generation_ray import RayLauncher

    torch.set_num_threads(1)
    spec = model_spec_from_name(MODEL)
    reference = generate_unsplit(build_model(spec), REQUEST.prompt_ids, NEW_TOKENS, Sampling(), 0)
    n = len(unit_names(spec))
    cuts = [round(i * n / 3) for i in range(4)]
    stages = [(f"ray{i}", cuts[i], cuts[i + 1]) for i in range(3)]
    config = GenerationConfig(max_concurrent=1, standby_devices=("ray-standby",))
    launcher = RayLauncher()
    with GenerationPipeline(spec, stages, config, num_units=n, launcher=launcher) as pipeline:
        handles = {d: w.handle for d, w in pipeline._workers.items()}
        # The stage process is the actor's child, not the driver's: Ray started it.
        assert all(h.pid == pipeline.worker_pid(d) for d, h in handles.items())
        assert all(pipeline.worker_pid(d) != os.getpid() for d in handles)

        report = pipeline.generate([REQUEST])
        assert report.sequences[0].new_ids == reference
        assert not report.failures

        victim = stages[1][0]
        killed = threading.Event()
        seen: list[int] = []

        def on_token(_: int, token: int) -> None:
            seen.append(token)
            if len(seen) == 20:
                killed.set()
                pipeline.kill(victim)

        report = pipeline.generate([REQUEST], on_token=on_token)
        assert killed.is_set()
        assert report.sequences[0].new_ids == reference
        assert seen == reference  # every token delivered once, in order
        (failure,) = report.failures
        assert failure.device == victim
        assert failure.cause == "process_died"
        assert failure.replacement == "ray-standby"
        assert failure.detected_after_s < 2.0
        assert not handles[victim].alive()
        print(
            f"ray recovery: detected after {failure.detected_after_s:.3f} s, recovered after "
            f"{failure.recovered_after_s:.3f} s, replayed {failure.replayed_tokens} tokens"
        )
    assert not any(h.alive() for h in handles.values())
