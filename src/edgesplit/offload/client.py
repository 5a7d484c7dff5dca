"""The weak-device client: sample patches, encode them, send one or two rounds over HTTP.

Owns the httpx client (bearer token, timeouts, retry of transient failures with capped
exponential backoff and jitter, keeping the request id so retries are idempotent), patch
sampling (random, grid, server order), the device's bandwidth estimate from its own uploads, the
two-round flow driven by the SLO policy, the progressive (deadline-cut) round 1, and optional
application-level link emulation (token bucket + one-way delay, real clock). On a real link
the progressive round paces itself on the kernel's acknowledgements (tcp_progress). Imports
protocol/codec/policy/emulation/tcp_progress, never the server.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
from pydantic import Field

from edgesplit.core.schema import FrozenModel
from edgesplit.errors import ConfigError, ProtocolVersionError, RetryableError, TransportError
from edgesplit.offload.codec import CodecName, encode_patches, encode_segments
from edgesplit.offload.emulation import TokenBucket
from edgesplit.offload.patches import SamplingName, patchify, sample_indices
from edgesplit.offload.policy import (
    HTTP_OVERHEAD_BYTES,
    BandwidthEstimate,
    Decision,
    OffloadOption,
    PolicyConfig,
    choose,
    observe_upload,
    segment_fits,
    should_request_round2,
)
from edgesplit.offload.protocol import (
    CONTENT_TYPE,
    PROTOCOL_VERSION,
    PatchRequestHeader,
    PatchResponse,
    ServerInfo,
    encode_frame,
)
from edgesplit.offload.tcp_progress import DeliveryPacer, SocketTracker

__all__ = [
    "ClassifyResult",
    "LinkEmulator",
    "OffloadClient",
    "RetryConfig",
    "RoundStats",
    "check_url",
]

log = logging.getLogger(__name__)


def check_url(url: str) -> str:
    """The server's base URL, checked before anything is sent; `http://` added when no scheme.

    `127.0.0.1:8470` becomes `http://127.0.0.1:8470` (as curl reads it).

    Raises:
        ConfigError: not an http(s) URL with a host and a port in 1..65535.
    """
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    example = "e.g. http://127.0.0.1:8470"
    try:
        parsed = httpx.URL(text)
    except httpx.InvalidURL as e:
        raise ConfigError(f"--url {url!r} is not a URL ({e}); {example}") from e
    if parsed.scheme not in ("http", "https"):
        raise ConfigError(f"--url {url!r} must start with http:// or https://; {example}")
    if not parsed.host:
        raise ConfigError(f"--url {url!r} names no host; {example}")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ConfigError(f"--url {url!r}: port {parsed.port} is not in 1..65535; {example}")
    return text


class RetryConfig(FrozenModel):
    max_attempts: int = Field(default=8, ge=1)
    base_backoff_s: float = Field(default=0.05, gt=0)
    max_backoff_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)  # per HTTP call


@dataclass
class LinkEmulator:
    """Shapes the device's uplink in real time: token bucket on the trace + one-way delay."""

    bucket: TokenBucket
    one_way_latency_s: float = 0.01
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    origin_s: float = field(default_factory=time.monotonic)

    def upload(self, num_bytes: int) -> float:
        """Block for the shaped upload time of `num_bytes` plus the one-way delay; return it."""
        duration = self.transmit(num_bytes) + self.one_way_latency_s
        self.sleep(self.one_way_latency_s)
        return duration

    def transmit(self, num_bytes: int) -> float:
        """Block until `num_bytes` have left the device (no propagation delay); return it."""
        start = self.clock() - self.origin_s
        finish = self.bucket.transmit(num_bytes, start)
        self.sleep(finish - start)
        return finish - start

    def downlink(self) -> None:
        self.sleep(self.one_way_latency_s)


@dataclass(frozen=True, slots=True)
class RoundStats:
    body_bytes: int
    elapsed_s: float
    attempts: int


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    response: PatchResponse
    rounds: tuple[RoundStats, ...]
    latency_s: float
    option_name: str
    total_bytes: int


