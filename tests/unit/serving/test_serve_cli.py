"""`edgesplit serve`'s front matter (review B5, B9, F2, F3): each answer's `created` is its own,
the model id a client must send is printed, an open listener without a token is warned about,
the token can come from the environment, and a plan for another model is refused."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from edgesplit import api
from edgesplit.api import serving
from edgesplit.cli.main import _register, app
from edgesplit.core.plan import Plan, StagePlacement
from edgesplit.errors import ConfigError
from edgesplit.serving import ServerConfig, make_app
from edgesplit.serving import app as app_module
from tests.unit.serving.fakes import FakeDecodeEngine, byte_codec

_register()
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def test_each_answer_is_created_when_it_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    server = make_app(ServerConfig(), text=(byte_codec(), FakeDecodeEngine()))
    with TestClient(server) as client:
        started = client.get("/v1/models").json()["data"][0]["created"]
        later = SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if not n.startswith("_")})
        later.time = lambda: time.time() + 1000.0  # the request comes 1000 s after the start
        monkeypatch.setattr(app_module, "time", later)
        body = {"model": "fake-lm", "prompt": "hi", "max_tokens": 2}
        answer = client.post("/v1/completions", json=body).json()
    assert answer["created"] >= started + 999


def _serve_recorder(calls: list[dict[str, Any]]) -> Callable[..., None]:
    def serve(model: str, **kwargs: Any) -> None:
        calls.append({"model": model, **kwargs})
        kwargs["on_ready"]("http://127.0.0.1:8000")

    return serve


def test_serve_prints_the_model_id_and_warns_about_an_open_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(serving, "serve", _serve_recorder(calls))
    args = ["serve", "--model", "gpt2-tiny", "--devices", "a,b", "--host", "0.0.0.0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "serving model id gpt2-tiny on http://127.0.0.1:8000" in result.stdout
    assert "no --token" in result.stderr
    assert calls[0]["options"].token is None


def test_serve_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(serving, "serve", _serve_recorder(calls))
    args = ["serve", "--model", "gpt2-tiny", "--devices", "a,b", "--host", "0.0.0.0"]
    result = runner.invoke(app, args, env={"EDGESPLIT_SERVE_TOKEN": "s3cret"})
    assert result.exit_code == 0, result.output
    assert calls[0]["options"].token == "s3cret"
    assert "no --token" not in result.stderr


def test_serve_port_out_of_range_is_a_usage_error() -> None:
    result = runner.invoke(app, ["serve", "--model", "gpt2-tiny", "--port", "70000"])
    assert result.exit_code == 2
    assert "--port" in result.output


def test_a_plan_for_another_model_is_refused() -> None:
    stages = (
        StagePlacement(device="a", start=0, end=30),
        StagePlacement(device="b", start=30, end=62),
    )
    plan = Plan.model_construct(model="smollm2-135m", stages=stages)
    units = api.generation.num_units("gpt2-tiny")
    with pytest.raises(ConfigError) as info:
        api.generation.check_plan_model(plan, "gpt2-tiny", "gplan.json")
    assert str(info.value) == (
        f"gplan.json is a plan for smollm2-135m (62 units) but gpt2-tiny has {units}; re-plan "
        "for this model or drop --model"
    )
