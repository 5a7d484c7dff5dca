"""One decode request on the event loop: admission, the token stream, text deltas and stops.

Owns `TextCodec` (the tokenizer side, injected by api: encode, decode, chat template, context),
`Generation` (one request's tokens arriving from a `DecodeEngine` thread into an asyncio queue,
turned into text deltas; holds back a possible stop-string prefix and incomplete UTF-8; aborts
the engine's sequence when the consumer goes away) and `safe_temperature`. No torch, no runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from edgesplit.serving.engine import DecodeEngine, DecodeRequest, FinishReason

__all__ = ["ChatMessageDict", "Delta", "Generation", "TextCodec", "safe_temperature"]

ChatMessageDict = dict[str, str]
# Below this a temperature scales float32 logits past their range (1e-300 -> inf/NaN); the
# distribution is then a point mass on the argmax anyway, so greedy is the exact answer.
_MIN_TEMPERATURE = 1e-4


def safe_temperature(temperature: float) -> float:
    return 0.0 if temperature < _MIN_TEMPERATURE else temperature


@dataclass(frozen=True)
class TextCodec:
    """A decoder's tokenizer side (built by api from the model's tokenizer)."""

    name: str
    context_length: int
    vocab_size: int
    encode: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    stop_token_ids: frozenset[int]
    chat_template: Callable[[list[ChatMessageDict]], list[int]] | None = None


@dataclass(frozen=True)
class Delta:
    """New text (and the tokens that produced it) or the end: `finish` is set exactly once."""

    text: str
    token_ids: tuple[int, ...]
    finish: FinishReason | None = None
    detail: str = ""


class _Sink:
    """The engine-side half: hands every call to the event loop ([Note: engine threads])."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[_Item]) -> None:
        self.loop = loop
        self.queue = queue

    def _put(self, item: _Item) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: nobody listens any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def token(self, token_id: int) -> None:
        self._put((token_id, None, ""))

    def finish(self, reason: FinishReason, detail: str = "") -> None:
        self._put((None, reason, detail))


_Item = tuple[int | None, FinishReason | None, str]


class Generation:
    """Tokens of one request as text deltas (see module docstring).

    Args:
        engine: where the sequence decodes.
        request: the sequence (its `request_id` identifies it to `abort`).
        codec: detokenizes.
        stop_strings: text that ends the completion (not included in it).
        on_token: told of every token (metrics).
    """

    def __init__(
        self,
        engine: DecodeEngine,
        request: DecodeRequest,
        codec: TextCodec,
        stop_strings: Sequence[str] = (),
        on_token: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.request = request
        self.codec = codec
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.on_token = on_token
        self.token_ids: list[int] = []
        self.text = ""  # emitted so far
        self.finish: FinishReason | None = None
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.started_s = time.monotonic()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._finished_engine = False

    def start(self) -> None:
        self.engine.submit(self.request, _Sink(asyncio.get_running_loop(), self._queue))

    def abort(self) -> None:
        if not self._finished_engine:
            self._finished_engine = True
            self.engine.abort(self.request.request_id)

    async def deltas(self) -> AsyncIterator[Delta]:
        """Text deltas until the end; leaving early (a disconnect) aborts the sequence."""
        pending: list[int] = []
        try:
            while True:
                token, reason, detail = await self._queue.get()
                if token is not None:
                    now = time.monotonic()
                    self.first_token_s = self.first_token_s or now
                    self.last_token_s = now
                    self.token_ids.append(token)
                    pending.append(token)
                    if self.on_token is not None:
                        self.on_token()
                    text, stopped = self._visible(final=False)
                    if stopped:
                        self.abort()
                        self.finish = "stop"
                        yield self._delta(text, pending)
                        yield Delta("", (), "stop")
                        return
                    if text:
                        yield self._delta(text, pending)
                        pending = []
                    continue
                self._finished_engine = True
                self.finish = reason or "error"
                text, _ = self._visible(final=True)
                if text or pending:
                    yield self._delta(text, pending)
                yield Delta("", (), self.finish, detail)
                return
        finally:
            self.abort()  # no-op once the engine finished

    def _delta(self, text: str, tokens: list[int]) -> Delta:
        self.text += text
        return Delta(text, tuple(tokens))

    def _visible(self, final: bool) -> tuple[str, bool]:
        """(new text that may be shown now, whether a stop string ended it)."""
        full = self.codec.decode(self.token_ids)
        for stop in self.stop_strings:
            index = full.find(stop)
            if index >= 0:
                return full[len(self.text) : max(index, len(self.text))], True
        if not final:
            # An incomplete UTF-8 sequence decodes to U+FFFD until its last byte arrives.
            full = full.rstrip("\ufffd")
            hold = max((_prefix_overlap(full, s) for s in self.stop_strings), default=0)
            full = full[: len(full) - hold]
        return full[len(self.text) :] if len(full) > len(self.text) else "", False

    @property
    def time_per_token_s(self) -> float | None:
        if self.first_token_s is None or self.last_token_s is None or len(self.token_ids) < 2:
            return None
        return (self.last_token_s - self.first_token_s) / (len(self.token_ids) - 1)


def _prefix_overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that begins `stop` (it may yet become a stop)."""
    for length in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:length]):
            return length
    return 0
