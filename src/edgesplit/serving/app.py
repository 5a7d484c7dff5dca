"""The FastAPI app of `edgesplit serve`: OpenAI-compatible routes over injected engines.

Owns `ServerConfig`, `EmbeddingCodec`, `ImageCodec` and `make_app`. Routes: /v1/completions and
/v1/chat/completions (streaming or not, `usage`, `stream_options.include_usage`) over a
`DecodeEngine`; /v1/embeddings (mean pooling over the attention mask, as sentence-transformers
does) and POST /v1/classify (an uploaded PNG/JPEG -> top labels) over `BatchEngine`s behind a
`MicroBatcher`; /v1/models, /health (503 while a stage is broken), /metrics (Prometheus).
Tokenizers and image decoding are injected and run on a bounded thread pool, never on the event
loop. No torch, no runtime, no models.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgesplit.serving.batcher import BatchFailedError, MicroBatcher, QueueFullError
from edgesplit.serving.engine import Arrays, BatchEngine, DecodeEngine, DecodeRequest, EngineHealth
from edgesplit.serving.http import ApiError, Guard, describe_request_errors, openai_error, sse
from edgesplit.serving.metrics import ServingMetrics
from edgesplit.serving.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from edgesplit.serving.text import ChatMessageDict, Generation, TextCodec, safe_temperature

__all__ = ["EmbeddingCodec", "ImageCodec", "ServerConfig", "ServingApp", "TextCodec", "make_app"]

T = TypeVar("T")
Json = dict[str, Any]  # a JSON response body


@dataclass(frozen=True)
class ServerConfig:
    """Front-end knobs (the engines have their own)."""

    token: str | None = None  # bearer token for every route but /health; None = open
    max_body_bytes: int = 8 << 20
    queue_size: int = 64  # decode requests (and encoder rows) accepted and unfinished
    max_batch_wait_s: float = 0.01  # how long an encoder row waits for company
    default_max_tokens: int = 256  # chat completions without max_tokens (completions: 16)
    tokenizer_threads: int = 2
    disconnect_poll_s: float = 0.1
    # Other ids a request may name for the served model (`serve --model DIR`: the path as given).
    model_aliases: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EmbeddingCodec:
    """A text encoder's side: one text -> one input row; outputs -> the pooled vector."""

    name: str
    max_tokens: int
    encode: Callable[[str], list[int]]  # with the model's special tokens
    row: Callable[[Sequence[int]], Arrays]  # ids -> {"input_ids", "attention_mask", ...} (1, T)
    output_key: str = "hidden"  # (1, T, C) token states out of the last stage
    normalize: bool = True


@dataclass(frozen=True)
class ImageCodec:
    """An image classifier's side: file bytes -> one input row, and the label names."""

    name: str
    labels: tuple[str, ...]
    preprocess: Callable[[bytes], Arrays]  # raises ValueError for what is not a usable image
    output_key: str = "logits"


class ServingApp(Guard):
    """The ASGI app: FastAPI behind the `Guard`; `fastapi` for its OpenAPI schema (fuzzing),
    `server` for tests and the CLI."""

    def __init__(self, fastapi: FastAPI, server: _Server, config: ServerConfig) -> None:
        super().__init__(
            fastapi,
            token=config.token,
            max_body_bytes=config.max_body_bytes,
            open_paths=frozenset({"/health"}),
        )
        self.fastapi = fastapi
        self.server = server


def make_app(
    config: ServerConfig,
    *,
    text: tuple[TextCodec, DecodeEngine] | None = None,
    embeddings: tuple[EmbeddingCodec, BatchEngine] | None = None,
    classify: tuple[ImageCodec, BatchEngine] | None = None,
    metrics: ServingMetrics | None = None,
) -> ServingApp:
    """The app serving whichever of text, embeddings and classification is given."""
    server = _Server(config, text, embeddings, classify, metrics or ServingMetrics())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.start()
        try:
            yield
        finally:
            await server.close()

    app = FastAPI(title="edgesplit serve", version="1", lifespan=lifespan)
    _routes(app, server)
    return ServingApp(app, server, config)


