"""What a stage computes on one frame: pluggable executors (vLLM's "model runner", our words).

Owns `Executor` (the protocol: one input frame's tensors + meta -> output tensors + meta; caches
but no request state) and its implementations: `ForwardExecutor` (a unit range, batch pipeline),
`DecodeExecutor` (a unit range with per-sequence KV caches; the last stage picks the token),
`ShardExecutor` (width-split units of a robust plan returning partial sums) and their emulated
variants (sleep the profiled time, send real-size tensors). The module an executor
runs is built in one place, `StageWorker._module` in runtime/stage.py. torch is imported lazily
(emulated executors need none); never ray, never planners.

Decode frames: request_id = sequence id; meta {"pos": first position, "step": the driver's step
id, "sampling": [temperature, top_k, seed]}; tensors {"input_ids"} into the first stage,
{"hidden"} between stages, {"token"} out of the last. A stage whose cache does not continue the
step answers meta {"error": "cache_mismatch"} (the driver replays that sequence from position 0).

Shard frames: meta {"layer": index, "kind": "attn" | "ffn", "slots": [unit slots]}; tensors
{"hidden": (B, T, C) already normed, + the context arrays "attn_bias", "rope_cos", "rope_sin"
when the model has them}; the answer is {"partial": (B, T, C)}, the sum of those units' terms.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

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


def _step(meta: dict[str, Any]) -> tuple[int, tuple[float, int, int]]:
    """(position, sampling) of a decode frame, refusing malformed values."""
    position = int(meta["pos"])
    temperature, top_k, seed = meta.get("sampling", [0.0, 0, 0])
    if position < 0:
        raise ValueError(f"decode step at negative position {position}")
    return position, (float(temperature), int(top_k), int(seed))


@dataclass
class DecodeExecutor:
    """A `KvStage`: units [start, end) of a decoder with one KV cache per live sequence."""

    stage: Any  # models.kv_stage.KvStage
    batch: Any = None  # models.kv_batch.KvBatch over the same module, made on first use (#16)

    def reset(self) -> None:
        for sequence_id in self.stage.sequences():
            self.stage.drop(sequence_id)
        if self.batch is not None:
            for sequence_id in self.batch.sequences():
                self.batch.drop(sequence_id)

    def run(self, request_id: int, tensors: Arrays, meta: dict[str, Any]) -> ExecutorOutput:
        import torch

        from edgesplit.models.kv_stage import CacheMismatchError, Sampling, choose_token

        for done in meta.get("done", ()):  # finished or aborted sequences: free their caches now
            self.stage.drop(int(done))
            if self.batch is not None:
                self.batch.drop(int(done))
        if "seqs" in meta:
            return self._run_batch(tensors, meta)
        position, sampling = _step(meta)
        try:
            with torch.inference_mode():
                out = self.stage.step(request_id, _torch_inputs(tensors), position)
        except CacheMismatchError as e:
            return {}, {**meta, "error": "cache_mismatch", "detail": str(e)}
        if "logits" in out:
            num_new = int(next(iter(tensors.values())).shape[1])
            token = choose_token(
                out["logits"][0], Sampling(*sampling), request_id, position + num_new - 1
            )
            return {"token": np.array([token], dtype=np.int64)}, meta
        return {"hidden": out["hidden"].contiguous().numpy()}, meta

    # -- continuous batching (issue #16; models/kv_batch.py) -----------------------------------
    def _run_batch(self, tensors: Arrays, meta: dict[str, Any]) -> ExecutorOutput:
        """One forward pass over several sequences: meta {"seqs": [ids], "pos": [positions],
        "sampling": [[temperature, top_k, seed(, key)] per row]}; tensors {"input_ids"} (B, T)
        into the first stage, {"hidden"} (B, T, C) after it; T > 1 (prefill) takes one
        sequence. Out: {"hidden"} or {"token"} (B,), the token picked with `choose_token`
        keyed by the row's `key` (default: its sequence id). Rows whose step does not continue
        this stage's cache: the whole frame answers {"error": "cache_mismatch", "mismatched":
        [ids]}. No rows (`seqs` empty): only the frame's `done` is applied."""
        import torch

        from edgesplit.models.kv_batch import KvBatch
        from edgesplit.models.kv_stage import Sampling, choose_token

        ids = [int(s) for s in meta["seqs"]]
        if not ids:
            return {}, meta
        if self.batch is None:
            self.batch = KvBatch(self.stage.module, self.stage.num_units)
        positions = [int(p) for p in meta["pos"]]
        mismatched = self.batch.mismatched(ids, positions)
        if mismatched:
            return {}, {**meta, "error": "cache_mismatch", "mismatched": mismatched}
        with torch.inference_mode():
            out = self.batch.step(ids, _torch_inputs(tensors), positions)
        if "logits" not in out:
            return {"hidden": out["hidden"].contiguous().numpy()}, meta
        num_new = int(next(iter(tensors.values())).shape[1])
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
                    positions[row] + num_new - 1,
                )
                for row, (sequence_id, s) in enumerate(zip(ids, sampling, strict=True))
            ]
        return {"token": np.array(tokens, dtype=np.int64)}, meta


@dataclass
class EmulatedDecodeExecutor:
    """Sleeps the profiled decode (or prefill) time; zero hidden states of the real width."""

    decode_s: float
    prefill_s_per_token: float
    hidden_size: int
    vocab_size: int
    is_last: bool
    stopped: threading.Event
    _lengths: dict[int, int] = field(default_factory=dict)

    def reset(self) -> None:
        self._lengths.clear()

    def run(self, request_id: int, tensors: Arrays, meta: dict[str, Any]) -> ExecutorOutput:
        position, _ = _step(meta)
        num_new = int(next(iter(tensors.values())).shape[1]) if tensors else 1
        if position != 0 and self._lengths.get(request_id) != position:
            return {}, {**meta, "error": "cache_mismatch"}
        self._lengths[request_id] = position + num_new
        self.stopped.wait(self.decode_s if num_new == 1 else self.prefill_s_per_token * num_new)
        if self.is_last:
            token = (request_id * 7919 + position + num_new) % max(self.vocab_size, 1)
            return {"token": np.array([token], dtype=np.int64)}, meta
        return {"hidden": np.zeros((1, num_new, self.hidden_size), dtype=np.float32)}, meta


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
