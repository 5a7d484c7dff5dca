"""One device's generation stage: a process holding units [start, end) and their per-sequence KV
caches, receiving steps from upstream and forwarding hidden states (or the chosen token) on.

A plain class (`GenerationWorker`) plus `main()` for `python -m edgesplit.runtime.generation_worker
--driver HOST:PORT --device NAME`: the worker dials the driver's control listener, says hello, and
obeys `configure` / `connect` / `stats` / `shutdown` messages. Data frames flow over the same TCP
transport as the batch runtime (explicit header + raw bytes, no pickle). Threads: control reader,
one reader per upstream stream, compute, writer (link shaping at the sender). torch only for real
compute; never ray, never planners.

Data frame (type "data"): request_id = sequence id, epoch = driver epoch, meta = {"pos": first
position, "step": driver step counter, "sampling": [temperature, top_k, seed]}; tensors
{"input_ids"} into the first stage, {"hidden"} between stages, {"token"} out of the last stage.
A stage whose cache does not continue the step answers meta {"error": "cache_mismatch"} (passed
through to the driver, which replays the sequence from position 0).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgesplit.errors import TransportError
from edgesplit.runtime.emulation import LinkShaper
from edgesplit.runtime.transport import Connection, Frame, TcpListener, connect, listen

__all__ = ["GenerationStageConfig", "GenerationWorker", "main"]

logger = logging.getLogger(__name__)
_POLL_S = 0.05


@dataclass(frozen=True)
class GenerationStageConfig:
    """What one stage runs in one epoch (sent by the driver as the meta of a `configure`)."""

    index: int
    device: str
    start: int
    end: int
    num_units: int
    epoch: int
    compute: str  # "real" | "emulated"
    model_spec: dict[str, Any] | None = None
    hidden_size: int = 0  # emulated: width of the hidden state sent on
    vocab_size: int = 0  # emulated: range of the (meaningless) tokens the last stage picks
    decode_s: float = 0.0  # emulated: seconds for one decode step of this stage
    prefill_s_per_token: float = 0.0  # emulated: seconds per prompt token in a prefill
    bandwidth_bytes_per_s: float | None = None  # link out of this stage; None = unshaped
    latency_s: float = 0.0
    num_threads: int = 1

    @property
    def is_last(self) -> bool:
        return self.end == self.num_units


@dataclass
class _Step:
    frame: Frame
    received_s: float
    out: Frame | None = None
    due_s: float = 0.0


@dataclass
class _Epoch:
    config: GenerationStageConfig
    stage: Any  # KvStage (real) or None (emulated)
    listener: TcpListener
    stopped: threading.Event = field(default_factory=threading.Event)
    inbox: queue.Queue[_Step] = field(default_factory=queue.Queue)
    wire: queue.Queue[_Step] = field(default_factory=queue.Queue)
    downstream: Connection | None = None
    upstreams: list[Connection] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    steps: int = 0
    compute_s: float = 0.0
    error: str | None = None
    emulated_lengths: dict[int, int] = field(default_factory=dict)


class GenerationWorker:
    """A device's generation process (see module docstring)."""

    def __init__(self, device: str, host: str = "127.0.0.1") -> None:
        self.device = device
        self.host = host
        self._epoch: _Epoch | None = None
        self._stages: dict[tuple[str, int, int], Any] = {}
        self._stop = threading.Event()

    # -- control -----------------------------------------------------------------------------
    def serve(self, control: Connection) -> None:
        """Obey the driver until it says shutdown or the control stream closes."""
        control.send(Frame("hello", meta={"device": self.device, "pid": os.getpid()}))
        while not self._stop.is_set():
            frame = control.recv()
            if frame is None or frame.type == "bye":
                break
            op = frame.meta.get("op")
            try:
                reply = self._handle(op, frame.meta)
            except Exception as e:
                logger.exception("[stage @ %s] %s failed", self.device, op)
                reply = {"error": f"{type(e).__name__}: {e}"}
            control.send(Frame("hello", meta={"op": op, **reply}))
        self._retire()

    def _handle(self, op: Any, meta: dict[str, Any]) -> dict[str, Any]:
        if op == "configure":
            config = GenerationStageConfig(**meta["config"])
            return {"address": list(self.configure(config))}
        if op == "connect":
            self.connect_downstream((str(meta["address"][0]), int(meta["address"][1])))
            return {}
        if op == "stats":
            return self.stats()
        if op == "shutdown":
            self._stop.set()
            return {}
        raise ValueError(f"unknown control op {op!r}")

    def configure(self, config: GenerationStageConfig) -> tuple[str, int]:
        """Start an epoch holding units [start, end) with empty caches; returns the data address."""
        self._retire()
        stage = self._build(config) if config.compute == "real" else None
        epoch = _Epoch(config=config, stage=stage, listener=listen(self.host))
        self._epoch = epoch
        for target in (self._accept, self._compute):
            self._spawn(epoch, target)
        return epoch.listener.address

    def _build(self, config: GenerationStageConfig) -> Any:
        import torch

        from edgesplit.models import ModelSpec
        from edgesplit.models.kv_stage import KvStage

        torch.set_num_threads(config.num_threads)
        assert config.model_spec is not None
        key = (str(config.model_spec), config.start, config.end)
        if key not in self._stages:
            self._stages.clear()  # keep only this stage's weights
            spec = ModelSpec.model_validate(config.model_spec)
            self._stages[key] = KvStage.build(spec, config.start, config.end)
        stage = self._stages[key]
        for sequence_id in stage.sequences():  # a new epoch starts from empty caches
            stage.drop(sequence_id)
        return stage

    def connect_downstream(self, address: tuple[str, int]) -> None:
        epoch = self._epoch
        assert epoch is not None, "configure first"
        epoch.downstream = connect(address, timeout_s=10.0)
        epoch.downstream.send(Frame("hello", epoch=epoch.config.epoch, meta={"from": self.device}))
        self._spawn(epoch, self._write)

    def stats(self) -> dict[str, Any]:
        epoch = self._epoch
        if epoch is None:
            return {"steps": 0}
        cache_bytes = epoch.stage.cache_bytes() if epoch.stage is not None else 0
        return {
            "steps": epoch.steps,
            "compute_s": epoch.compute_s,
            "cache_bytes": cache_bytes,
            "error": epoch.error,
            "pid": os.getpid(),
        }

    def _spawn(self, epoch: _Epoch, target: Any) -> None:
        def run() -> None:
            try:
                target(epoch)
            except Exception as e:
                if not epoch.stopped.is_set():
                    logger.exception("[stage %d @ %s] failed", epoch.config.index, self.device)
                    epoch.error = f"{type(e).__name__}: {e}"

        thread = threading.Thread(target=run, daemon=True, name=f"gen-{target.__name__}")
        thread.start()
        epoch.threads.append(thread)

    def _retire(self) -> None:
        epoch, self._epoch = self._epoch, None
        if epoch is None:
            return
        epoch.stopped.set()
        epoch.listener.close()
        for conn in [*epoch.upstreams, *([epoch.downstream] if epoch.downstream else [])]:
            conn.close()
        for thread in epoch.threads:
            thread.join(2.0)

    # -- data path ---------------------------------------------------------------------------
    def _accept(self, epoch: _Epoch) -> None:
        while not epoch.stopped.is_set():
            conn = epoch.listener.accept(timeout_s=0.2)
            if conn is not None:
                epoch.upstreams.append(conn)
                self._spawn(epoch, lambda e, c=conn: self._read(e, c))

    def _read(self, epoch: _Epoch, conn: Connection) -> None:
        while not epoch.stopped.is_set():
            frame = conn.recv()
            if frame is None or frame.type == "bye":
                return
            if frame.type == "data" and frame.epoch == epoch.config.epoch:
                epoch.inbox.put(_Step(frame, time.time()))

    def _compute(self, epoch: _Epoch) -> None:
        while not epoch.stopped.is_set():
            try:
                step = epoch.inbox.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            begin = time.perf_counter()
            step.out = self._run(epoch, step.frame)
            epoch.compute_s += time.perf_counter() - begin
            epoch.steps += 1
            epoch.wire.put(step)

    def _run(self, epoch: _Epoch, frame: Frame) -> Frame:
        config = epoch.config
        meta = dict(frame.meta)
        if "error" in meta:  # an upstream stage could not run this step: pass it on
            return Frame("data", frame.request_id, config.end, config.epoch, {}, meta)
        if config.compute == "emulated":
            tensors = self._emulate(epoch, frame, meta)
        else:
            tensors = self._real(epoch, frame, meta)
        return Frame("data", frame.request_id, config.end, config.epoch, tensors, meta)

    def _real(self, epoch: _Epoch, frame: Frame, meta: dict[str, Any]) -> dict[str, np.ndarray]:
        import torch

        from edgesplit.models.kv_stage import CacheMismatchError, Sampling, choose_token

        act = {
            k: torch.from_numpy(v if v.flags.writeable else v.copy())
            for k, v in frame.tensors.items()
        }
        position = int(meta["pos"])
        try:
            with torch.inference_mode():
                out = epoch.stage.step(frame.request_id, act, position)
        except CacheMismatchError as e:
            meta["error"] = "cache_mismatch"
            meta["detail"] = str(e)
            return {}
        if "logits" in out:
            temperature, top_k, seed = meta.get("sampling", [0.0, 0, 0])
            num_new = int(next(iter(frame.tensors.values())).shape[1])
            token = choose_token(
                out["logits"][0],
                Sampling(float(temperature), int(top_k), int(seed)),
                frame.request_id,
                position + num_new - 1,
            )
            return {"token": np.array([token], dtype=np.int64)}
        return {"hidden": out["hidden"].contiguous().numpy()}

    def _emulate(self, epoch: _Epoch, frame: Frame, meta: dict[str, Any]) -> dict[str, np.ndarray]:
        """Sleep the profiled time; send a zero hidden state of the real size."""
        config = epoch.config
        position = int(meta["pos"])
        num_new = int(next(iter(frame.tensors.values())).shape[1]) if frame.tensors else 1
        known = epoch.emulated_lengths.get(frame.request_id)
        if position != 0 and known != position:
            meta["error"] = "cache_mismatch"
            return {}
        epoch.emulated_lengths[frame.request_id] = position + num_new
        sleep_s = config.decode_s if num_new == 1 else config.prefill_s_per_token * num_new
        epoch.stopped.wait(sleep_s)
        if config.is_last:
            token = (frame.request_id * 7919 + position + num_new) % max(config.vocab_size, 1)
            return {"token": np.array([token], dtype=np.int64)}
        return {"hidden": np.zeros((1, num_new, config.hidden_size), dtype=np.float32)}

    def _write(self, epoch: _Epoch) -> None:
        config = epoch.config
        shaper = None
        if config.bandwidth_bytes_per_s is not None:
            shaper = LinkShaper(config.bandwidth_bytes_per_s, config.latency_s)
        assert epoch.downstream is not None
        while not epoch.stopped.is_set():
            try:
                step = epoch.wire.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            assert step.out is not None
            if shaper is not None:
                delay_s = shaper.due_s(step.out.num_bytes + 64, time.time()) - time.time()
                if delay_s > 0 and epoch.stopped.wait(delay_s):
                    return
            try:
                epoch.downstream.send(step.out)
            except TransportError:
                return  # the downstream died: the driver notices and re-plans


