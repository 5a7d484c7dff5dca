"""`serve` binds its port before the model loads (a busy port fails at once, rc 2) and serves a
checkpoint directory under its basename, accepting the path too."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from edgesplit.api import serving
from edgesplit.errors import ConfigError
from edgesplit.serving import ServerConfig, make_app
from tests.unit.serving.fakes import FakeDecodeEngine, byte_codec, serve_in_thread


@contextlib.contextmanager
def _busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


def test_busy_port_fails_before_the_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded although the port is busy")

    monkeypatch.setattr(serving, "open_app", no_load)
    ready: list[str] = []
    with _busy_port() as port, pytest.raises(ConfigError) as info:
        serving.serve("gpt2-tiny", port=port, devices=["a", "b"], on_ready=ready.append)
    assert f"127.0.0.1:{port} is already in use" in str(info.value)
    assert "--port" in str(info.value)
    assert ready == []  # never "serving ... on" when nothing is served


def test_serve_cli_on_a_busy_port_is_a_config_error() -> None:
    cli = [sys.executable, "-m", "edgesplit.cli.main", "serve", "--model", "gpt2-tiny"]
    with _busy_port() as port:
        result = subprocess.run(
            [*cli, "--devices", "a,b", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200", "EDGESPLIT_LOG": "WARNING"},
        )
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "serving" not in result.stdout
    assert "Ray" not in result.stderr  # failed before Ray started


def test_serve_listens_on_the_socket_it_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(ServerConfig(), text=(byte_codec(), FakeDecodeEngine()))
    started = serve_in_thread(monkeypatch, app)
    thread, ready, servers = started.thread, started.ready, started.servers
    try:
        deadline = time.monotonic() + 30
        body = b""
        while time.monotonic() < deadline and not body:
            with contextlib.suppress(OSError):
                if ready:
                    with urllib.request.urlopen(f"{ready[0]}/health", timeout=5) as response:
                        body = response.read()
        assert ready[0].startswith("http://127.0.0.1:")
        assert not ready[0].endswith(":0")  # the port actually bound
        assert b"ok" in body
    finally:
        deadline = time.monotonic() + 30
        while not servers and time.monotonic() < deadline:
            thread.join(0.05)
        servers[0].should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def test_checkpoint_directory_is_served_by_its_basename(tmp_path: Path) -> None:
    checkpoint = tmp_path / "smollm2-135m"
    checkpoint.mkdir()
    name, aliases = serving.served_names(str(checkpoint))
    assert name == "smollm2-135m"
    assert str(checkpoint) in aliases
    assert serving.served_names("gpt2-tiny") == ("gpt2-tiny", frozenset())
    assert serving.served_names(str(checkpoint), "mine") == ("mine", frozenset())


def test_the_path_is_an_alias_and_other_names_stay_404() -> None:
    config = ServerConfig(model_aliases=frozenset({"/ckpt/fake-lm"}))
    app = make_app(config, text=(byte_codec(), FakeDecodeEngine()))
    with TestClient(app) as client:
        models = client.get("/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["fake-lm"]
        for model in ("fake-lm", "/ckpt/fake-lm"):
            done = client.post("/v1/completions", json={"model": model, "prompt": "a"})
            assert done.status_code == 200, done.text
            assert done.json()["model"] == "fake-lm"
        wrong = client.post("/v1/completions", json={"model": "other", "prompt": "a"})
        assert wrong.status_code == 404
        assert "'fake-lm'" in wrong.json()["error"]["message"]
