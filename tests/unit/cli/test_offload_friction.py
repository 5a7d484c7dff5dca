"""`edgesplit offload` friction (review session 12: B1, B2, F4, F5, D4): every option checked
before anything connects, binds or loads; `serve` claims to serve only once the port is bound
and the model loaded; Ctrl-C during `bench` keeps the frames done; `send` takes a URL without a
scheme and says when the SLO was missed. No server is started here: the client talks to the
tiny app in-process (tests/integration/test_offload_cli.py runs the real processes)."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner, Result

from edgesplit.api import offload as api_offload
from edgesplit.cli.main import _register, app
from edgesplit.errors import ConfigError
from edgesplit.offload.client import OffloadClient, RetryConfig
from edgesplit.offload.live import FrameRecord
from edgesplit.offload.pipeline import tiny_pipeline
from edgesplit.offload.server import create_app

_register()
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
NOWHERE = "http://127.0.0.1:9"  # discard port: nothing answers (the checks come first)


def _invoke(*args: str) -> Result:
    return runner.invoke(app, ["offload", *args])


def _flat(text: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


# --- B1: options checked first, one line naming flag, value and range ---------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("send", "--k", "0"), "Invalid value for '--k': must be at least 1, got 0"),
        (("send", "--quality", "500"), "Invalid value for '--quality': must be 1..100, got 500"),
        (("send", "--extra-k", "-1"), "'--extra-k': must be at least 0, got -1"),
        (("send", "--slo-ms", "0"), "'--slo-ms': must be greater than 0 ms, got 0"),
        (("send", "--test-index", "-1"), "'--test-index': must be at least 0, got -1"),
        (("bench", "--trace", "5g"), "--trace must be one of steady, step, random_walk, wifi, lte"),
        (("bench", "--frames", "0"), "'--frames': must be at least 1, got 0"),
        (("bench", "--mean-kbps", "0"), "'--mean-kbps': must be greater than 0 kbit/s, got 0"),
        (("bench", "--period-ms", "0"), "'--period-ms': must be greater than 0 ms, got 0"),
        (("bench", "--slo-ms", "-5"), "'--slo-ms': must be greater than 0 ms, got -5"),
        (("bench", "--one-way-ms", "-1"), "'--one-way-ms': must be at least 0 ms, got -1"),
        (("serve", "--port", "70000"), "'--port': must be 0..65535, got 70000"),
        (("serve", "--reuse", "bogus"), "--reuse must be one of incremental, recompute"),
        (("serve", "--max-body-bytes", "0"), "'--max-body-bytes': must be at least 1, got 0"),
        (("serve", "--header-timeout-s", "0"), "'--header-timeout-s': must be greater than 0 s"),
        (("serve", "--body-timeout-s", "nan"), "'--body-timeout-s': must be greater than 0 s"),
        (("serve", "--max-connections", "0"), "'--max-connections': must be at least 1, got 0"),
        (("serve", "--ray-replicas", "65"), "'--ray-replicas': must be 0..64, got 65"),
        (("serve", "--ray-cpus", "0"), "'--ray-cpus': must be greater than 0, got 0"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else "",
)
def test_a_bad_option_is_a_usage_error_naming_flag_and_value(
    args: tuple[str, ...], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_: object, **__: object) -> None:
        raise AssertionError("the command went on to serve or connect")

    monkeypatch.setattr(api_offload, "serve_offload", never)
    monkeypatch.setattr(api_offload, "serve_offload_ray", never)
    monkeypatch.setattr(api_offload, "OffloadClient", never)
    extra = ("--url", NOWHERE) if args[0] != "serve" else ()
    result = _invoke(*args, *extra)
    assert result.exit_code == 2, result.output
    assert message in _flat(result.output), result.output
    assert "Traceback" not in result.output


def test_server_config_errors_are_config_errors_naming_the_flag() -> None:
    """The backstop behind the option checks: pydantic's errors in the CLI's words."""
    with pytest.raises(ConfigError) as caught:
        api_offload.server_config({"port": 70000, "reuse": "bogus", "max_body_bytes": 0})
    text = str(caught.value)
    assert text.startswith("offload serve: 3 problems")
    assert "--port should be less than or equal to 65535 (got 70000)" in text
    assert "--reuse should be 'incremental' or 'recompute' (got 'bogus')" in text
    assert "--max-body-bytes should be greater than 0 (got 0)" in text
    assert "pydantic" not in text
    assert "[type=" not in text


# --- B2: nothing claims to serve before the port and the checkpoints are checked ----------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgesplit.offload.serve_ray as serve_ray

    def never(*_: object, **__: object) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(serve_ray, "serve_forever", never)


@pytest.mark.parametrize("ray", [False, True], ids=["uvicorn", "ray"])
def test_serve_on_a_busy_port_fails_before_claiming_to_serve(
    busy_port: int, ray: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_ray(monkeypatch)
    args = ["serve", "--tiny", "--port", str(busy_port)] + (["--ray-replicas", "1"] if ray else [])
    result = _invoke(*args)
    assert isinstance(result.exception, ConfigError), result.output
    assert result.exception.exit_code == 2
    assert f"127.0.0.1:{busy_port} is already in use" in str(result.exception)
    assert "server on" not in result.output
    assert "starting Ray" not in result.output


@pytest.mark.parametrize("ray", [False, True], ids=["uvicorn", "ray"])
def test_serve_with_bad_weights_fails_before_binding_or_ray(
    tmp_path: Path, busy_port: int, ray: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_ray(monkeypatch)
    args = ["serve", "--weights", str(tmp_path / "nope"), "--port", str(busy_port)]
    result = _invoke(*args, *(["--ray-replicas", "1"] if ray else []))
    assert isinstance(result.exception, ConfigError), result.output
    message = str(result.exception)
    assert f"{tmp_path / 'nope'} is not a directory" in message  # the weights, not the port
    assert "make models" in message
    assert "server on" not in result.output


def test_serve_ray_with_port_0_is_refused_before_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_ray(monkeypatch)
    result = _invoke("serve", "--tiny", "--port", "0", "--ray-replicas", "1")
    assert isinstance(result.exception, ConfigError), result.output
    assert "--port 0" in str(result.exception)


# --- the client against the tiny app in-process -------------------------------------------------


def _in_process(clock: Callable[[], float] | None = None) -> Callable[..., OffloadClient]:
    """An OffloadClient factory for the CLI whose requests reach the tiny app in-process."""
    server = TestClient(create_app(tiny_pipeline()))

    def handle(request: httpx.Request) -> httpx.Response:
        answer = server.request(
            request.method, request.url.path, content=request.content, headers=request.headers
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    def factory(base_url: str, **kwargs: object) -> OffloadClient:
        factory.urls.append(base_url)  # type: ignore[attr-defined]
        extra: dict[str, object] = {"clock": clock} if clock is not None else {}
        return OffloadClient(
            base_url,
            transport=httpx.MockTransport(handle),
            retry=RetryConfig(max_attempts=1),
            **extra,
            **kwargs,  # type: ignore[arg-type]
        )

    factory.urls = []  # type: ignore[attr-defined]
    return factory


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "frame.png"
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# --- F5: a URL without a scheme, an SLO missed said as such --------------------------------------


def test_send_accepts_a_url_without_scheme(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    factory = _in_process()
    monkeypatch.setattr(api_offload, "OffloadClient", factory)
    result = _invoke("send", str(image), "--url", "127.0.0.1:8470", "--k", "8")
    assert result.exit_code == 0, result.output
    assert factory.urls == ["http://127.0.0.1:8470"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1:8470", "must start with http:// or https://"),
        ("http://127.0.0.1:99999", "port 99999 is not in 1..65535"),
        ("http://:8470", "names no host"),
        ("127.0.0.1:84x0", "is not a URL"),
    ],
)
def test_a_bad_url_is_a_config_error_before_any_request(url: str, message: str) -> None:
    for command in ("send", "bench"):
        result = _invoke(command, "--url", url)
        assert isinstance(result.exception, ConfigError), result.output
        assert message in str(result.exception)
        assert "e.g. http://127.0.0.1:8470" in str(result.exception)


def test_send_says_by_how_much_the_slo_was_missed(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = iter(np.arange(0.0, 1000.0, 0.01))  # each clock read advances 10 ms
    monkeypatch.setattr(api_offload, "OffloadClient", _in_process(lambda: float(next(ticks))))
    result = _invoke("send", str(image), "--slo-ms", "1")
    assert result.exit_code == 0, result.output
    found = re.search(r"SLO 1 ms missed by (\d+\.\d) ms", result.output)
    assert found, result.output
    assert float(found.group(1)) >= 9.0  # at least one tick


def test_send_says_when_the_slo_was_met(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_offload, "OffloadClient", _in_process())
    result = _invoke("send", str(image), "--slo-ms", "60000")
    assert result.exit_code == 0, result.output
    assert re.search(r"SLO 60000 ms met \(\d+\.\d ms to spare\)", result.output), result.output


def test_send_says_when_k_and_extra_k_are_capped(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_offload, "OffloadClient", _in_process())
    result = _invoke("send", str(image), "--k", "100000", "--extra-k", "4")
    assert result.exit_code == 0, result.output
    assert "--k 100000 capped to 64, the server's patches per image" in result.output
    assert "--extra-k 4 capped to 0" in result.output
    result = _invoke("send", str(image), "--k", "60", "--extra-k", "8")
    assert result.exit_code == 0, result.output
    assert "--extra-k 8 capped to 4" in result.output
    rows = [line for line in result.output.splitlines() if re.match(r"[│ ]*[12] ", line)]
    assert len(rows) == 2, result.output  # round 2 sent the 4 left


# --- F4: Ctrl-C during bench keeps the frames done ----------------------------------------------


def test_bench_interrupted_prints_the_frames_done_and_exits_130(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api_offload, "OffloadClient", _in_process())
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    monkeypatch.setattr(api_offload, "load_fashion_mnist", lambda split: (images, np.zeros(5)))
    latencies = (0.1, 0.3, 0.2)

    def three_then_ctrl_c(*_: object, **__: object) -> Iterator[FrameRecord]:
        for latency in latencies:
            yield FrameRecord(latency_s=latency, correct=True, body_bytes=300, rounds=1)
        raise KeyboardInterrupt

    monkeypatch.setattr(api_offload, "iter_frames", three_then_ctrl_c)
    result = _invoke("bench", "--frames", "5", "--slo-ms", "250")
    assert result.exit_code == 130, result.output
    flat = _flat(result.output)
    assert "interrupted after 3 of 5 frames" in flat
    assert re.search(r"┃ frames ┃.*\n.*\n│ 3 +│ 66\.7 %", result.output), result.output
    assert "SLO 250 ms missed on 1 of 3 frame(s), by up to 50.0 ms" in flat


def test_bench_interrupted_before_any_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_offload, "OffloadClient", _in_process())
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    monkeypatch.setattr(api_offload, "load_fashion_mnist", lambda split: (images, np.zeros(2)))

    def ctrl_c(*_: object, **__: object) -> Iterator[FrameRecord]:
        raise KeyboardInterrupt
        yield  # a generator

    monkeypatch.setattr(api_offload, "iter_frames", ctrl_c)
    result = _invoke("bench", "--frames", "2")
    assert result.exit_code == 130, result.output
    assert "interrupted after 0 of 2 frames" in result.output
    assert "frames ┃" not in result.output  # no table of nothing


def test_bench_frames_past_the_test_set(monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    monkeypatch.setattr(api_offload, "load_fashion_mnist", lambda split: (images, np.zeros(4)))
    result = _invoke("bench", "--frames", "5", "--url", NOWHERE)
    assert isinstance(result.exception, ConfigError), result.output
    assert "--frames must be 1..4" in str(result.exception)


# --- D4: the examples work as written against the serve example ---------------------------------


@pytest.mark.parametrize("command", [(), ("send",), ("bench",)], ids=["group", "send", "bench"])
def test_help_examples_carry_the_serve_token(command: tuple[str, ...]) -> None:
    result = runner.invoke(app, ["offload", *command, "--help"])
    assert result.exit_code == 0
    examples = [
        line.strip().strip("│").strip()
        for line in result.output.splitlines()
        if re.match(r"\W*edgesplit offload (send|bench) ", line)
    ]
    assert examples, result.output
    assert all("--token s3cret" in line for line in examples), examples
