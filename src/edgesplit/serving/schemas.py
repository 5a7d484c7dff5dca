"""OpenAI-compatible request bodies, validated strictly (the subset we honour, nothing else).

Owns the request models of /v1/completions, /v1/chat/completions and /v1/embeddings. Strict:
no coercion (`"max_tokens": "4"` and `prompt: [true]` are errors), fields OpenAI does not have
are errors, `NaN`/`Infinity` are errors, strings must be valid Unicode (no lone surrogates),
every size is bounded. OpenAI fields we do not implement are accepted at their neutral value
(what common clients send: penalties 0, `logit_bias: {}`, `tools: []`, text-only content parts)
and refused with "not supported" at any other, so no answer silently ignores what was asked.
Responses are plain dicts built in app.py. No torch, no runtime.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "EmbeddingRequest",
    "ResponseFormat",
    "StreamOptions",
    "TextPart",
]

MAX_TEXT_CHARS = 1 << 20  # a body is bounded anyway; this bounds one string
MAX_LIST_ITEMS = 8192
MAX_TOKEN_ID = (1 << 31) - 1


def _unicode(text: str) -> str:
    """Refuse strings a tokenizer cannot encode (lone UTF-16 surrogates from JSON escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"invalid Unicode at character {e.start} (a lone surrogate?)") from e
    return text


Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_unicode)]
ShortText = Annotated[str, Field(max_length=256), AfterValidator(_unicode)]
TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
TokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_LIST_ITEMS)]
Stop = ShortText | Annotated[list[ShortText], Field(min_length=1, max_length=4)]


def _only(neutral: Any, why: str) -> Callable[[Any], Any]:
    """A validator accepting only the neutral value of a field we do not implement."""

    def check(value: Any) -> Any:
        if value is not None and value != neutral:
            raise ValueError(f"not supported ({why}); only {json.dumps(neutral)} is accepted")
        return value

    return check


Penalty = Annotated[float, AfterValidator(_only(0.0, "no penalties here"))]
LogitBias = Annotated[dict[str, float], AfterValidator(_only({}, "no logit bias"))]
NoTools = Annotated[
    list[dict[str, Any]], AfterValidator(_only([], "this server has no tool calling"))
]
NoLogprobs = Annotated[int, AfterValidator(_only(0, "no log-probabilities"))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: Annotated[str, AfterValidator(_only("text", "no JSON mode or schemas"))]


class _Sampling(_Strict):
    """Fields shared by completions and chat: how many tokens and how to pick them."""

    model: ShortText | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1 << 20)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0, le=1 << 20)] = 0  # extension (vLLM, llama.cpp): 0 = all
    n: Annotated[int, Field(ge=1, le=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    seed: Annotated[int, Field(ge=0, le=(1 << 63) - 1)] | None = None
    user: ShortText | None = None
    # OpenAI fields accepted at their neutral value only (see the module docstring).
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_Sampling):
    """POST /v1/completions. `prompt`: text, or token ids (one prompt per request)."""

    prompt: Text | TokenIds | Annotated[list[Text], Field(min_length=1, max_length=1)]
    echo: Annotated[bool, AfterValidator(_only(False, "the prompt is not echoed"))] = False
    logprobs: NoLogprobs | None = None
    best_of: Annotated[int, AfterValidator(_only(1, "one candidate per request"))] | None = None
    suffix: Annotated[str, AfterValidator(_only("", "no insertion"))] | None = None


class TextPart(_Strict):
    """One part of a message's content; only text (no images or audio here)."""

    type: Literal["text"]
    text: Text


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Text | Annotated[list[TextPart], Field(min_length=1, max_length=256)]
    name: ShortText | None = None

    def text(self) -> str:
        """The content as one string (text parts joined by newlines, as vLLM does)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions: the messages go through the tokenizer's chat template."""

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=1 << 20)] | None = None
    logprobs: Annotated[bool, AfterValidator(_only(False, "no log-probabilities"))] | None = None
    top_logprobs: NoLogprobs | None = None
    response_format: ResponseFormat | None = None
    tools: NoTools | None = None
    tool_choice: Literal["none", "auto"] | None = None  # with no tools, both mean none
    parallel_tool_calls: bool | None = None


class EmbeddingRequest(_Strict):
    """POST /v1/embeddings: text, texts, token ids or lists of token ids."""

    input: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=2048)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=2048)]
    )
    model: ShortText | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=1 << 16)] | None = None
    user: ShortText | None = None
