"""`edgesplit offload serve/send/bench` as real processes on 127.0.0.1 (review session 12, B2 F4
F5): "server on" is printed once the port answers, a second server on that port exits 2 without
claiming to serve, `send` takes a URL without scheme and says the SLO was missed, and Ctrl-C
during `bench` prints the frames done and exits 130. Tiny model, a few CLI starts (~30 s)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from edgesplit.offload.data import _data_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "s3cret"
SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(SRC),
    "PYTHONUNBUFFERED": "1",
    "COLUMNS": "200",
    "NO_COLOR": "1",
}


def _cli(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgesplit.cli.main", "offload", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


def _lines(stream: object) -> queue.Queue[str]:
    """The lines of a pipe as they come (a reader thread), so a test can wait with a deadline."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_until(predicate: Callable[[], bool], timeout_s: float) -> None:
    pause = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        pause.wait(0.05)
    raise AssertionError(f"condition not met within {timeout_s} s")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`offload serve --tiny --port 0`; yields the URL its "server on" line names."""
    process = _cli("serve", "--tiny", "--port", "0", "--token", TOKEN)
    lines = _lines(process.stdout)
    try:
        line = lines.get(timeout=120)
        found = re.search(r"edgesplit offload server on (http://127\.0\.0\.1:(\d+)) ", line)
        assert found, line
        assert found.group(2) != "0"  # the port bound, not the one asked for
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_server_answers_as_soon_as_it_says_so(server: str) -> None:
    # no retry: the line comes after the bind, the listen and the model load
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


def test_a_second_server_on_the_port_exits_2_without_claiming_to_serve(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    process = _cli("serve", "--tiny", "--port", port)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2, (out, err)
    assert "server on" not in out
    assert f"error: 127.0.0.1:{port} is already in use" in err
    assert "Traceback" not in err


def test_send_without_scheme_and_a_missed_slo(server: str, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    image = tmp_path / "frame.png"
    Image.fromarray(np.full((64, 64), 128, dtype=np.uint8)).save(image)
    url = server.removeprefix("http://")
    process = _cli("send", str(image), "--url", url, "--token", TOKEN, "--slo-ms", "0.001")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, (out, err)
    assert re.search(r"SLO 0\.001 ms missed by \d+\.\d ms", out), out


def _infer_requests(server: str) -> float:
    text = httpx.get(f"{server}/metrics", timeout=5).text
    counts = re.findall(r"^edgesplit_offload_requests_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return sum(float(c) for c in counts)


@pytest.mark.skipif(_data_dir() is None, reason="Fashion-MNIST absent (scripts/install_data.sh)")
def test_ctrl_c_during_bench_prints_the_frames_done(server: str) -> None:
    before = _infer_requests(server)
    process = _cli(
        "bench", "--url", server, "--token", TOKEN, "--frames", "40", "--period-ms", "300"
    )
    try:
        _wait_until(lambda: _infer_requests(server) >= before + 2, timeout_s=120)
    finally:
        process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, (out, err)
    found = re.search(r"interrupted after (\d+) of 40 frames", out)
    assert found, (out, err)
    done = int(found.group(1))
    assert 1 <= done < 40
    assert re.search(rf"│ {done} +│ [0-9.]+ % +│", out), out  # the table of those frames
    assert "Traceback" not in err
