"""Read deadlines and a connection cap for the edge server's HTTP/1.1 connections (uvicorn + h11).

Owns what uvicorn 0.54 leaves open (issue 19): it closes an idle keep-alive connection, but a
connection that sends headers one byte at a time, or a body slower than any device would, holds
its socket and buffers for ever. `guarded_protocol` returns uvicorn's h11 protocol with two
deadlines per request and a cap on open connections; `uvicorn_config` wires it up. Imports
uvicorn and h11 only; knows nothing of the app.

[Note: request deadlines] A connection waiting for a request (just opened, or after a response)
must deliver the request's complete headers within `header_timeout_s`; once they are in, the
whole body must arrive within `body_timeout_s`. Each deadline is fixed when its phase begins, so
trickling a byte at a time does not extend it. On expiry the connection is closed (the app sees
a disconnect). While the app computes (body complete, response not sent) no deadline runs.
Connections beyond `max_connections` are closed as soon as they are accepted, before a byte is
read, with a JSON 503 (clients retry it). Each connection runs at most one request at a time,
so the cap bounds concurrent requests too.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["GuardSettings", "guarded_protocol", "uvicorn_config"]

_Phase = Literal["headers", "body", "none"]


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """The three numbers the guard enforces (copied from ServerConfig)."""

    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


# What a connection over the cap reads before it is closed: a JSON 503 (clients retry 503).
_OVER_CAP_BODY = b'{"error":"busy","detail":"too many open connections; retry shortly"}'
_OVER_CAP_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_OVER_CAP_BODY), _OVER_CAP_BODY)
)


def guarded_protocol(settings: GuardSettings) -> type[H11Protocol]:
    """uvicorn's h11 protocol with request deadlines and a connection cap (see the module note)."""

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None
            self._deadline_key: tuple[_Phase, int] = ("none", 0)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > settings.max_connections:
                self.logger.warning(
                    "closing a connection: %d open, the cap is %d",
                    len(self.connections),
                    settings.max_connections,
                )
                transport.write(_OVER_CAP_RESPONSE)
                transport.close()
                return
            self._update_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_deadline()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._update_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._update_deadline()

        # -- the deadline of the current phase ----------------------------------------------
        def _phase(self) -> _Phase:
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                return "headers"  # waiting for (the rest of) a request's headers
            if cycle.more_body:
                return "body"
            return "none"  # the app has the whole request

        def _update_deadline(self) -> None:
            if self.transport is None or self.transport.is_closing():
                return
            phase = self._phase()
            key = (phase, id(self.cycle))
            if key == self._deadline_key:
                return  # same phase of the same request: its deadline stands
            self._cancel_deadline()
            self._deadline_key = key
            if phase == "none":
                return
            timeout_s = settings.header_timeout_s if phase == "headers" else settings.body_timeout_s
            self._deadline = self.loop.call_later(timeout_s, self._expire, phase)

        def _cancel_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self, phase: _Phase) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            timeout_s = settings.header_timeout_s if phase == "headers" else settings.body_timeout_s
            self.logger.info("closing a connection: no complete %s within %.1f s", phase, timeout_s)
            self.transport.close()

    return GuardedH11Protocol


def uvicorn_config(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    settings: GuardSettings,
    keep_alive_s: int,
    max_header_bytes: int,
    log_level: str = "warning",
) -> uvicorn.Config:
    """A uvicorn config serving `app` over the guarded h11 protocol (no httptools)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(settings),
        timeout_keep_alive=keep_alive_s,
        h11_max_incomplete_event_size=max_header_bytes,
        log_level=log_level,
        lifespan="off",
    )
