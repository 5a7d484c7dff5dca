"""KV-cached decoder stages: units [start, end) of GPT-2/Llama keeping one cache per sequence.

Owns `KvStage` (prefill and decode steps of many interleaved sequences through one stage, each
with its own HF `DynamicCache` over this stage's layers only), `choose_token` (greedy or seeded
sampling, a pure function of (logits, seed, sequence, position) so that a replayed or split run
picks the same token as an unsplit one) and `generate_unsplit` (the single-process reference).
Built on `models.build.build_stage`, whose decoder units accept a cache. torch only; never ray.

[Note: positions] Every step carries `start_position`: the number of tokens of that sequence
already in this stage's cache. A step starting at 0 (re)creates the cache (prefill or replay); any
other step must start exactly at the cached length, else `CacheMismatchError` (a replacement
stage that missed the prefix) tells the driver to replay the sequence's tokens from 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from edgesplit.core.precision import StageDtype
from edgesplit.errors import ConfigError, EdgesplitError
from edgesplit.models.build import StageModule, build_model, build_stage, unit_names
from edgesplit.models.spec import ModelSpec

__all__ = [
    "CacheMismatchError",
    "KvStage",
    "Sampling",
    "choose_token",
    "generate_unsplit",
    "kv_bytes_per_token",
]

DECODER_FAMILIES = ("gpt2", "llama")


class CacheMismatchError(EdgesplitError):
    """A decode step does not continue this stage's cache for that sequence (replay needed)."""


@dataclass(frozen=True)
class Sampling:
    """Greedy when `temperature == 0`; otherwise softmax(logits / T) over the top-k, seeded."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = whole vocabulary
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")


def _step_seed(seed: int, sequence_id: int, position: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{sequence_id}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def choose_token(logits: torch.Tensor, sampling: Sampling, sequence_id: int, position: int) -> int:
    """The token after `position` given its logits (V,): argmax, or a seeded sample.

    The sampling generator is seeded by (seed, sequence_id, position), so the same step of the
    same sequence picks the same token wherever and however often it is computed.
    """
    logits = logits.float().reshape(-1)
    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    scaled = logits / sampling.temperature
    if 0 < sampling.top_k < scaled.numel():
        threshold = torch.topk(scaled, sampling.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < threshold, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    generator = torch.Generator().manual_seed(_step_seed(sampling.seed, sequence_id, position))
    return int(torch.multinomial(probs, 1, generator=generator))


def kv_bytes_per_token(spec: ModelSpec, bytes_per_value: int = 4) -> int:
    """Key + value bytes one token adds to the cache of ONE layer (per sequence)."""
    from edgesplit.models.build import _config

    config = _config(spec)
    if spec.family == "gpt2":
        return 2 * int(config.n_embd) * bytes_per_value
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return 2 * kv_heads * head_dim * bytes_per_value


class KvStage:
    """Units [start, end) of a decoder and one key/value cache per live sequence.

    `step(sequence_id, act, start_position)` runs the stage on `act` ({"input_ids"} for the first
    stage, {"hidden", "position_ids"} after) for positions [start_position, start_position + T)
    and returns what crosses the next cut; the last stage returns {"logits": (1, V)} for the last
    position only. Sequences are independent (batch size 1 each); interleaving them is the
    caller's business.
    """

    def __init__(self, module: StageModule, num_units: int) -> None:
        if module.family not in DECODER_FAMILIES:
            raise ConfigError(f"{module.family} is not a decoder; generation needs GPT-2 or Llama")
        self.module = module
        self.num_units = num_units
        self._caches: dict[int, Any] = {}
        self._lengths: dict[int, int] = {}

    @classmethod
    def build(cls, spec: ModelSpec, start: int, end: int, dtype: StageDtype = "float32") -> KvStage:
        """Units [start, end) with weights in `dtype` (a bfloat16 stage caches bfloat16 K/V)."""
        return cls(build_stage(spec, start, end, dtype), len(unit_names(spec)))

    @property
    def start(self) -> int:
        return self.module.start

    @property
    def end(self) -> int:
        return self.module.end

    @property
    def is_first(self) -> bool:
        return self.module.start == 0

    @property
    def is_last(self) -> bool:
        return self.module.end == self.num_units

    def cached_length(self, sequence_id: int) -> int:
        return self._lengths.get(sequence_id, 0)

    def sequences(self) -> list[int]:
        return sorted(self._caches)

    def drop(self, sequence_id: int) -> None:
        self._caches.pop(sequence_id, None)
        self._lengths.pop(sequence_id, None)

    def cache_bytes(self, sequence_id: int | None = None) -> int:
        """Bytes held by the caches (one sequence, or all)."""
        ids = self.sequences() if sequence_id is None else [sequence_id]
        return sum(
            int(t.numel() * t.element_size())
            for i in ids
            if i in self._caches
            for t in _cache_tensors(self._caches[i])
        )

    @torch.no_grad()
    def step(
        self, sequence_id: int, act: dict[str, torch.Tensor], start_position: int
    ) -> dict[str, torch.Tensor]:
        """Run positions [start_position, start_position + T) of a sequence ([Note: positions])."""
        if start_position == 0:
            self._caches[sequence_id] = self.module.new_cache()
            self._lengths[sequence_id] = 0
        elif self._lengths.get(sequence_id) != start_position:
            have = self._lengths.get(sequence_id)
            raise CacheMismatchError(
                f"stage [{self.start}, {self.end}) holds {have if have is not None else 'no'} "
                f"cached tokens of sequence {sequence_id}, but the step starts at position "
                f"{start_position}; replay the sequence from position 0"
            )
        key = "input_ids" if self.is_first else "hidden"
        if key not in act:
            raise ConfigError(
                f"stage [{self.start}, {self.end}) expects '{key}', got {sorted(act)}"
            )
        num_new = int(act[key].shape[1])
        positions = torch.arange(start_position, start_position + num_new).unsqueeze(0)  # (1, T)
        inputs = {key: act[key], "position_ids": positions}
        out = self.module(inputs, self._caches[sequence_id])
        self._lengths[sequence_id] = start_position + num_new
        if "logits" in out:
            return {"logits": out["logits"][:, -1, :]}  # (1, V): only the next token matters
        return {"hidden": out["hidden"]}  # (1, T, C); positions are re-derived downstream


def _cache_tensors(cache: Any) -> Iterator[torch.Tensor]:
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                yield tensor


@torch.no_grad()
def generate_unsplit(
    model: Any,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    sequence_id: int = 0,
    stop_token_id: int | None = None,
) -> list[int]:
    """Single-process reference: prefill then one token at a time with the model's own cache."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    tokens = list(prompt_ids)
    new: list[int] = []
    fed = 0
    while len(new) < max_new_tokens:
        ids = torch.tensor([tokens[fed:]], dtype=torch.long)
        positions = torch.arange(fed, len(tokens)).unsqueeze(0)
        logits = model(
            input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True
        ).logits[0, -1]
        fed = len(tokens)
        token = choose_token(logits, sampling, sequence_id, fed - 1)
        tokens.append(token)
        new.append(token)
        if stop_token_id is not None and token == stop_token_id:
            break
    return new


def build_reference(spec: ModelSpec, dtype: StageDtype = "float32") -> Any:
    """The unsplit model for `generate_unsplit` (same attention implementation and dtype)."""
    return build_model(spec, dtype)