def _preload() -> None:
    """Import torch/transformers and run one tiny GPT-2 and Llama step: a standby's first real
    stage build then costs its weights, not seconds of lazy imports and kernel warm-up."""
    import torch

    torch.set_num_threads(1)
    from edgesplit.models import model_spec_from_name
    from edgesplit.models.kv_stage import KvStage

    for name in ("gpt2-tiny", "llama-tiny"):
        stage = KvStage.build(model_spec_from_name(name), 0, 3)
        with torch.inference_mode():
            stage.step(0, {"input_ids": torch.tensor([[1, 2]])}, 0)
            stage.step(0, {"input_ids": torch.tensor([[3]])}, 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="edgesplit generation stage worker")
    parser.add_argument("--driver", required=True, help="HOST:PORT of the driver's control port")
    parser.add_argument("--device", required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind data streams on")
    parser.add_argument(
        "--preload", action="store_true", help="import torch/transformers while idle (standby)"
    )
    args = parser.parse_args(argv)
    if args.preload:
        # A warm standby should cost a stage build on failover, not seconds of imports.
        threading.Thread(target=_preload, daemon=True, name="preload").start()
    logging.basicConfig(level=os.environ.get("EDGESPLIT_LOG", "WARNING"))
    host, _, port = args.driver.rpartition(":")
    try:
        control = connect((host, int(port)), timeout_s=30.0)
    except TransportError as e:
        raise SystemExit(f"generation worker {args.device}: {e}") from e
    worker = GenerationWorker(args.device, args.host)
    with contextlib.suppress(KeyboardInterrupt):
        worker.serve(control)


if __name__ == "__main__":
    main()