class _Server:
    """Everything the routes share: engines, batchers, the tokenizer pool, counters."""

    def __init__(
        self,
        config: ServerConfig,
        text: tuple[TextCodec, DecodeEngine] | None,
        embeddings: tuple[EmbeddingCodec, BatchEngine] | None,
        classify: tuple[ImageCodec, BatchEngine] | None,
        metrics: ServingMetrics,
    ) -> None:
        self.config = config
        self.text = text
        self.embeddings = embeddings
        self.classify = classify
        self.metrics = metrics
        self.active_text = 0
        self.pool: ThreadPoolExecutor | None = None
        self.embed_batcher: MicroBatcher | None = None
        self.image_batcher: MicroBatcher | None = None
        self.created_s = int(time.time())

    def start(self) -> None:
        self.pool = ThreadPoolExecutor(self.config.tokenizer_threads, "tokenize")
        for engine, pad, attr in (
            (self.embeddings[1] if self.embeddings else None, True, "embed_batcher"),
            (self.classify[1] if self.classify else None, False, "image_batcher"),
        ):
            if engine is None:
                continue
            batcher = MicroBatcher(
                engine,
                max_wait_s=self.config.max_batch_wait_s,
                max_pending=self.config.queue_size,
                pad_tokens=pad,
                on_batch=self.metrics.batch_size.observe,
            )
            batcher.start()
            setattr(self, attr, batcher)

    async def close(self) -> None:
        for batcher in (self.embed_batcher, self.image_batcher):
            if batcher is not None:
                await batcher.close()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run tokenization / image decoding on the bounded pool, not on the event loop."""
        assert self.pool is not None
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def healths(self) -> list[tuple[str, EngineHealth]]:
        found = []
        if self.text is not None:
            found.append((self.text[0].name, self.text[1].health()))
        if self.embeddings is not None:
            found.append((self.embeddings[0].name, self.embeddings[1].health()))
        if self.classify is not None:
            found.append((self.classify[0].name, self.classify[1].health()))
        return found

    def model_names(self) -> list[str]:
        names = [self.text[0].name] if self.text is not None else []
        names += [self.embeddings[0].name] if self.embeddings is not None else []
        return names + ([self.classify[0].name] if self.classify is not None else [])


def _routes(app: FastAPI, server: _Server) -> None:
    metrics = server.metrics

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return openai_error(e.status, e.message, param=e.param, code=e.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        message, param = describe_request_errors(e.errors())
        return openai_error(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return openai_error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, e: Exception) -> JSONResponse:
        return openai_error(500, f"internal error: {type(e).__name__}")

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        # The route's template, never the raw path: label values stay a fixed, small set.
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.requests.labels(str(route), str(response.status_code)).inc()
        return response

    @app.get("/health")
    def health() -> JSONResponse:
        healths = server.healths()
        ok = all(h.ok for _, h in healths)
        metrics.healthy.set(1 if ok else 0)
        body = {
            "status": "ok" if ok else "unavailable",
            "models": {
                name: {"ok": h.ok, "detail": h.detail, "stages": list(h.stages)}
                for name, h in healths
            },
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        if server.text is not None:
            stats = server.text[1].stats()
            metrics.running.set(stats.running)
            for size in stats.step_batch_sizes:
                metrics.step_batch_size.observe(size)
            queued = stats.waiting
        else:
            queued = 0
        for batcher in (server.embed_batcher, server.image_batcher):
            queued += batcher.queued if batcher is not None else 0
        metrics.queue_depth.set(queued)
        metrics.healthy.set(1 if all(h.ok for _, h in server.healths()) else 0)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    def models() -> Json:
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": server.created_s,
                    "owned_by": "edgesplit",
                }
                for name in server.model_names()
            ],
        }

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Json | Response:
        codec, _ = _need(server.text, "text completions", body.model, server.config.model_aliases)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = str(prompt[0])
        if isinstance(prompt, str):
            ids = await server.off_loop(codec.encode, prompt)
        else:
            ids = [int(i) for i in prompt]
        return await _complete(server, body, ids, request, chat=False)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> Json | Response:
        codec, _ = _need(server.text, "chat completions", body.model, server.config.model_aliases)
        if codec.chat_template is None:
            raise ApiError(400, f"model '{codec.name}' has no chat template; use /v1/completions")
        messages: list[ChatMessageDict] = [
            {"role": m.role, "content": m.text()} for m in body.messages
        ]
        ids = await server.off_loop(codec.chat_template, messages)
        return await _complete(server, body, ids, request, chat=True)

    @app.post("/v1/embeddings", response_model=None)
    async def embeddings(body: EmbeddingRequest, request: Request) -> Json:
        codec, _ = _need(server.embeddings, "embeddings", body.model, server.config.model_aliases)
        batcher = server.embed_batcher
        assert batcher is not None
        raw = body.input
        items: list[str | list[int]] = []
        if isinstance(raw, str):
            items.append(raw)
        else:
            for element in raw:
                if isinstance(element, int):  # one list of token ids
                    items = [[int(i) for i in raw if isinstance(i, int)]]
                    break
                items.append(element if isinstance(element, str) else [int(i) for i in element])
        rows: list[list[int]] = []
        for item in items:
            ids = await server.off_loop(codec.encode, item) if isinstance(item, str) else item
            if not ids:
                raise ApiError(400, "an input is empty", param="input")
            if len(ids) > codec.max_tokens:
                raise ApiError(
                    400,
                    f"an input has {len(ids)} tokens; this model accepts at most "
                    f"{codec.max_tokens}",
                    param="input",
                    code="context_length_exceeded",
                )
            rows.append(list(ids))
        outputs = await _guarded(
            request,
            asyncio.gather(*(batcher.run(codec.row(ids)) for ids in rows)),
            server.config.disconnect_poll_s,
        )
        data = []
        for index, (ids, out) in enumerate(zip(rows, outputs, strict=True)):
            vector = _mean_pool(out[codec.output_key][0, : len(ids)], codec.normalize)
            if body.dimensions is not None:
                vector = vector[: body.dimensions]
            embedding: list[float] | str = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode()
                if body.encoding_format == "base64"
                else [float(v) for v in vector]
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        used = sum(len(r) for r in rows)
        return {
            "object": "list",
            "data": data,
            "model": codec.name,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }

    @app.post("/v1/classify", response_model=None)
    async def classify(
        request: Request,
        file: Annotated[UploadFile, File(description="a PNG or JPEG image")],
        top_k: Annotated[int, Query(ge=1, le=100)] = 5,
    ) -> Json:
        codec, _ = _need(server.classify, "image classification", None, frozenset())
        batcher = server.image_batcher
        assert batcher is not None
        data = await file.read()
        if not data:
            raise ApiError(400, "the uploaded file is empty", param="file")
        try:
            row = await server.off_loop(codec.preprocess, data)
        except ValueError as e:
            raise ApiError(400, f"not a usable image: {e}", param="file") from e
        out = await _guarded(request, batcher.run(row), server.config.disconnect_poll_s)
        logits = np.asarray(out[codec.output_key][0], dtype=np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")[: min(top_k, len(probs))]
        labels = codec.labels
        return {
            "object": "classification",
            "model": codec.name,
            "labels": [
                {
                    "index": int(i),
                    "label": labels[i] if i < len(labels) else str(int(i)),
                    "score": float(probs[i]),
                }
                for i in order
            ],
        }


def _need(
    pair: tuple[T, Any] | None, what: str, model: str | None, aliases: frozenset[str]
) -> tuple[T, Any]:
    if pair is None:
        raise ApiError(404, f"this server does not serve {what}", code="model_not_found")
    name = getattr(pair[0], "name", "")
    if model is not None and model != name and model not in aliases:
        raise ApiError(
            404,
            f"model '{model[:64]}' is not served here; {what} use '{name}'",
            param="model",
            code="model_not_found",
        )
    return pair


def _mean_pool(states: np.ndarray, normalize: bool) -> np.ndarray:
    """Mean of a row's token states (T, C) over its real tokens; L2-normalized if asked."""
    vector = states.astype(np.float64).mean(axis=0)
    if normalize:
        vector /= max(float(np.linalg.norm(vector)), 1e-12)
    return np.asarray(vector, dtype=np.float32)