class OffloadClient:
    """Talks to one edge server. Not thread-safe; one per device loop.

    Example:
        client = OffloadClient("http://127.0.0.1:8470")
        info = client.info()
        response, _ = client.send_round(image, indices=[0, 5, 9], codec="zlib")
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        retry: RetryConfig | None = None,
        rng: np.random.Generator | None = None,
        link: LinkEmulator | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        initial_bandwidth_bytes_per_s: float = 25_000.0,
        rtt_s: float = 0.02,
        transport: httpx.BaseTransport | None = None,
        delivery_pacing: bool = True,
    ) -> None:
        """base_url: the server, checked by `check_url` (a ConfigError before any request).

        delivery_pacing: on a real link (no emulator), a progressive round 1 decides each
        later segment on the bytes the peer has acknowledged (Linux SIOCOUTQ on the connection's
        socket, see send_progressive); False decides on the wall clock of the writes alone."""
        self.retry = retry or RetryConfig()
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=check_url(base_url),
            headers=headers,
            timeout=self.retry.timeout_s,
            transport=transport,
        )
        self._rng = rng or np.random.default_rng(0)
        self.link = link
        self._clock, self._sleep = clock, sleep
        self.estimate = BandwidthEstimate(initial_bandwidth_bytes_per_s)
        self.rtt_s = rtt_s
        self._info: ServerInfo | None = None
        self.delivery_pacing = delivery_pacing
        # the socket of the connection a request travels on (httpcore trace + network_stream)
        self._sockets = SocketTracker()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OffloadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """One HTTP call with retries of transient failures (connection, 502/503/504)."""
        delay = self.retry.base_backoff_s
        last: Exception | None = None
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                response = self._http.request(
                    method,
                    path,
                    extensions={"trace": self._sockets.trace},
                    **kwargs,  # type: ignore[arg-type]
                )
                self._sockets.observe(response.extensions)
                if response.status_code in (502, 503, 504):
                    raise RetryableError(f"server answered {response.status_code}")
                response.extensions["edgesplit_attempts"] = attempt
                return response
            except (httpx.TransportError, RetryableError) as e:
                last = e
                if attempt == self.retry.max_attempts:
                    break
                jittered = delay * (0.5 + self._rng.random())
                log.debug(
                    "attempt %d of %s %s failed (%s); retry in %.3f s",
                    attempt,
                    method,
                    path,
                    e,
                    jittered,
                )
                self._sleep(jittered)
                delay = min(self.retry.max_backoff_s, delay * 2)
        raise RetryableError(
            f"{method} {path} failed {self.retry.max_attempts} times; last error: {last}; "
            "is the server running and reachable?"
        ) from last

    def info(self) -> ServerInfo:
        response = self._call("GET", "/v1/info")
        _raise_for_status(response)
        info = ServerInfo.model_validate(response.json())
        if info.protocol_version != PROTOCOL_VERSION:
            raise ProtocolVersionError(
                f"server speaks protocol {info.protocol_version}, client {PROTOCOL_VERSION}"
            )
        self._info = info
        return info

    # -- one round --------------------------------------------------------------------------
    def send_round(
        self,
        image: np.ndarray,
        indices: list[int] | np.ndarray,
        *,
        codec: CodecName = "zlib",
        quality: int | None = None,
        patch_size: int = 8,
        request_id: str | None = None,
        round_index: int = 1,
        session_id: str | None = None,
        extra_k: int = 0,
    ) -> tuple[PatchResponse, RoundStats]:
        """Send the patches of `image` (H, W uint8) at `indices` (sent sorted); one round."""
        sorted_indices = sorted(int(i) for i in indices)
        patches = patchify(image, patch_size)[sorted_indices]
        payload = encode_patches(patches, codec, quality)
        header = PatchRequestHeader(
            request_id=request_id or uuid.uuid4().hex,
            round_index=round_index,  # type: ignore[arg-type]
            session_id=session_id,
            image_size=image.shape[0],
            patch_size=patch_size,
            codec=codec,
            quality=quality,
            indices=sorted_indices,
            payload_bytes=len(payload),
            extra_k=extra_k,
        )
        body = encode_frame(header, payload)
        start = self._clock()
        upload_s = self.link.upload(len(body)) if self.link else 0.0
        return self._post_round(body, header.request_id, start, upload_s)

    def _post_round(
        self, content: bytes | _StreamedBody, request_id: str, start: float, upload_s: float
    ) -> tuple[PatchResponse, RoundStats]:
        """POST one round's body, fold its upload into the bandwidth estimate, parse the answer.

        `upload_s` is the emulated upload time, or 0 without an emulator: it is then inferred
        from the round trip. A streamed body counts the bytes it actually sent.
        """
        response = self._call("POST", "/v1/infer", content=content, headers=_headers(request_id))
        if self.link:
            self.link.downlink()
        elapsed = self._clock() - start
        _raise_for_status(response)
        answer = PatchResponse.model_validate(response.json())
        body_bytes = len(content) if isinstance(content, bytes) else content.sent_bytes
        if not upload_s:  # no emulator: infer the upload time from the round trip
            upload_s = elapsed - answer.server_compute_s - self.rtt_s
        self.estimate = observe_upload(self.estimate, body_bytes, upload_s)
        stats = RoundStats(body_bytes, elapsed, int(response.extensions["edgesplit_attempts"]))
        return answer, stats

    # -- progressive round 1 ----------------------------------------------------------------
    def send_progressive(
        self,
        image: np.ndarray,
        decision: Decision,
        info: ServerInfo,
        *,
        slo_s: float,
        frame_start_s: float,
        request_id: str,
        policy: PolicyConfig | None = None,
        rate_bytes_per_s: float | None = None,
    ) -> tuple[PatchResponse, RoundStats]:
        """Round 1 as server-order segments, cut at the deadline (see policy.segment_fits).

        The frame header announces every segment up to the option's cap; the body ends after
        the last segment that was predicted, at the rate this very upload achieves, to arrive
        in time. With a link emulator the cut is decided segment by segment against the shaped
        link, then the chosen prefix is posted. On a real link the body streams (chunked): before
        each later segment the client waits until the peer has acknowledged what was written (or
        until the segment can no longer fit), and the rule runs at the delivery rate measured
        meanwhile, with the bytes still queued counted ahead of the segment (DeliveryPacer).
        Where the kernel cannot tell (no socket known, not Linux, delivery_pacing=False), the
        rule runs on the wall clock as the socket takes the bytes.
        """
        option = decision.option
        ends = list(option.prefix_ends)
        order = np.asarray(info.patch_order)[: ends[-1]]
        patches = patchify(image, info.patch_size)[order]
        segments = encode_segments(patches, ends, option.codec, option.quality)
        header = PatchRequestHeader(
            request_id=request_id,
            image_size=image.shape[0],
            patch_size=info.patch_size,
            codec=option.codec,
            quality=option.quality,
            server_order=True,
            payload_bytes=sum(len(x) for x in segments),
            segment_ends=ends,
            segment_bytes=[len(x) for x in segments],
            extra_k=option.k2,
        )
        frame = encode_frame(header, b"".join(segments))
        parts = [frame[: len(frame) - header.payload_bytes], *segments]
        parts[0:2] = [parts[0] + parts[1]]  # the frame header travels with segment 0
        rate = rate_bytes_per_s or self.estimate.planning_bytes_per_s
        sent: list[bytes] = []
        start = self._clock()
        upload_s = 0.0
        if self.link:
            for j, part in enumerate(parts):
                wire = len(part) + (HTTP_OVERHEAD_BYTES if j == 0 else 0)
                if not segment_fits(
                    option,
                    j,
                    sent_bytes=sum(len(x) for x in sent) + (HTTP_OVERHEAD_BYTES if sent else 0),
                    upload_s=upload_s,
                    elapsed_s=self._clock() - frame_start_s,
                    segment_bytes=wire,
                    bandwidth_bytes_per_s=rate,
                    slo_s=slo_s,
                    rtt_s=self.rtt_s,
                    config=policy,
                ):
                    break
                upload_s += self.link.transmit(wire)
                sent.append(part)
            upload_s += self.link.one_way_latency_s
            self.link.sleep(self.link.one_way_latency_s)
            content: bytes | _StreamedBody = b"".join(sent)
        else:
            pacer = (
                DeliveryPacer(self._sockets.unacked_bytes, self._clock, self._sleep)
                if self.delivery_pacing
                else None
            )

            def fits(j: int, sent_bytes: float, upload_s: float, segment_bytes: float) -> bool:
                return segment_fits(
                    option,
                    j,
                    sent_bytes=sent_bytes,
                    upload_s=upload_s,
                    elapsed_s=self._clock() - frame_start_s,
                    segment_bytes=segment_bytes,
                    bandwidth_bytes_per_s=rate,
                    slo_s=slo_s,
                    rtt_s=self.rtt_s,
                    config=policy,
                )

            def decide(j: int, sent_bytes: int, part_bytes: int) -> bool:
                if pacer is not None:
                    wire = part_bytes + _chunk_framing_bytes(part_bytes)
                    outcome = pacer.before_segment(
                        lambda delivered, delivery_s, queued: fits(
                            j, delivered, delivery_s, wire + queued
                        )
                    )
                    if outcome.send is not None:
                        return outcome.send
                # no kernel view: the wall clock of the writes
                return fits(j, sent_bytes, self._clock() - start, part_bytes)

            content = _StreamedBody(parts, decide)
        return self._post_round(content, request_id, start, upload_s)

    # -- adaptive, two rounds ---------------------------------------------------------------
    def classify(
        self,
        image: np.ndarray,
        options: list[OffloadOption],
        *,
        slo_s: float,
        policy: PolicyConfig | None = None,
        robust: bool = True,
    ) -> ClassifyResult:
        """Classify one image within `slo_s` using the policy over measured `options`.

        robust: round 1 must also fit if the link dropped as sharply as the worst recent
        upload did (see BandwidthEstimate.pessimistic_bytes_per_s).
        """
        info = self._info or self.info()
        start = self._clock()
        decision: Decision = choose(
            options,
            bandwidth_bytes_per_s=self.estimate.planning_bytes_per_s,
            rtt_s=self.rtt_s,
            slo_s=slo_s,
            config=policy,
            pessimistic_bytes_per_s=self.estimate.pessimistic_ladder if robust else None,
            expected_bytes_per_s=self.estimate.bytes_per_s,
        )
        option = decision.option
        request_id = uuid.uuid4().hex
        # The online decisions (where to cut round 1, whether round 2 fits) use the planning
        # rate, or, robustly, a rate as low as the worst 2 % of recent uploads.
        online_rate = self.estimate.planning_bytes_per_s
        if robust:
            online_rate = min(online_rate, self.estimate.pessimistic_bytes_per_s)
        if option.progressive:
            response, first = self.send_progressive(
                image,
                decision,
                info,
                slo_s=slo_s,
                frame_start_s=start,
                request_id=request_id,
                policy=policy,
                rate_bytes_per_s=online_rate,
            )
            indices = [int(i) for i in info.patch_order[: response.num_received]]
        else:
            indices = self._sample(option.sampling, info, option.k1)
            response, first = self.send_round(
                image,
                indices,
                codec=option.codec,
                quality=option.quality,
                patch_size=info.patch_size,
                request_id=request_id,
                extra_k=option.k2,
            )
        rounds = [first]
        whole = response.num_received == option.k1  # a progressive round 1 may have been cut
        if (
            option.k2
            and whole
            and should_request_round2(
                decision,
                confidence=response.confidence,
                elapsed_s=self._clock() - start,
                slo_s=slo_s,
                bandwidth_bytes_per_s=online_rate,
                rtt_s=self.rtt_s,
                config=policy,
            )
        ):
            extra = response.requested_indices[: option.k2]
            try:
                response, second = self.send_round(
                    image,
                    extra,
                    codec=option.codec,
                    quality=option.quality,
                    patch_size=info.patch_size,
                    request_id=request_id,
                    round_index=2,
                    session_id=response.session_id,
                )
            except TransportError as e:
                if "unknown_session" not in str(e):
                    raise
                # The server lost round 1 (restart): send everything as a fresh round 1.
                response, second = self.send_round(
                    image,
                    [*indices, *extra],
                    codec=option.codec,
                    quality=option.quality,
                    patch_size=info.patch_size,
                )
            rounds.append(second)
        return ClassifyResult(
            response=response,
            rounds=tuple(rounds),
            latency_s=self._clock() - start,
            option_name=option.name,
            total_bytes=sum(r.body_bytes for r in rounds),
        )

    def _sample(self, sampling: SamplingName, info: ServerInfo, k: int) -> list[int]:
        order = np.asarray(info.patch_order) if sampling == "server" else None
        return sample_indices(
            sampling, info.num_patches, k, rng=self._rng, server_order=order
        ).tolist()


def _headers(request_id: str) -> dict[str, str]:
    """Request headers of a round. Both rounds of an image share the request id; sending it as
    `x-session-id` lets a session-affine router (Ray Serve's consistent-hash router, see
    serve_ray.py) bring round 2 to the replica that holds round 1."""
    return {"content-type": CONTENT_TYPE, "x-session-id": request_id}


def _chunk_framing_bytes(size: int) -> int:
    """HTTP/1.1 chunked framing around a chunk of `size` bytes: hex length, CRLF, data, CRLF."""
    return len(b"%x" % size) + 4


class _StreamedBody:
    """A chunked request body that decides, part by part, whether to send the next segment.

    `fits(j, sent_bytes, wire_bytes)` is asked before part j > 0. Iterating again (an httpx
    retry) replays exactly the parts the first pass sent, so a retried request is identical.
    """

    def __init__(self, parts: list[bytes], fits: Callable[[int, int, int], bool]) -> None:
        self._parts, self._fits = parts, fits
        self._decided: list[bytes] | None = None
        self.sent_bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        if self._decided is not None:
            yield from self._decided
            return
        decided: list[bytes] = []
        self.sent_bytes = 0  # a pass cut short by a failed attempt starts over
        for j, part in enumerate(self._parts):
            if j and not self._fits(j, self.sent_bytes + HTTP_OVERHEAD_BYTES, len(part)):
                break
            decided.append(part)
            self.sent_bytes += len(part)
            yield part
        self._decided = decided


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        detail = f"{body.get('error')}: {body.get('detail')}"
    except ValueError:
        detail = response.text[:200]
    raise TransportError(f"server answered {response.status_code} ({detail})")
