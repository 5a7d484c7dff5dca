"""The edge server under slow and greedy clients, over real sockets on 127.0.0.1 (issue 19).

uvicorn runs in a thread of this process with the guard's deadlines shortened to a second or
two: connections that trickle headers or bodies are closed at their deadline while others are
served; connections beyond the cap get a JSON 503 at once; a raw non-ASCII bearer byte is a 401.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
import uvicorn

from edgesplit.offload.client import OffloadClient
from edgesplit.offload.pipeline import tiny_pipeline
from edgesplit.offload.server import ServerConfig, create_app, server_uvicorn_config

pytestmark = pytest.mark.integration

TOKEN = "test-token"
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 24


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> None:
    pause = threading.Event()
    for _ in range(int(timeout_s / interval_s)):
        if predicate():
            return
        pause.wait(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[int]:
    config = ServerConfig(
        port=_free_port(),
        token=TOKEN,
        header_timeout_s=HEADER_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
        max_connections=MAX_CONNECTIONS,
    )
    app = create_app(tiny_pipeline(), config)
    instance = uvicorn.Server(server_uvicorn_config(app, config))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    wait_until(lambda: instance.started, timeout_s=30)
    yield config.port
    instance.should_exit = True
    thread.join(timeout=10)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    """True once the server has closed the connection (EOF or reset)."""
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _trickle_until_closed(
    socks: list[socket.socket], byte: bytes, origin_s: float, limit_s: float
) -> dict[socket.socket, float]:
    """Send `byte` on each open socket every 0.1 s until the server closes it or `limit_s`
    after `origin_s` (a time.monotonic()); return when each was closed, from `origin_s`."""
    start = origin_s
    closed: dict[socket.socket, float] = {}
    while len(closed) < len(socks) and time.monotonic() - start < limit_s:
        open_socks = [s for s in socks if s not in closed]
        readable, _, _ = select.select(open_socks, [], [], 0.1)
        for sock in open_socks:
            if sock in readable and _closed_by_peer(sock):
                closed[sock] = time.monotonic() - start
                continue
            try:
                sock.send(byte)
            except OSError:
                closed[sock] = time.monotonic() - start
    return closed


def test_slow_headers_and_bodies_are_closed_while_others_are_served(server: int) -> None:
    headers_sent_s = time.monotonic()
    slow_headers = [_connect(server) for _ in range(12)]
    for sock in slow_headers:
        sock.send(b"POST /v1/infer HTTP/1.1\r\nHost: edge\r\nX-Slow: ")
    bodies_sent_s = time.monotonic()
    slow_bodies = [_connect(server) for _ in range(6)]
    for sock in slow_bodies:
        sock.send(
            b"POST /v1/infer HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer test-token\r\n"
            b"Content-Type: application/x-edgesplit-patches\r\nContent-Length: 60000\r\n\r\nESPL"
        )
    # others are served meanwhile: 18 slow connections of a cap of 24 leave room
    with OffloadClient(f"http://127.0.0.1:{server}", token=TOKEN) as client:
        info = client.info()
        image = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
        answer, _ = client.send_round(image, info.patch_order[:8], codec="zlib")
        assert answer.num_received == 8
    headers_closed = _trickle_until_closed(
        slow_headers, b"a", headers_sent_s, limit_s=HEADER_TIMEOUT_S + 5
    )
    bodies_closed = _trickle_until_closed(
        slow_bodies, b"\x00", bodies_sent_s, limit_s=BODY_TIMEOUT_S + 5
    )
    assert len(headers_closed) == len(slow_headers), "slow-header connections left open"
    assert len(bodies_closed) == len(slow_bodies), "slow-body connections left open"
    # each was closed at its deadline: not before, and trickling did not extend it
    assert min(headers_closed.values()) > HEADER_TIMEOUT_S - 0.3
    assert max(headers_closed.values()) < HEADER_TIMEOUT_S + 2
    assert min(bodies_closed.values()) > BODY_TIMEOUT_S - 0.3
    assert max(bodies_closed.values()) < BODY_TIMEOUT_S + 2
    for sock in slow_headers + slow_bodies:
        sock.close()
    assert httpx.get(f"http://127.0.0.1:{server}/health", timeout=5).json()["status"] == "ok"


def test_connections_over_the_cap_get_a_json_503_at_once(server: int) -> None:
    opened_s = time.monotonic()
    held = [_connect(server) for _ in range(MAX_CONNECTIONS)]
    extra = socket.create_connection(("127.0.0.1", server), timeout=5)
    answer = b""
    while chunk := extra.recv(4096):
        answer += chunk
    extra.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer[:80]
    assert b'"error":"busy"' in answer
    # the idle ones are closed at the header deadline, then the server accepts again
    closed = _trickle_until_closed(held, b"", opened_s, limit_s=HEADER_TIMEOUT_S + 5)
    assert len(closed) == len(held)
    for sock in held:
        sock.close()
    assert httpx.get(f"http://127.0.0.1:{server}/health", timeout=5).status_code == 200


def test_raw_non_ascii_bearer_byte_is_401(server: int) -> None:
    for path in (b"/v1/info", b"/v1/infer"):
        with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
            method = b"GET" if path == b"/v1/info" else b"POST"
            sock.sendall(
                method + b" " + path + b" HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer \xe9\r\n"
                b"Content-Type: application/x-edgesplit-patches\r\nContent-Length: 4\r\n"
                b"Connection: close\r\n\r\nESPL"
            )
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 401"), answer[:80]
        assert b'"error":"unauthorized"' in answer
