"""`api.generation.generate` refuses bad input before any Ray or stage starts, with a message
that says what was wrong and what to do; the CLI exits 4 when a sequence failed."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from edgesplit.api import generation as gen
from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
from edgesplit.errors import ConfigError, DeviceUnavailableError
from edgesplit.runtime.config import ScheduledFault
from edgesplit.runtime.generation import GenerationReport, SequenceResult

STAGES = [("a", 0, 5), ("b", 5, 10)]  # gpt2-tiny: 10 units, 256 positions


@pytest.fixture(autouse=True)
def no_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any of these inputs reaching the pipeline is a failure of the check."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the pipeline was started")

    monkeypatch.setattr("edgesplit.runtime.generation.GenerationPipeline.start", refuse)


def _generate(**overrides: Any) -> None:
    arguments: dict[str, Any] = {
        "model": "gpt2-tiny",
        "stages": STAGES,
        "prompts": [[1, 2, 3]],
        "max_new_tokens": 4,
        **overrides,
    }
    gen.generate(**arguments)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"model": "vit-tiny", "stages": [("a", 0, 4)]}, "vit model, not a decoder"),
        ({"prompts": [[1, 2], []]}, "prompt 1 is empty"),
        ({"prompts": [[1] * 250], "max_new_tokens": 10}, "exceed the model's context of 256"),
        ({"prompts": [[1]], "max_new_tokens": 256}, "257 tokens exceed"),
        ({"faults": [ScheduledFault("z", 2.0, "stop")]}, "fault for 'z', which runs no stage"),
        ({"standby_devices": ["a"]}, "standby device 'a' already runs a stage"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _generate(**overrides)


def test_devices_must_be_in_the_cluster() -> None:
    cluster = Cluster(
        source="a",
        defaults=LinkDefaults(bandwidth_mbps=100, latency_ms=1.0),
        devices=(DeviceSpec(name="a", kind="k", memory_mb=1000),),
    )
    with pytest.raises(ConfigError, match=r"on \['b'\], which the cluster does not have"):
        _generate(cluster=cluster)
    with pytest.raises(ConfigError, match=r"on \['s'\]"):
        _generate(stages=[("a", 0, 10)], standby_devices=["s"], cluster=cluster)


def test_an_encoder_has_no_generation_tokenizer() -> None:
    with pytest.raises(ConfigError, match="not a decoder"):
        gen.tokenizer_for("bert-tiny")


def test_the_context_comes_from_the_model_config() -> None:
    assert gen.context_length("gpt2-tiny") == 256
    assert gen.context_length("llama-tiny") == 256


def test_the_cli_exits_4_when_a_sequence_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from edgesplit.cli.main import _register, app

    def failing(*args: Any, **kwargs: Any) -> GenerationReport:
        result = SequenceResult(
            sequence_id=0,
            prompt_ids=[1],
            new_ids=[],
            first_token_s=0.0,
            time_per_token_s=0.0,
            finished="error",
            error="[stage 0 @ a] ValueError: poisoned",
        )
        return GenerationReport(
            sequences=[result], elapsed_s=1.0, new_tokens=0, tokens_per_s=0, time_per_token_s=0
        )

    monkeypatch.setattr(gen, "generate", failing)
    _register()
    report = tmp_path / "r.json"
    arguments = ["generate", "--model", "gpt2-tiny", "--devices", "a,b", "--prompt", "hi"]
    result = CliRunner().invoke(app, [*arguments, "--report", str(report)])
    error = result.exception  # main() turns it into the exit code, without a traceback
    assert isinstance(error, DeviceUnavailableError), result.output
    assert error.exit_code == 4
    assert "1 of 1 sequence(s) failed" in str(error)
    written = GenerationReport.model_validate_json(report.read_text())
    assert written.kind == "edgesplit.generation_report"
    assert written.sequences[0].error.endswith("poisoned")


def test_the_cli_names_repeated_devices_and_a_plan_for_another_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from types import SimpleNamespace

    from edgesplit.cli.generate import _stages_and_model

    with pytest.raises(ConfigError, match=r"--devices lists \['a'\] more than once"):
        _stages_and_model(None, "gpt2-tiny", None, "a,b,a")
    vit_plan = SimpleNamespace(model="vit-tiny", stages=[SimpleNamespace(end=4)])
    monkeypatch.setattr(gen, "load_generation_plan", lambda path: vit_plan)
    with pytest.raises(ConfigError, match=r"plan for vit-tiny \(4 units\) but llama-tiny has 10"):
        _stages_and_model(tmp_path / "plan.json", "llama-tiny", None, None)