async def _guarded(request: Request, work: Awaitable[T], poll_s: float) -> T:
    """Await `work`, cancelling it when the client disconnects; engine errors -> 429/503."""
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ApiError(499, "client disconnected")
    except QueueFullError as e:
        raise ApiError(429, str(e), code="rate_limit_exceeded") from e
    except BatchFailedError as e:
        raise ApiError(503, f"the pipeline could not answer: {e}") from e
    finally:
        if not task.done():
            task.cancel()


async def _complete(
    server: _Server,
    body: CompletionRequest | ChatCompletionRequest,
    prompt_ids: list[int],
    request: Request,
    *,
    chat: bool,
) -> Json | Response:
    assert server.text is not None
    codec, engine = server.text
    if body.top_p != 1.0:
        raise ApiError(400, "top_p other than 1 is not supported; use top_k", param="top_p")
    if not prompt_ids:
        raise ApiError(400, "the prompt is empty", param="prompt")
    if any(not 0 <= i < codec.vocab_size for i in prompt_ids):
        raise ApiError(400, f"prompt token ids must be in [0, {codec.vocab_size})", param="prompt")
    room = codec.context_length - len(prompt_ids)
    asked = body.max_completion_tokens if isinstance(body, ChatCompletionRequest) else None
    asked = asked or body.max_tokens
    max_tokens = asked or (min(server.config.default_max_tokens, room) if chat else 16)
    if max_tokens > room or room < 1:
        raise ApiError(
            400,
            f"this model's maximum context length is {codec.context_length} tokens; you asked "
            f"for {len(prompt_ids) + max_tokens} ({len(prompt_ids)} in the prompt, {max_tokens} "
            "for the completion); shorten the prompt or max_tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    if server.active_text >= server.config.queue_size:
        raise ApiError(
            429,
            f"{server.active_text} requests are running or queued (the limit is "
            f"{server.config.queue_size}); retry later",
            code="rate_limit_exceeded",
        )
    prefix = "chatcmpl" if chat else "cmpl"
    request_id = f"{prefix}-{uuid.uuid4().hex}"
    seed = body.seed if body.seed is not None else uuid.uuid4().int & ((1 << 63) - 1)
    decode_request = DecodeRequest(
        request_id=request_id,
        prompt_ids=tuple(prompt_ids),
        max_new_tokens=max_tokens,
        temperature=safe_temperature(body.temperature),
        top_k=body.top_k,
        seed=seed,
        stop_token_ids=codec.stop_token_ids,
    )
    generation = Generation(
        engine, decode_request, codec, body.stop_strings(), server.metrics.token
    )
    server.active_text += 1
    try:
        generation.start()
    except Exception:
        server.active_text -= 1
        raise
    released = False

    def release() -> None:  # exactly once, however the request ends
        nonlocal released
        if not released:
            released = True
            server.active_text -= 1
            generation.abort()  # frees the sequence now when it has not finished
            _observe(server, generation)

    shape = _Shape(request_id, codec.name, chat, int(time.time()))  # this answer's creation
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # A client may leave before the first byte, when the stream body never starts: a
        # watcher frees the sequence then too.
        watcher = asyncio.get_running_loop().create_task(
            _watch(request, release, server.config.disconnect_poll_s)
        )
        return StreamingResponse(
            _stream(generation, shape, include_usage, release, watcher),
            media_type="text/event-stream",
        )
    try:
        parts = await _guarded(request, _collect(generation), server.config.disconnect_poll_s)
    finally:
        release()
    text, finish, detail = parts
    if finish == "error":
        raise ApiError(503, f"the pipeline failed this request: {detail}")
    return shape.whole(text, _finish(finish), _usage(generation))


async def _collect(generation: Generation) -> tuple[str, str, str]:
    finish, detail = "length", ""
    async for delta in generation.deltas():
        if delta.finish is not None:
            finish, detail = delta.finish, delta.detail
    return generation.text, finish, detail


async def _watch(request: Request, release: Callable[[], None], poll_s: float) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(poll_s)
    release()


async def _stream(
    generation: Generation,
    shape: _Shape,
    include_usage: bool,
    release: Callable[[], None],
    watcher: asyncio.Task[None],
) -> AsyncIterator[bytes]:
    try:
        if shape.chat:
            yield sse(shape.chunk({"role": "assistant", "content": ""}, None))
        async for delta in generation.deltas():
            if delta.finish is None:
                yield sse(shape.chunk(_content(shape, delta.text), None))
                continue
            if delta.finish == "error":
                yield sse(
                    {
                        "error": {
                            "message": f"the pipeline failed this request: {delta.detail}",
                            "type": "service_unavailable_error",
                            "param": None,
                            "code": None,
                        }
                    }
                )
            yield sse(shape.chunk({} if shape.chat else "", _finish(delta.finish)))
        if include_usage:
            yield sse({**shape.head(), "choices": [], "usage": _usage(generation)})
        yield b"data: [DONE]\n\n"
    finally:
        watcher.cancel()
        release()  # a disconnect cancels this generator: free the sequence now


def _observe(server: _Server, generation: Generation) -> None:
    if generation.first_token_s is not None:
        server.metrics.ttft.observe(generation.first_token_s - generation.started_s)
    per_token = generation.time_per_token_s
    if per_token is not None:
        server.metrics.time_per_token.observe(per_token)


def _content(shape: _Shape, text: str) -> dict[str, str] | str:
    return {"content": text} if shape.chat else text


def _finish(reason: str) -> Literal["stop", "length"]:
    return "length" if reason == "length" else "stop"


def _usage(generation: Generation) -> dict[str, int]:
    prompt = len(generation.request.prompt_ids)
    completion = len(generation.token_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


@dataclass(frozen=True)
class _Shape:
    """OpenAI's response shapes for one request (completion or chat, whole or chunked)."""

    request_id: str
    model: str
    chat: bool
    created_s: int

    def head(self) -> Json:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {
            "id": self.request_id,
            "object": kind,
            "created": self.created_s,
            "model": self.model,
        }

    def chunk(self, content: dict[str, str] | str, finish: str | None) -> Json:
        choice: Json = {"index": 0, "finish_reason": finish, "logprobs": None}
        choice["delta" if self.chat else "text"] = content
        return {**self.head(), "choices": [choice]}

    def whole(self, text: str, finish: str, usage: dict[str, int]) -> Json:
        if self.chat:
            choice: Json = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            kind = "text_completion"
        return {
            "id": self.request_id,
            "object": kind,
            "created": self.created_s,
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }
