"""`serve` (review B11, B12): a drill on a device that runs nothing is refused before anything
loads, and stopping the server ends open streams within seconds, aborting their sequences."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import httpx
import pytest

from edgesplit.api import serving
from edgesplit.errors import ConfigError
from edgesplit.runtime import generation
from edgesplit.runtime.config import ScheduledFault
from edgesplit.serving import ServerConfig, make_app
from tests.unit.serving.fakes import FakeDecodeEngine, byte_codec, serve_in_thread


def test_a_fault_on_a_device_without_a_stage_is_refused_before_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded for a drill that can never fire")

    monkeypatch.setattr(generation, "GenerationPipeline", no_load)
    options = serving.ServeOptions(faults=(ScheduledFault("z", 2.0, "kill"),))
    with (
        pytest.raises(ConfigError, match="fault for 'z', which runs no stage"),
        serving.open_app("gpt2-tiny", devices=["a", "b"], options=options),
    ):
        pass


@pytest.mark.slow
def test_stopping_the_server_ends_an_open_stream_within_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = FakeDecodeEngine(gate=threading.Event())  # never released: a stream without end
    app = make_app(ServerConfig(), text=(byte_codec(), engine))
    started = serve_in_thread(monkeypatch, app)
    thread, ready, servers = started.thread, started.ready, started.servers
    deadline = time.monotonic() + 30
    while not (ready and servers and servers[0].started) and time.monotonic() < deadline:
        thread.join(0.05)
    body = {"model": "fake-lm", "prompt": "hi", "max_tokens": 50, "stream": True}

    def stream() -> None:
        url = f"{ready[0]}/v1/completions"
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream("POST", url, json=body, timeout=60) as response,
        ):
            for _ in response.iter_bytes():
                pass

    client = threading.Thread(target=stream, daemon=True)
    client.start()
    while not engine.live and time.monotonic() < deadline:
        client.join(0.05)
    assert engine.live, "the stream never started"
    stopped_at = time.monotonic()
    servers[0].should_exit = True  # what Ctrl-C does
    thread.join(30)
    assert not thread.is_alive()
    assert time.monotonic() - stopped_at < 10
    assert engine.aborted, "the open stream's sequence was not aborted"
