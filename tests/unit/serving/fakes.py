"""Fake engines and codecs for the front end's tests (threads, like the real engines)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgesplit.serving import (
    DecodeRequest,
    EmbeddingCodec,
    EngineHealth,
    EngineStats,
    ImageCodec,
    TextCodec,
    TokenSink,
)
from edgesplit.serving.engine import Arrays, BatchDone

VOCAB = 256
CONTEXT = 64


def byte_codec(chat: bool = True) -> TextCodec:
    def chat_template(messages: list[dict[str, str]]) -> list[int]:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return list(text.encode())

    return TextCodec(
        name="fake-lm",
        context_length=CONTEXT,
        vocab_size=VOCAB,
        encode=lambda text: list(text.encode()),
        decode=lambda ids: bytes(ids).decode("utf-8", errors="replace"),
        stop_token_ids=frozenset({0}),
        chat_template=chat_template if chat else None,
    )


def expected_tokens(prompt: Sequence[int], count: int) -> list[int]:
    """What `FakeDecodeEngine` produces greedily: 'a', 'b', ... cycling over 26 letters."""
    start = sum(prompt) % 26
    return [97 + (start + i) % 26 for i in range(count)]


@dataclass
class FakeDecodeEngine:
    """Decodes on a thread per request; `gate` (when set) holds every token until released."""

    step_s: float = 0.0
    fail_with: str = ""
    gate: threading.Event | None = None
    healthy: bool = True
    submitted: list[DecodeRequest] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    live: set[str] = field(default_factory=set)
    temperatures: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: dict[str, threading.Event] = field(default_factory=dict)

    def submit(self, request: DecodeRequest, sink: TokenSink) -> None:
        stop = threading.Event()
        with self._lock:
            self.submitted.append(request)
            self.temperatures.append(request.temperature)
            self.live.add(request.request_id)
            self._stop[request.request_id] = stop
        threading.Thread(target=self._run, args=(request, sink, stop), daemon=True).start()

    def _run(self, request: DecodeRequest, sink: TokenSink, stop: threading.Event) -> None:
        try:
            if self.fail_with:
                sink.finish("error", self.fail_with)
                return
            for token in expected_tokens(request.prompt_ids, request.max_new_tokens):
                if self.gate is not None:
                    while not self.gate.wait(0.01):
                        if stop.is_set():
                            break
                if stop.is_set() or (self.step_s and stop.wait(self.step_s)):
                    sink.finish("abort")
                    return
                sink.token(token)
            sink.finish("length")
        finally:
            with self._lock:
                self.live.discard(request.request_id)

    def abort(self, request_id: str) -> None:
        with self._lock:
            self.aborted.append(request_id)
            stop = self._stop.get(request_id)
        if stop is not None:
            stop.set()

    def health(self) -> EngineHealth:
        return EngineHealth(self.healthy, "" if self.healthy else "stage b is down", ("a", "b"))

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                running=len(self.live), waiting=0, step_batch_sizes=(len(self.live),)
            )


@dataclass
class FakeBatchEngine:
    """Applies `fn` to each micro-batch on a thread; records batch sizes."""

    fn: Callable[[Mapping[str, np.ndarray]], Arrays]
    max_batch_rows: int = 4
    fail: bool = False
    batches: list[int] = field(default_factory=list)

    @property
    def max_batch(self) -> int:
        return self.max_batch_rows

    @property
    def max_in_flight(self) -> int:
        return 2

    def submit(self, inputs: Mapping[str, np.ndarray], done: BatchDone) -> None:
        self.batches.append(int(next(iter(inputs.values())).shape[0]))

        def work() -> None:
            if self.fail:
                done(None, "stage b failed")
            else:
                done(self.fn(inputs), "")

        threading.Thread(target=work, daemon=True).start()

    def health(self) -> EngineHealth:
        return EngineHealth(True)


def token_states(inputs: Mapping[str, np.ndarray]) -> Arrays:
    """(B, T, 3) states: [id, id^2, 1] per token (padding included, as a real model does)."""
    ids = inputs["input_ids"].astype(np.float32)
    return {"hidden": np.stack([ids, ids**2, np.ones_like(ids)], axis=-1)}


def embedding_codec() -> EmbeddingCodec:
    def row(ids: Sequence[int]) -> Arrays:
        array = np.array([list(ids)], dtype=np.int64)
        return {"input_ids": array, "attention_mask": np.ones_like(array)}

    return EmbeddingCodec(
        name="fake-encoder",
        max_tokens=32,
        encode=lambda text: [1, *text.encode()[:40], 2],
        row=row,
        normalize=True,
    )


def image_codec() -> ImageCodec:
    def preprocess(data: bytes) -> Arrays:
        if not data.startswith(b"IMG"):
            raise ValueError("not an image")
        return {"pixel_values": np.frombuffer(data[3:7].ljust(4, b"\0"), np.uint8)[None, :]}

    return ImageCodec(name="fake-vit", labels=("l0", "l1", "l2", "l3"), preprocess=preprocess)


def pixel_logits(inputs: Mapping[str, np.ndarray]) -> Arrays:
    return {"logits": inputs["pixel_values"].astype(np.float32)}


@dataclass
class ServeThread:
    """`api.serving.serve` on a thread with `app` instead of a model: `ready` gets its URL,
    `servers` the uvicorn server (set `should_exit` on it, as Ctrl-C does)."""

    thread: threading.Thread
    ready: list[str]
    servers: list[Any]


def serve_in_thread(monkeypatch: Any, app: Any) -> ServeThread:
    """Start `serving.serve("fake-lm", port=0)` with `open_app` yielding `app` (monkeypatched)."""
    import uvicorn

    from edgesplit.api import serving

    servers: list[Any] = []

    class Recording(uvicorn.Server):
        def __init__(self, config: uvicorn.Config) -> None:
            super().__init__(config)
            servers.append(self)

    @contextlib.contextmanager
    def fake_app(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield app

    monkeypatch.setattr(serving, "open_app", fake_app)
    monkeypatch.setattr(uvicorn, "Server", Recording)
    ready: list[str] = []
    thread = threading.Thread(
        target=serving.serve, args=("fake-lm",), kwargs={"port": 0, "on_ready": ready.append}
    )
    thread.start()
    return ServeThread(thread, ready, servers)
