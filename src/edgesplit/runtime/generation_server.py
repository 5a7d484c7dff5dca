"""An OpenAI-style HTTP endpoint (`POST /v1/completions`, streaming) over a generation pipeline.

Owns `CompletionRequest` (validated: malformed bodies get 422, impossible values 400),
`GenerationService` (one started `GenerationPipeline` shared by requests, which take turns) and
`make_app` (FastAPI). Streaming follows OpenAI's server-sent events: `data: {chunk}` per token
and `data: [DONE]`. Tokenizer functions are injected (the façade builds them); never planners.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgesplit.runtime.generation import GenerationPipeline, GenerationRequest

__all__ = ["CompletionRequest", "GenerationService", "make_app"]


class CompletionRequest(BaseModel):
    """The subset of OpenAI's completion request we honour; unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | list[int]
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=10.0)
    top_k: int = Field(default=0, ge=0)
    seed: int = 0
    stream: bool = False
    stop_at_eos: bool = True


@dataclass
class GenerationService:
    """A started pipeline plus the model's tokenizer; one generation call at a time."""

    pipeline: GenerationPipeline
    model_name: str
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    eos_token_id: int | None = None
    vocab_size: int = 0
    max_tokens_limit: int = 512
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def request_for(self, body: CompletionRequest) -> GenerationRequest:
        ids = self.encode(body.prompt) if isinstance(body.prompt, str) else list(body.prompt)
        if not ids:
            raise ValueError("prompt is empty")
        if self.vocab_size and any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        if body.max_tokens > self.max_tokens_limit:
            raise ValueError(f"max_tokens {body.max_tokens} exceeds {self.max_tokens_limit}")
        return GenerationRequest(
            prompt_ids=ids,
            max_new_tokens=body.max_tokens,
            temperature=body.temperature,
            top_k=body.top_k,
            seed=body.seed,
            stop_token_id=self.eos_token_id if body.stop_at_eos else None,
        )

    def run(self, request: GenerationRequest, on_token: Callable[[int, int], None]) -> Any:
        with self._lock:
            return self.pipeline.generate([request], on_token=on_token)


def _chunk(
    completion_id: str, model: str, text: str, finish: str | None, ids: list[int] | None = None
) -> dict[str, Any]:
    choice: dict[str, Any] = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
    if ids is not None:
        choice["token_ids"] = ids
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


def make_app(service: GenerationService) -> Any:
    """The FastAPI app: GET /health, GET /v1/models, POST /v1/completions."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import StreamingResponse

    app = FastAPI(title="edgesplit generation", version="1")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "stages": [list(s) for s in service.pipeline.stages]}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": service.model_name, "object": "model"}]}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> Any:
        if body.model is not None and body.model != service.model_name:
            raise HTTPException(
                404,
                f"model '{body.model}' is not served here; "
                f"this endpoint serves '{service.model_name}'",
            )
        try:
            request = service.request_for(body)
        except ValueError as e:
            raise HTTPException(400, str(e)) from e
        completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[int | None] = asyncio.Queue()

        def on_token(_: int, token: int) -> None:
            loop.call_soon_threadsafe(tokens.put_nowait, token)

        def work() -> Any:
            try:
                return service.run(request, on_token)
            finally:
                loop.call_soon_threadsafe(tokens.put_nowait, None)

        future = loop.run_in_executor(None, work)

        def finish_reason(ids: list[int]) -> Literal["stop", "length"]:
            stopped = request.stop_token_id is not None and ids and ids[-1] == request.stop_token_id
            return "stop" if stopped else "length"

        if not body.stream:
            report = await future
            ids = report.sequences[0].new_ids
            data = _chunk(completion_id, service.model_name, service.decode(ids), None, ids)
            data["choices"][0]["finish_reason"] = finish_reason(ids)
            data["usage"] = {
                "prompt_tokens": len(request.prompt_ids),
                "completion_tokens": len(ids),
                "total_tokens": len(request.prompt_ids) + len(ids),
            }
            return data

        async def events() -> AsyncIterator[bytes]:
            ids: list[int] = []
            sent = ""
            while True:
                token = await tokens.get()
                if token is None:
                    break
                ids.append(token)
                text = service.decode(ids)
                delta, sent = text[len(sent) :], text
                chunk = _chunk(completion_id, service.model_name, delta, None, [token])
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            await future
            final = _chunk(completion_id, service.model_name, "", finish_reason(ids))
            yield f"data: {json.dumps(final)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
