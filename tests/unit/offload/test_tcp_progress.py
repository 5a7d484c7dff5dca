"""Delivery progress from the kernel (SIOCOUTQ, TCP_INFO) on real 127.0.0.1 sockets, the socket
tracker, the pacer with a fake clock, and the client's progressive cut driven by a fake
progress source (a link slower than the client believes)."""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgesplit.offload import tcp_progress
from edgesplit.offload.client import (
    OffloadClient,
    RetryConfig,
    _chunk_framing_bytes,
    _StreamedBody,
)
from edgesplit.offload.pipeline import tiny_pipeline
from edgesplit.offload.protocol import decode_frame
from edgesplit.offload.server import create_app
from edgesplit.offload.tcp_progress import (
    DeliveryPacer,
    SocketTracker,
    decode_tcp_info,
    read_tcp_info,
    unacked_bytes,
)
from tests.unit.offload.test_progressive import _option as progressive_option

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIOCOUTQ is Linux")


def _poll(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


@contextmanager
def _pair(rcvbuf: int | None = None) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP pair on 127.0.0.1 (client, server side); a small receive buffer makes
    the server's window fill, so written bytes stay unacknowledged while it does not read."""
    listener = socket.socket()
    if rcvbuf is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        yield client, server
    finally:
        for s in (client, server, listener):
            s.close()


def _fill(sock: socket.socket) -> int:
    """Write without blocking until the socket refuses more; return the bytes written."""
    sock.setblocking(False)
    written = 0
    try:
        while True:
            written += sock.send(b"x" * 65536)
    except BlockingIOError:
        pass
    return written


# -- kernel views on a real socket pair ------------------------------------------------------------
@linux_only
def test_unacked_bytes_stay_while_the_peer_does_not_read_and_drain_when_it_does() -> None:
    with _pair(rcvbuf=4096) as (client, server):
        assert unacked_bytes(client) == 0
        written = _fill(client)
        # the peer's window is full: most of what was written is queued, unacknowledged
        assert _poll(lambda: (unacked_bytes(client) or 0) > written // 2)
        queued = unacked_bytes(client)
        assert queued is not None
        assert 0 < queued <= written
        info = read_tcp_info(client)
        assert info is not None
        assert info.bytes_acked is not None
        assert info.bytes_sent is not None
        assert info.notsent_bytes is not None
        assert info.notsent_bytes > 0
        # the counters tell the same story (bytes_acked counts the SYN, hence the 1)
        assert info.bytes_acked - 1 == written - queued
        assert info.unacked_bytes == queued
        # now the peer reads everything: the queue drains to zero
        server.setblocking(False)
        received = 0

        def drained() -> bool:
            nonlocal received
            try:
                while True:
                    chunk = server.recv(1 << 20)
                    if not chunk:
                        break
                    received += len(chunk)
            except BlockingIOError:
                pass
            return unacked_bytes(client) == 0 and received == written

        assert _poll(drained, timeout_s=20.0)
        info = read_tcp_info(client)
        assert info is not None
        assert info.bytes_acked == written + 1
        assert info.unacked_bytes == 0


@linux_only
def test_kernel_views_are_none_for_a_closed_socket_or_off_linux(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _pair() as (client, _server):
        assert read_tcp_info(client) is not None
        monkeypatch.setattr(tcp_progress, "_IS_LINUX", False)
        assert unacked_bytes(client) is None
        assert read_tcp_info(client) is None
        monkeypatch.setattr(tcp_progress, "_IS_LINUX", True)
        client.close()
        assert unacked_bytes(client) is None
        assert read_tcp_info(client) is None
    assert unacked_bytes(None) is None
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert read_tcp_info(udp) is None  # not TCP: getsockopt refuses
    finally:
        udp.close()


def test_tcp_info_decodes_the_kernel_layout_and_tolerates_short_structs() -> None:
    raw = bytearray(232)  # struct tcp_info in Linux 5.x headers
    struct.pack_into("=B", raw, 0, 1)  # TCP_ESTABLISHED
    struct.pack_into("=I", raw, 16, 1448)  # snd_mss
    struct.pack_into("=I", raw, 68, 2500)  # rtt (us)
    struct.pack_into("=I", raw, 100, 3)  # total_retrans
    struct.pack_into("=Q", raw, 120, 10_001)  # bytes_acked (incl. SYN)
    struct.pack_into("=I", raw, 144, 700)  # notsent_bytes
    struct.pack_into("=Q", raw, 200, 12_500)  # bytes_sent
    struct.pack_into("=Q", raw, 208, 500)  # bytes_retrans
    info = decode_tcp_info(bytes(raw))
    assert info is not None
    assert (info.state, info.snd_mss, info.rtt_us, info.total_retrans) == (1, 1448, 2500, 3)
    assert (info.bytes_acked, info.notsent_bytes) == (10_001, 700)
    assert info.unacked_bytes == 12_500 - 500 - 10_000 + 700
    old = decode_tcp_info(bytes(raw[:120]))  # kernel < 4.1: no byte counters
    assert old is not None
    assert old.bytes_acked is None
    assert old.unacked_bytes is None
    assert old.total_retrans == 3
    assert decode_tcp_info(bytes(raw[:100])) is None


@linux_only
def test_tracker_follows_the_connection_inside_httpx() -> None:
    """httpcore's trace reports the connection's socket; after a reconnect, the new one."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    tracker = SocketTracker()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}") as http:
            assert tracker.socket is None
            assert tracker.unacked_bytes() is None
            http.get("/", extensions={"trace": tracker.trace})
            first = tracker.socket
            assert first is not None
            assert first.getpeername()[1] == server.server_port
            assert tracker.unacked_bytes() == 0
            response = http.get("/", extensions={"trace": tracker.trace})  # keep-alive
            tracker.observe(response.extensions)
            assert tracker.socket is first
            first.close()  # the connection goes away: no stale answer
            assert tracker.socket is None
    finally:
        server.shutdown()
        server.server_close()
    tracker.trace("connection.connect_tcp.complete", {"return_value": object()})
    assert tracker.socket is None  # a stream without a socket is ignored


# -- the pacer with a fake clock -------------------------------------------------------------------
class _FakeLink:
    """A fluid link: written bytes queue and drain at `rate` on the fake clock (SIOCOUTQ), after
    a first burst from a full token bucket."""

    def __init__(self, rate: float, burst: float = 0.0) -> None:
        self.now = 0.0
        self.rate = rate
        self.tokens = burst  # a full bucket at the start: this much is delivered at once
        self.queued = 0.0
        self.updated = 0.0
        self.alive = True

    def _drain(self) -> None:
        self.queued = max(0.0, self.queued - self.rate * (self.now - self.updated))
        self.updated = self.now

    def write(self, num_bytes: int) -> None:
        self._drain()
        free = min(self.tokens, num_bytes) if self.queued == 0 else 0.0
        self.tokens -= free  # (the bucket does not refill within one upload here)
        self.queued += num_bytes - free

    def unacked(self) -> int | None:
        if not self.alive:
            return None
        self._drain()
        return int(np.ceil(self.queued))

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += max(0.0, s)


def test_pacer_measures_the_delivery_rate_while_bytes_are_queued() -> None:
    link = _FakeLink(rate=5_000.0, burst=600.0)
    pacer = DeliveryPacer(link.unacked, link.clock, link.sleep, poll_s=0.002)
    link.write(500)  # within the burst: delivered at once, no rate information
    outcome = pacer.before_segment(lambda d, s, q: True)
    assert outcome.send is True
    assert outcome.waited_s == 0.0
    assert pacer.delivered_bytes == 0
    assert pacer.delivery_s == 0
    link.write(400)  # 100 B from the bucket, 300 B queued behind the shaper at 5000 B/s
    outcome = pacer.before_segment(lambda d, s, q: True)
    assert outcome.send is True
    assert outcome.waited_s == pytest.approx(300 / 5_000, abs=0.003)
    assert pacer.delivered_bytes / pacer.delivery_s == pytest.approx(5_000, rel=0.05)


def test_pacer_stops_waiting_once_the_segment_cannot_fit() -> None:
    link = _FakeLink(rate=1_000.0)
    pacer = DeliveryPacer(link.unacked, link.clock, link.sleep, poll_s=0.002)
    link.write(1_000)  # a second to drain
    seen: list[tuple[float, float, int]] = []

    def fits(delivered: float, delivery_s: float, queued: int) -> bool:
        seen.append((delivered, delivery_s, queued))
        return link.now + queued / 20_000 < 0.1  # deadline 100 ms at an optimistic rate

    outcome = pacer.before_segment(fits)
    assert outcome.send is False
    assert 0.0 < outcome.waited_s < 0.06  # well before the queue drained (1 s)
    assert outcome.queued_bytes > 900
    assert seen[0] == (0.0, 0.0, 1_000)  # the first look: nothing measured yet


def test_pacer_falls_back_without_a_progress_source() -> None:
    link = _FakeLink(rate=1_000.0)
    link.alive = False
    pacer = DeliveryPacer(link.unacked, link.clock, link.sleep)
    assert pacer.before_segment(lambda d, s, q: True).send is None
    link.alive = True
    link.write(100)
    frozen = DeliveryPacer(link.unacked, lambda: 0.0, lambda s: None, max_polls=50)
    assert frozen.before_segment(lambda d, s, q: True).send is None  # clock never moves


# -- the client's progressive cut with a fake kernel ----------------------------------------------
IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)


class _FakeKernel:
    """Stands in for the client's SocketTracker: the bytes the transport writes go onto a
    _FakeLink; `unacked_bytes` is what SIOCOUTQ would say."""

    def __init__(self, link: _FakeLink) -> None:
        self.link = link

    def trace(self, event_name: str, info: Mapping[str, object]) -> None:
        pass

    def observe(self, extensions: Mapping[str, object]) -> None:
        pass

    def unacked_bytes(self) -> int | None:
        return self.link.unacked()


class _KernelTransport(httpx.BaseTransport):
    """Writes the request onto the fake link part by part, as httpcore does (headers first,
    then each chunk before the next is asked for), then answers from the app in-process."""

    def __init__(self, app: TestClient, link: _FakeLink, seen: list[bytes]) -> None:
        self.app, self.link, self.seen = app, link, seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/infer":
            self.link.write(300)  # request line + headers
            parts = []
            for part in request.stream:  # type: ignore[union-attr]
                self.link.write(len(part) + _chunk_framing_bytes(len(part)))  # as h11 does
                parts.append(part)
            body = b"".join(parts)
            self.seen.append(body)
        else:
            body = request.read()
        answer = self.app.request(
            request.method, request.url.path, content=body, headers=dict(request.headers)
        )
        return httpx.Response(
            answer.status_code, headers=dict(answer.headers), content=answer.content
        )


@pytest.mark.parametrize(
    ("link_rate", "pacing", "expect_cut"),
    [
        (2_000.0, True, True),  # the link is 25x slower than believed: the acks show it
        (2_000.0, False, False),  # the writes alone never show it (the bug this fixes)
        (200_000.0, True, False),  # a fast link: every segment goes
    ],
)
def test_client_cuts_on_delivered_bytes_not_written_ones(
    link_rate: float, pacing: bool, expect_cut: bool
) -> None:
    app = TestClient(create_app(tiny_pipeline()))
    link = _FakeLink(rate=link_rate, burst=600.0)
    seen: list[bytes] = []
    with OffloadClient(
        "http://edge",
        transport=_KernelTransport(app, link, seen),
        clock=link.clock,
        sleep=link.sleep,
        retry=RetryConfig(max_attempts=1),
        initial_bandwidth_bytes_per_s=50_000.0,
        rtt_s=0.02,
        delivery_pacing=pacing,
    ) as client:
        client._sockets = _FakeKernel(link)  # type: ignore[assignment]
        result = client.classify(
            IMAGE, [progressive_option(codec="webp", quality=50)], slo_s=0.2, robust=False
        )
    header, _ = decode_frame(seen[0])
    assert header.segment_ends is not None
    assert result.response.num_received == header.segment_ends[-1]
    if expect_cut:
        assert result.response.num_received < 32
        # the last segment sent was acknowledged in time: the upload ended by the deadline
        assert link.now <= 0.2
    else:
        assert result.response.num_received == 32


def test_streamed_body_decides_afresh_after_an_interrupted_pass() -> None:
    """An attempt that failed mid-body (the connection broke while writing) left the pass
    unfinished: the retry decides again and counts only what it sends."""
    asked: list[tuple[int, int]] = []

    def fits(j: int, sent: int, wire: int) -> bool:
        asked.append((j, sent))
        return True

    body = _StreamedBody([b"aa", b"bbb", b"c"], fits)
    first = iter(body)
    assert next(first) == b"aa"
    assert next(first) == b"bbb"
    first.close()  # the transport gave up on this attempt
    assert b"".join(body) == b"aabbbc"
    assert body.sent_bytes == 6
    assert b"".join(body) == b"aabbbc"  # and a later retry replays that pass
    assert [j for j, _ in asked] == [1, 1, 2]
