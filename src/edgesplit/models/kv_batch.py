"""Continuous batching for decoder stages: one forward pass over many sequences' decode steps.

Owns `KvBatch`: units [start, end) of GPT-2/Llama (a `StageModule`, as `KvStage` builds it) with
the key/value caches of many sequences, where one `step` runs any set of sequences together —
each at its own position, each attending only to its own cached tokens — sequences join (a
prefill, alone) and leave (`drop`, memory freed at once) between steps. Built on the same units
as `KvStage` (models/kv_stage.py); torch only, never ray or runtime.

[Note: groups] Caches live in *groups*: one HF `DynamicCache` per group whose rows are its
sequences, left-padded to a common column count, plus a (rows, columns) 0/1 mask of which
columns hold a real token of that row. A step over exactly a group's sequences appends one
column in place (HF's own per-step cost, no extra copy). A step over another set re-packs: the
members' real columns are taken out of their old groups (which shrink) and stacked, left-padded,
into a new group. A pipeline that keeps the same micro-batches of sequences step after step —
as the decode driver does when it keeps one batch per stage in flight — pays the re-pack only
when a sequence joins or leaves.

Worked example (two sequences, cache lengths 3 and 1, one decode step):

    group rows [7, 9]; columns 0..2      mask [[1, 1, 1],      keys (2, H, 3, D)
                                               [0, 0, 1]]
    step([7, 9], tokens (2, 1), positions [3, 1])
        position_ids [[3], [1]]; attention_mask [[1, 1, 1, 1], [0, 0, 1, 1]] (2, 4)
        each row attends to its own tokens only; RoPE / GPT-2 position embeddings use the
        row's own position, so the result equals decoding each sequence alone (up to float
        summation order).

[Note: padded steps] A step may carry rows with different numbers of new tokens (several
prefills in one forward pass, a replay beside them): `lengths[i]` real tokens at the *end* of
row i's T columns, the columns before them padding. The padding columns enter the cache as
masked-out columns (holes) of that row, exactly like a group's left padding, and are dropped at
the next re-pack; each real token gets its row's own positions, so every row equals its
sequence stepped alone (up to float summation order). The last column is real in every row,
so the last stage's logits are each row's next-token logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from edgesplit.core.precision import StageDtype
from edgesplit.errors import ConfigError
from edgesplit.models.build import StageModule, build_stage, unit_names
from edgesplit.models.kv_stage import DECODER_FAMILIES, CacheMismatchError
from edgesplit.models.spec import ModelSpec

__all__ = ["KvBatch"]


@dataclass
class _Group:
    """Sequences sharing one padded cache ([Note: groups])."""

    rows: list[int]  # sequence ids, in row order
    cache: Any  # transformers.DynamicCache over this stage's layers: (R, H, P, D) each
    mask: torch.Tensor  # (R, P) int64: 1 where the column holds a real token of that row
    padded: bool = True  # some column is padding for some row (mask not all ones)


class KvBatch:
    """Units [start, end) of a decoder with batched per-sequence KV caches (module docstring).

    `step(sequence_ids, act, positions)`: `act` holds {"input_ids": (B, T)} on the first stage,
    {"hidden": (B, T, C)} after it, one row per sequence in `sequence_ids` order; `positions[i]`
    is how many tokens of sequence i this stage holds already (0 (re)starts the sequence).
    `lengths[i]` (default T) of row i's T new tokens are real, right-aligned ([Note: padded
    steps]): several prefills go in one step. Returns {"logits": (B, V)} for each row's last
    position on the last stage, else {"hidden": (B, T, C)} (positions are re-derived downstream
    from `positions` and `lengths`, as with `KvStage`).

    Example:
        >>> batch = KvBatch.build(spec, 0, 5)  # doctest: +SKIP
        >>> batch.step([1, 2], {"input_ids": prompts}, [0, 0], [len_a, len_b])  # two prefills
        >>> batch.step([1, 2], {"input_ids": next_tokens}, [len_a, len_b])  # one forward pass
        >>> batch.drop(1)  # finished: its keys/values are freed now
    """

    def __init__(self, module: StageModule, num_units: int) -> None:
        if module.family not in DECODER_FAMILIES:
            raise ConfigError(f"{module.family} is not a decoder; batching needs GPT-2 or Llama")
        self.module = module
        self.num_units = num_units
        self.layers = sorted(
            int(getattr(u, "layer_index"))  # noqa: B009 - units without it are filtered out
            for u in module.units
            if getattr(u, "causal", False) and hasattr(u, "layer_index")
        )
        self._groups: list[_Group] = []
        self._group_of: dict[int, _Group] = {}
        self._lengths: dict[int, int] = {}
        self.repacks = 0  # how many steps re-packed groups (for tests and benchmarks)

    @classmethod
    def build(cls, spec: ModelSpec, start: int, end: int, dtype: StageDtype = "float32") -> KvBatch:
        return cls(build_stage(spec, start, end, dtype), len(unit_names(spec)))

    @property
    def is_first(self) -> bool:
        return self.module.start == 0

    @property
    def is_last(self) -> bool:
        return self.module.end == self.num_units

    def sequences(self) -> list[int]:
        return sorted(self._lengths)

    def cached_length(self, sequence_id: int) -> int:
        return self._lengths.get(sequence_id, 0)

    def mismatched(self, sequence_ids: Sequence[int], positions: Sequence[int]) -> list[int]:
        """The sequences whose step does not continue this stage's cache (replay them)."""
        return [
            s
            for s, p in zip(sequence_ids, positions, strict=True)
            if p != 0 and self._lengths.get(s) != p
        ]

    def cache_bytes(self) -> int:
        """Bytes held by every group's keys and values (padding included)."""
        total = 0
        for group in self._groups:
            for index in self.layers:
                layer = group.cache.layers[index]
                for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                    if isinstance(tensor, torch.Tensor):
                        total += int(tensor.numel() * tensor.element_size())
        return total

    def drop(self, sequence_id: int) -> None:
        """Forget a sequence; its rows and columns are released now (unknown ids: no-op)."""
        self._lengths.pop(sequence_id, None)
        group = self._group_of.pop(sequence_id, None)
        if group is not None:
            self._shrink(group, {sequence_id})

    @torch.no_grad()
    def step(
        self,
        sequence_ids: Sequence[int],
        act: dict[str, torch.Tensor],
        positions: Sequence[int],
        lengths: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        key = "input_ids" if self.is_first else "hidden"
        if key not in act:
            raise ConfigError(
                f"stage [{self.module.start}, {self.module.end}) expects '{key}', got {sorted(act)}"
            )
        ids = [int(s) for s in sequence_ids]
        x = act[key]
        num_rows, num_new = int(x.shape[0]), int(x.shape[1])
        if len(ids) != num_rows or len(set(ids)) != num_rows or len(positions) != num_rows:
            raise ConfigError(
                f"a step of {num_rows} rows needs as many distinct sequence ids and positions; "
                f"got ids {ids[:8]} and {len(positions)} positions"
            )
        real = [num_new] * num_rows if lengths is None else [int(n) for n in lengths]
        if len(real) != num_rows or any(not 1 <= n <= num_new for n in real):
            raise ConfigError(
                f"a step of {num_rows} rows of {num_new} tokens needs a length in [1, {num_new}] "
                f"per row; got {list(real)[:8]}"
            )
        bad = self.mismatched(ids, positions)
        if bad:
            have = {s: self._lengths.get(s) for s in bad}
            raise CacheMismatchError(
                f"stage [{self.module.start}, {self.module.end}) holds {have} cached tokens of "
                f"sequences {bad}, but the step starts at "
                f"{[p for s, p in zip(ids, positions, strict=True) if s in bad]}; replay them"
            )
        for sequence_id, position in zip(ids, positions, strict=True):
            if position == 0:
                self.drop(sequence_id)  # a (re)start: any older cache of it is stale
                self._lengths[sequence_id] = 0
        group = self._group_for(ids)
        order = [group.rows.index(s) for s in ids]  # caller row i -> group row order[i]
        inverse = torch.empty(num_rows, dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(num_rows)
        rows_x = x.index_select(0, inverse)  # (R, T, ...) in group row order
        new = torch.tensor([real[i] for i in inverse.tolist()]).unsqueeze(1)  # (R, 1)
        starts = torch.tensor([self._lengths[s] for s in group.rows]).unsqueeze(1)  # (R, 1)
        columns = torch.arange(num_new).unsqueeze(0)  # (1, T)
        pad = num_new - new  # (R, 1) leading padding columns of each row ([Note: padded steps])
        position_ids = starts + (columns - pad).clamp(min=0)  # (R, T)
        fresh = (columns >= pad).long()  # (R, T) 1 where the column is a real token
        mask = torch.cat([group.mask, fresh], dim=1)
        padded = group.padded or bool((pad > 0).any())
        act = {key: rows_x, "position_ids": position_ids}
        if padded:  # rows of different lengths: hide each row's padding
            act["attention_mask"] = mask
        # else: every column is real for every row: no mask is the same mask, and lets HF's
        # attention take its unmasked (causal) path, as one sequence decoding alone does.
        out = self.module(act, group.cache)
        group.mask, group.padded = mask, padded
        for sequence_id, count in zip(group.rows, new.flatten().tolist(), strict=True):
            self._lengths[sequence_id] += int(count)
        back = torch.tensor(order)  # group row order -> caller order
        if "logits" in out:
            return {"logits": out["logits"][:, -1, :].index_select(0, back)}  # (B, V)
        return {"hidden": out["hidden"].index_select(0, back)}  # (B, T, C)

    # -- groups ([Note: groups]) --------------------------------------------------------------
    def _group_for(self, ids: list[int]) -> _Group:
        wanted = set(ids)
        current = {id(self._group_of[s]) for s in ids if s in self._group_of}
        if len(current) == 1:
            group = self._group_of.get(ids[0])
            if group is not None and set(group.rows) == wanted:
                return group
        self.repacks += 1
        # Take each member's real columns out of its old group (per layer: (H, L, D)).
        parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        by_group: dict[int, tuple[_Group, set[int]]] = {}
        for sequence_id in ids:
            old = self._group_of.get(sequence_id)
            if old is None:
                continue
            row = old.rows.index(sequence_id)
            real = old.mask[row].bool()
            parts[sequence_id] = [
                (
                    old.cache.layers[i].keys[row][:, real, :],
                    old.cache.layers[i].values[row][:, real, :],
                )
                for i in self.layers
                if _initialized(old.cache.layers[i])
            ]
            by_group.setdefault(id(old), (old, set()))[1].add(sequence_id)
        for old, leaving in by_group.values():
            self._shrink(old, leaving)
        group = self._stack(ids, parts)
        self._groups.append(group)
        for sequence_id in ids:
            self._group_of[sequence_id] = group
        return group

    def _stack(
        self, ids: list[int], parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]]
    ) -> _Group:
        """A new group of `ids`, each row left-padded to the longest (sequences not in `parts`
        have no cached token yet)."""
        lengths = [self._lengths[s] for s in ids]
        width = max(lengths, default=0)
        cache = self.module.new_cache()
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for row, length in enumerate(lengths):
            mask[row, width - length :] = 1
        if width > 0:
            sample = next(p for s in ids if (p := parts.get(s)))
            for slot, layer in enumerate(self.layers):
                k0, v0 = sample[slot]
                heads, dim = k0.shape[0], k0.shape[-1]
                keys = k0.new_zeros(len(ids), heads, width, dim)
                values = v0.new_zeros(len(ids), heads, width, v0.shape[-1])
                for row, sequence_id in enumerate(ids):
                    if sequence_id in parts and lengths[row]:
                        k, v = parts[sequence_id][slot]
                        keys[row, :, width - lengths[row] :] = k
                        values[row, :, width - lengths[row] :] = v
                cache.layers[layer].update(keys, values)
        return _Group(list(ids), cache, mask, len(set(lengths)) > 1)

    def _shrink(self, group: _Group, leaving: set[int]) -> None:
        """Remove rows from a group (freeing them), dropping columns no remaining row uses."""
        keep = [r for r, s in enumerate(group.rows) if s not in leaving]
        if not keep:
            self._groups = [g for g in self._groups if g is not group]
            return
        index = torch.tensor(keep)
        mask = group.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else mask.shape[1]
        for layer in self.layers:
            cached = group.cache.layers[layer]
            if _initialized(cached):
                cached.keys = cached.keys.index_select(0, index)[:, :, first:].contiguous()
                cached.values = cached.values.index_select(0, index)[:, :, first:].contiguous()
        group.mask = mask[:, first:].contiguous()
        group.rows = [group.rows[r] for r in keep]
        group.padded = not bool(group.mask.all())


def _initialized(layer: Any) -> bool:
    return isinstance(getattr(layer, "keys", None), torch.Tensor) and layer.keys.dim() == 4
