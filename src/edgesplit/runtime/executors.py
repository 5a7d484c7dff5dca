"""What a stage computes on one frame: pluggable executors (vLLM's "model runner", our words).

Owns `Executor` (the protocol: one input frame's tensors + meta -> output tensors + meta; caches
but no request state) and its implementations: `ForwardExecutor` (a unit range, batch pipeline),
`DecodeExecutor` (a unit range with per-sequence KV caches; the last stage picks the token),
`ShardExecutor` (width-split units of a robust plan returning partial sums) and their emulated
variants (sleep the profiled time, send real-size tensors). The module an executor
runs is built in one place, `StageWorker._module` in runtime/stage.py. torch is imported lazily
(emulated executors need none); never ray, never planners.

Decode frames (runtime/generation.py [Note: continuous batching]): meta {"seqs": [ids], "pos":
[first position], "lens": [real tokens, right-aligned; default all], "sampling": [[temperature,
top_k, seed, key]], "done": [ids to free], "step"}, one entry per row; tensors {"input_ids"} (B,
T) in, {"hidden"} (B, T, C) between stages, {"token"} (B,) out. Rows not continuing the stage's
cache: meta {"error": "cache_mismatch", "mismatched": [ids]} (the driver replays them).

Shard frames: meta {"layer": index, "kind": "attn" | "ffn", "slots": [unit slots]}; tensors
{"hidden": (B, T, C) already normed, + the context arrays "attn_bias", "rope_cos", "rope_sin"
when the model has them}; the answer is {"partial": (B, T, C)}, the sum of those units' terms.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edgesplit.core.profile import batch_ratio

__all__ = [
    "DecodeExecutor",
    "EmulatedDecodeExecutor",
    "EmulatedForwardExecutor",
    "EmulatedShardExecutor",
    "Executor",
    "ExecutorOutput",
    "ForwardExecutor",
    "ShardExecutor",
]

Arrays = dict[str, np.ndarray]
ExecutorOutput = tuple[Arrays, dict[str, Any]]


class Executor(Protocol):
    def run(self, request_id: int, tensors: Arrays, meta: dict[str, Any]) -> ExecutorOutput:
        """Compute one frame; raising errors only this request (the stage goes on)."""
        ...


def _torch_inputs(tensors: Arrays) -> dict[str, Any]:
    import torch

    # frombuffer arrays are read-only; torch wants writable memory.
    return {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in tensors.items()}


@dataclass
class ForwardExecutor:
    """Runs a `StageModule` (units [start, end)) on a micro-batch."""

    module: Any

    def run(self, request_id: int, tensors: Arrays, meta: dict[str, Any]) -> ExecutorOutput:
        import torch

        with torch.inference_mode():
            result = self.module(_torch_inputs(tensors))
            return {k: v.detach().contiguous().numpy() for k, v in result.items()}, meta


@dataclass
class EmulatedForwardExecutor:
    """Sleeps `compute_s` and returns `output_bytes` of zeros; checks the input size."""

    compute_s: float
    input_bytes: int
    output_bytes: int
    stopped: threading.Event
    _output: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._output = np.zeros(self.output_bytes, dtype=np.uint8)

    def run(self, request_id: int, tensors: Arrays, meta: dict[str, Any]) -> ExecutorOutput:
        received = sum(int(t.nbytes) for t in tensors.values())
        if self.input_bytes and received != self.input_bytes:
            raise ValueError(
                f"micro-batch {request_id} has {received} input bytes, the plan {self.input_bytes}"
            )
        self.stopped.wait(self.compute_s)
        return {"hidden": self._output}, meta


def _rows(tensors: Arrays, meta: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
    """(sequence ids, positions, real lengths) of a decode frame, refusing malformed values."""
    ids = [int(s) for s in meta["seqs"]]
    positions = [int(p) for p in meta["pos"]]
    width = int(next(iter(tensors.values())).shape[1]) if tensors else 0
    lengths = [int(n) for n in meta.get("lens") or [width] * len(ids)]
    if not len(ids) == len(positions) == len(lengths) or not all(
        p >= 0 and 1 <= n <= width for p, n in zip(positions, lengths, strict=True)
    ):
        raise ValueError(
            f"decode frame of {ids[:8]}: positions {positions[:8]}, lengths {lengths[:8]}"
        )
    return ids, positions, lengths


@dataclass
class DecodeExecutor:
    """A decoder's units with per-sequence KV caches, many sequences a pass (`KvBatch`)."""

    stage: Any  # models.kv_stage.KvStage: the module and unit count
    batch: Any = None  # models.kv_batch.KvBatch over the same module

    def reset(self) -> None:
        from edgesplit.models.kv_batch import KvBatch

        self.batch = KvBatch(self.stage.module, self.stage.num_units)

    def run(self, request_id: int, tensors: Arrays, meta: dict[str, Any]) -> ExecutorOutput:
        """One frame (module docstring); no rows: only its `done` is applied. Each row's token
        is keyed by the row's `key` (default: its sequence id) at its last position."""
        import torch

        from edgesplit.models.kv_stage import Sampling, choose_token

        if self.batch is None:
            self.reset()
        for done in meta.get("done", ()):  # finished or aborted sequences: free their caches now
            self.batch.drop(int(done))
        ids, positions, lengths = _rows(tensors, meta)
        if not ids:
            return {}, meta
        mismatched = self.batch.mismatched(ids, positions)
        if mismatched:
            return {}, {**meta, "error": "cache_mismatch", "mismatched": mismatched}
        with torch.inference_mode():
            out = self.batch.step(ids, _torch_inputs(tensors), positions, lengths)
        if "logits" not in out:
            return {"hidden": out["hidden"].contiguous().numpy()}, meta
        sampling = meta.get("sampling") or [[0.0, 0, 0]] * len(ids)
        logits = out["logits"]
        if all(float(s[0]) == 0 for s in sampling):  # greedy rows: one argmax for the batch
            tokens = logits.float().argmax(dim=-1).tolist()
        else:
            tokens = [
                choose_token(
                    logits[row],
                    Sampling(float(s[0]), int(s[1]), int(s[2])),
                    int(s[3]) if len(s) > 3 else sequence_id,
                    positions[row] + lengths[row] - 1,
                )
                for row, (sequence_id, s) in enumerate(zip(ids, sampling, strict=True))
            ]
        return {"token": np.array(tokens, dtype=np.int64)}, meta


