"""HTTP plumbing of the server: OpenAI error objects and the guard in front of every route.

Owns `openai_error` (the `{"error": {message, type, param, code}}` body), `ApiError` (raised by
handlers, rendered as that body), `describe_request_errors` (a body's validation errors in the
client's terms: fields, not pydantic's union branches) and `Guard` (pure ASGI middleware:
bearer-token check on every route but the open ones, compared in constant time; the request
body read fully and bounded before any handler sees it, 413 past the bound). No torch, no
runtime.
"""

from __future__ import annotations

import difflib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from starlette.responses import JSONResponse

from edgesplit.core.schema import describe_value
from edgesplit.serving.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
)

__all__ = ["ApiError", "Guard", "describe_request_errors", "openai_error"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class ApiError(Exception):
    """An error answer: HTTP status plus OpenAI's error fields."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def openai_error(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> JSONResponse:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


_KNOWN_FIELDS = sorted(
    {
        name
        for model in (CompletionRequest, ChatCompletionRequest, EmbeddingRequest, ChatMessage)
        for name in model.model_fields
    }
)
# What a field that takes several shapes accepts, said once instead of one error per shape.
_FORMS = {
    "prompt": "a string or a list of token ids, one prompt per request",
    "input": "a string, a list of strings, a list of token ids or a list of such lists",
    "stop": "a string or a list of up to 4 strings",
    "content": 'a string or a list of text parts ({"type": "text", "text": ...})',
}


def describe_request_errors(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """(message, param) for a request body that failed validation: one line per field, union
    branches folded into what the field accepts, malformed JSON and non-objects said plainly."""
    fields: dict[str, list[Mapping[str, Any]]] = {}
    for error in errors:
        loc = [p for p in error.get("loc", ()) if p != "body"]
        if error.get("type") == "json_invalid":
            where = f" at character {loc[0]}" if loc else ""
            detail = (error.get("ctx") or {}).get("error", "")
            return f"the request body is not valid JSON{where}: {detail}".rstrip(": "), None
        # A union's branch appears in `loc` as a type tag ('list[constrained-int]'): cut there.
        cut = next((i for i, p in enumerate(loc) if isinstance(p, str) and "[" in p), len(loc))
        path = ".".join(str(p) for p in loc[:cut])
        fields.setdefault(path, []).append({**error, "branch": cut < len(loc)})
    lines = [_field_problem(path, found) for path, found in fields.items()]
    message = lines[0] + (
        f" (and {len(lines) - 1} more: {'; '.join(lines[1:])})" if lines[1:] else ""
    )
    return message, next(iter(fields)) or None


def _field_problem(path: str, errors: list[Mapping[str, Any]]) -> str:
    if not path:
        return "the request body must be a JSON object"
    first, key = errors[0], path.split(".")[-1]
    if len(errors) > 1 and all(e["branch"] for e in errors):
        accepted = _FORMS.get(key, "one of the accepted forms")
        lengths = [e for e in errors if e.get("type") == "too_long"]
        got = ""
        if lengths:
            count = (lengths[0].get("ctx") or {}).get("actual_length", "?")
            got = f" (got a list of {count}; send one request each)" if path == "prompt" else ""
        return f"{path} must be {accepted}{got}"
    if first.get("type") == "missing":
        return f"missing field '{path}'"
    if first.get("type") == "extra_forbidden":
        close = difflib.get_close_matches(key, _KNOWN_FIELDS, n=1)
        return f"unknown field '{path}'" + (f"; did you mean '{close[0]}'?" if close else "")
    return describe_value(path, first)


class Guard:
    """Bearer auth and a bounded, fully read body, before the app (see module docstring)."""

    def __init__(
        self, app: Asgi, *, token: str | None, max_body_bytes: int, open_paths: frozenset[str]
    ) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.expected is not None and scope.get("path") not in self.open_paths:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await _reply(scope, receive, send, 401, "missing or wrong bearer token")
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _reply(scope, receive, send, 400, "invalid Content-Length header")
                return
            if size > self.max_body_bytes:
                await _reply(scope, receive, send, 413, self._too_large(size))
                return
        body = bytearray()
        more = scope.get("method") in ("POST", "PUT", "PATCH")
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _reply(scope, receive, send, 413, self._too_large(len(body)))
                return
            more = bool(message.get("more_body", False))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # later calls wait for the disconnect, as usual

        await self.app(scope, replay, send)

    def _too_large(self, size: int) -> str:
        return f"request body of {size} bytes exceeds the limit of {self.max_body_bytes} bytes"


async def _reply(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    await openai_error(status, message)(scope, receive, send)


def sse(data: object) -> bytes:
    """One server-sent event carrying `data` as JSON (OpenAI's streaming format)."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