@dataclass
class EmulatedDecodeExecutor:
    """Sleeps a frame's profiled time; zero hidden states of the real width, made-up tokens.

    B decode rows sleep decode_s × r(B), r linear between the (batch, time / one row's) points
    of `batch_scale` and (1, 1), past the last on its slope, as the generation planner's batch
    model (planners/generation.py [Note: the batch dimension]); no points: r(B) = B (each row as
    long as alone, the planner's model without batch data). Prefill: prefill_s_per_token a token.
    """

    decode_s: float
    prefill_s_per_token: float
    hidden_size: int
    vocab_size: int
    is_last: bool
    stopped: threading.Event
    batch_scale: tuple[tuple[int, float], ...] = ()
    _lengths: dict[int, int] = field(default_factory=dict)

    def scale(self, rows: int) -> float:
        if rows <= 1 or not self.batch_scale:
            return float(rows)
        return batch_ratio(self.batch_scale, rows)

    def run(self, request_id: int, tensors: Arrays, meta: dict[str, Any]) -> ExecutorOutput:
        for done in meta.get("done", ()):
            self._lengths.pop(int(done), None)
        ids, positions, lengths = _rows(tensors, meta)
        if not ids:
            return {}, meta
        rows = list(zip(ids, positions, lengths, strict=True))
        mismatched = [s for s, p, _ in rows if p != 0 and self._lengths.get(s) != p]
        if mismatched:
            return {}, {**meta, "error": "cache_mismatch", "mismatched": mismatched}
        self._lengths.update((s, p + n) for s, p, n in rows)
        prefill = sum(n for n in lengths if n > 1)
        decode = self.decode_s * self.scale(sum(1 for n in lengths if n == 1))
        self.stopped.wait(decode + self.prefill_s_per_token * prefill)
        if self.is_last:
            vocab = max(self.vocab_size, 1)
            tokens = [(s * 7919 + p + n) % vocab for s, p, n in rows]
            return {"token": np.array(tokens, dtype=np.int64)}, meta
        width = int(next(iter(tensors.values())).shape[1])
        return {"hidden": np.zeros((len(ids), width, self.hidden_size), dtype=np.float32)}, meta


def _shard_step(meta: dict[str, Any]) -> tuple[int, str, list[int]]:
    kind = str(meta["kind"])
    if kind not in ("attn", "ffn"):
        raise ValueError(f"shard step of unknown kind {kind!r}")
    return int(meta["layer"]), kind, [int(s) for s in meta["slots"]]


@dataclass
class ShardExecutor:
    """A `WidthShard`: this device's width units; answers partial sums."""

    shard: Any  # models.width.WidthShard

    def run(self, request_id: int, tensors: Arrays, meta: dict[str, Any]) -> ExecutorOutput:
        import torch

        from edgesplit.models.width import WidthContext

        layer, kind, slots = _shard_step(meta)
        inputs = _torch_inputs(tensors)
        ctx = WidthContext(inputs.get("attn_bias"), inputs.get("rope_cos"), inputs.get("rope_sin"))
        with torch.inference_mode():
            out = self.shard.partial(layer, kind, inputs["hidden"], ctx, slots)
        return {"partial": out.contiguous().numpy()}, meta


@dataclass
class EmulatedShardExecutor:
    """Sleeps `unit_s` per unit asked for; a zero partial sum of the hidden state's shape."""

    unit_s: float
    stopped: threading.Event

    def run(self, request_id: int, tensors: Arrays, meta: dict[str, Any]) -> ExecutorOutput:
        _, _, slots = _shard_step(meta)
        hidden = tensors["hidden"]
        self.stopped.wait(self.unit_s * len(slots))
        return {"partial": np.zeros(hidden.shape, dtype=hidden.dtype)}, meta
