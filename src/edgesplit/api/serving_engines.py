"""Engine adapters and codecs of the serving capability (see api/serving.py).

Owns `PipelineDecodeEngine` and `PipelineBatchEngine` (the `serving.engine` protocols over the
runtime's generation and batch pipelines; [Note: engine adapters]), the tokenizer / image
codecs the front end is given, and `encoder_parts` (spec, plan, cluster, profile of an encoder
to serve). Wiring only; imported by api/serving.py.

[Note: engine adapters] `PipelineDecodeEngine` drives `GenerationPipeline.generate`, which takes
a fixed list of requests and returns when all are done, in *chunked rounds*: every live sequence
decodes up to `chunk_tokens` (16) more tokens per call, then the next call re-prefills each one
(prompt + tokens so far; the call starts fresh caches) and goes on. New requests join, and
aborted ones leave, between chunks; greedy output equals one uninterrupted call (the tokens are
a function of the context only); a seeded sample is drawn per (seed, round index, position), so
it is reproducible only for the same arrival pattern.
`PipelineBatchEngine` runs one long `run_plan` whose `requests` is a generator fed by a queue; it
yields None ("nothing now") after `idle_poll_s` without a request, so the run idles and a
recovery goes on between two yields; errored micro-batches come back through `on_error` and the
health view through `on_health` (a stage being replaced or lost is not ok).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from edgesplit.core.cluster import Cluster, DeviceSpec
from edgesplit.core.cost import CostModel
from edgesplit.core.plan import Plan, PlannerInfo, StagePlacement
from edgesplit.core.profile import ModelProfile
from edgesplit.errors import ConfigError, DeviceUnavailableError
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

if TYPE_CHECKING:
    from edgesplit.models.spec import ModelSpec
    from edgesplit.runtime.config import ScheduledFault
    from edgesplit.runtime.generation import GenerationPipeline, GenerationRequest
    from edgesplit.runtime.report import FailureRecord, RunHealth

__all__ = [
    "ModelKind",
    "PipelineBatchEngine",
    "PipelineDecodeEngine",
    "embedding_codec",
    "encoder_parts",
    "image_codec",
    "keepalive_row",
    "model_kind",
    "profile_seq_len",
    "text_codec",
    "uses_head",
]

logger = logging.getLogger(__name__)
ModelKind = Literal["text", "embeddings", "classify"]
_MAX_IMAGE_PIXELS = 40_000_000  # decompression bombs are refused before decoding


# -- decoders ----------------------------------------------------------------------------------
@dataclass
class _Live:
    request: DecodeRequest
    sink: TokenSink
    aborted: bool = False
    finished: bool = False
    generated: list[int] = field(default_factory=list)


class PipelineDecodeEngine:
    """A `DecodeEngine` over a started `GenerationPipeline` ([Note: engine adapters])."""

    def __init__(
        self,
        pipeline: GenerationPipeline,
        max_concurrent: int,
        faults: Sequence[ScheduledFault] = (),
        gather_s: float = 0.02,
        chunk_tokens: int = 16,
    ) -> None:
        self.pipeline = pipeline
        self.max_concurrent = max_concurrent
        self.gather_s = gather_s
        self.chunk_tokens = chunk_tokens
        self._t0: float | None = None
        self._faults = list(faults)
        self._waiting: deque[_Live] = deque()
        self._by_id: dict[str, _Live] = {}
        self._running: list[_Live] = []
        self._batch_sizes: list[int] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._broken = ""
        self.failures: list[FailureRecord] = []  # stage failures survived (from round reports)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="decode-engine")
        self._thread.start()

    def submit(self, request: DecodeRequest, sink: TokenSink) -> None:
        with self._lock:
            if self._broken:
                sink.finish("error", self._broken)
                return
            live = _Live(request, sink)
            self._by_id[request.request_id] = live
            self._waiting.append(live)
        self._wake.set()

    def abort(self, request_id: str) -> None:
        with self._lock:
            live = self._by_id.pop(request_id, None)
            if live is None or live.finished:
                return
            live.aborted = live.finished = True
            with contextlib.suppress(ValueError):
                self._waiting.remove(live)
        live.sink.finish("abort")

    def health(self) -> EngineHealth:
        stages = tuple(f"{d}[{s},{e})" for d, s, e in self.pipeline.stages)
        return EngineHealth(not self._broken, self._broken, stages)

    def stats(self) -> EngineStats:
        with self._lock:
            sizes, self._batch_sizes = tuple(self._batch_sizes), []
            running = sum(1 for r in self._running if not r.aborted)
            return EngineStats(running=running, waiting=len(self._waiting), step_batch_sizes=sizes)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        running: list[_Live] = []
        while not self._stop.is_set():
            if not running:
                if not self._wake.wait(0.5):
                    continue
                # Requests sent together (a burst of clients) should share one round: a short
                # wait costs `gather_s` of time to first token and saves a round for the others.
                self._stop.wait(self.gather_s)
            self._wake.clear()
            with self._lock:
                running = [live for live in running if not live.finished]
                while self._waiting and len(running) < self.max_concurrent:
                    running.append(self._waiting.popleft())
                self._running = running
                if running:
                    self._batch_sizes.append(len(running))
            if not running:
                continue
            try:
                self._round(running)
            except Exception as e:  # a bad request must not end the engine's thread
                logger.exception("decode round failed")
                for live in running:
                    self._finish(live, "error", f"{type(e).__name__}: {e}")

    def _round(self, batch: list[_Live]) -> None:
        """Every live sequence decodes up to `chunk_tokens` more tokens (its prompt and the
        tokens so far are prefilled again: a new round starts fresh caches)."""
        from edgesplit.runtime.generation import GenerationRequest

        requests: list[GenerationRequest] = []
        for live in batch:
            r = live.request
            requests.append(
                GenerationRequest(
                    prompt_ids=[*r.prompt_ids, *live.generated],
                    max_new_tokens=min(self.chunk_tokens, r.max_new_tokens - len(live.generated)),
                    temperature=r.temperature,
                    top_k=r.top_k,
                    seed=r.seed,
                    stop_token_id=min(r.stop_token_ids) if r.stop_token_ids else None,
                )
            )

        def on_token(index: int, token: int) -> None:
            live = batch[index]
            if not live.aborted:
                live.generated.append(token)
                live.sink.token(token)

        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        # Faults are scheduled from the first round; each round gets those still ahead.
        elapsed = now - self._t0
        faults = [replace(f, at_s=f.at_s - elapsed) for f in self._faults if f.at_s >= elapsed]
        try:
            report = self.pipeline.generate(requests, on_token=on_token, faults=faults)
        except DeviceUnavailableError as e:  # no stage can replace a failed one: stop serving
            self._broken = f"{type(e).__name__}: {e}"
            logger.error("generation pipeline failed: %s", self._broken)
            with self._lock:
                stranded = [*batch, *self._waiting]
                self._waiting.clear()
            for live in stranded:
                self._finish(live, "error", self._broken)
            return
        finally:
            ended = time.monotonic() - self._t0
            self._faults = [f for f in self._faults if f.at_s > ended]
        if report.failures:
            self.failures.extend(report.failures)
            for record in report.failures:
                logger.warning("decode round survived a failure: %s", record)
        for live, result in zip(batch, report.sequences, strict=True):
            if result.finished != "length":
                self._finish(live, result.finished, result.error)
            elif len(live.generated) >= live.request.max_new_tokens:
                self._finish(live, "length", "")
            # else: it goes on in the next round (unless aborted meanwhile)

    def _finish(self, live: _Live, reason: Literal["stop", "length", "error"], detail: str) -> None:
        with self._lock:
            if live.finished:
                return
            live.finished = True
            self._by_id.pop(live.request.request_id, None)
        live.sink.finish(reason, detail)


def _context_length(spec: ModelSpec) -> int:
    from edgesplit.models.build import _config

    config = _config(spec)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def text_codec(model: str, max_context: int = 4096) -> TextCodec:
    """Tokenizer side of a decoder: its HF tokenizer (and chat template), else UTF-8 bytes.

    Byte-level test models have no chat template; they get a plain "role: content" one.
    """
    from edgesplit.api.generation import tokenizer_for
    from edgesplit.models import model_spec_from_name

    spec = model_spec_from_name(model)
    context = min(_context_length(spec), max_context)
    base = tokenizer_for(model)
    stop = frozenset({base.eos_token_id}) if base.eos_token_id is not None else frozenset()
    chat: Callable[[list[dict[str, str]]], list[int]]
    hf_template = None
    if spec.checkpoint and (Path(spec.checkpoint) / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(spec.checkpoint)
        if getattr(hf, "chat_template", None):
            hf_template = hf

    if hf_template is not None:
        tokenizer = hf_template

        def chat(messages: list[dict[str, str]]) -> list[int]:
            ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            return [int(i) for i in ids]  # type: ignore[arg-type]  # untyped HF output

    else:
        encode = base.encode

        def chat(messages: list[dict[str, str]]) -> list[int]:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return encode(text + "assistant: ")

    decode = base.decode
    return TextCodec(
        name=model,
        context_length=context,
        vocab_size=base.vocab_size,
        encode=base.encode,
        decode=lambda ids: decode(list(ids)),
        stop_token_ids=stop,
        chat_template=chat,
    )


# -- encoders ------------------------------------------------------------------------------------
@dataclass
class PipelineBatchEngine:
    """A `BatchEngine` over one long `run_plan` fed by a queue ([Note: engine adapters])."""

    plan: Plan
    cluster: Cluster
    profile: ModelProfile
    spec: ModelSpec
    keepalive: Arrays | None = None  # unused: the runtime idles on None (api/serving.py passes it)
    idle_poll_s: float = 0.05  # how long the source waits for a request before saying "nothing"
    faults: tuple[ScheduledFault, ...] = ()
    standby_devices: tuple[str, ...] = ()
    _queue: queue.Queue[tuple[Arrays, BatchDone] | None] = field(default_factory=queue.Queue)
    _pending: dict[int, BatchDone] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _broken: str = ""
    _health: RunHealth | None = None
    _thread: threading.Thread | None = None

    @property
    def max_batch(self) -> int:
        return self.plan.batch_size

    @property
    def max_in_flight(self) -> int:
        return len(self.plan.stages)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="batch-engine")
        self._thread.start()

    def submit(self, inputs: Mapping[str, np.ndarray], done: BatchDone) -> None:
        if self._broken:
            done(None, self._broken)
            return
        self._queue.put(({k: np.ascontiguousarray(v) for k, v in inputs.items()}, done))

    def health(self) -> EngineHealth:
        """The runtime's own view: a stage being replaced or lost is not ok (and says why)."""
        now = self._health
        stages = now.stages if now is not None and now.stages else self.plan.stages
        names = tuple(f"{s.device}[{s.start},{s.end})" for s in stages)
        if self._broken or now is None:
            return EngineHealth(False, self._broken or "the pipeline is starting", names)
        return EngineHealth(now.ok, "" if now.ok else f"{now.state}: {now.detail}", names)

    def close(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _requests(self) -> Iterator[Arrays | None]:
        for index in itertools.count():
            item: tuple[Arrays, BatchDone] | None = None
            while item is None:
                try:
                    item = self._queue.get(timeout=self.idle_poll_s)
                except queue.Empty:
                    yield None  # nothing now: the runtime idles (and may recover meanwhile)
                    continue
                if item is None:
                    return
            with self._lock:
                self._pending[index] = item[1]
            yield item[0]

    def _answer(self, index: int, outputs: Arrays | None, error: str) -> None:
        with self._lock:
            done = self._pending.pop(index, None)
        if done is not None:
            done(outputs, error)

    def _run(self) -> None:
        from edgesplit.api.pipeline import run
        from edgesplit.runtime.config import RuntimeConfig

        try:
            report = run(
                self.plan,
                self.cluster,
                self.profile,
                config=RuntimeConfig(compute="real", standby_devices=self.standby_devices),
                requests=self._requests(),
                faults=self.faults,
                on_result=lambda index, outputs: self._answer(index, outputs, ""),
                on_error=lambda index, message: self._answer(index, None, message),
                on_health=lambda health: setattr(self, "_health", health),
            )
            if report.notes:
                logger.warning("encoder pipeline: %s", report.notes)
            error = "the pipeline stopped" if report.requests.lost else ""
        except Exception as e:  # any error: answer what waits, never hang the callers
            error = f"{type(e).__name__}: {e}"
        self._broken = error or "the pipeline stopped"
        with self._lock:
            stranded = list(self._pending.values())
            self._pending.clear()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                stranded.append(item[1])
        for done in stranded:
            done(None, self._broken)


def uses_head(spec: ModelSpec) -> bool:
    return spec.family in ("vit", "deit")


def encoder_parts(
    model: str,
    *,
    devices: Sequence[str] = (),
    plan: Plan | None = None,
    cluster: Cluster | None = None,
    profile: ModelProfile | None = None,
    batch_size: int = 8,
    seq_len: int = 128,
) -> tuple[ModelSpec, Plan, Cluster, ModelProfile]:
    """What `run_plan` needs to serve an encoder: spec, plan, cluster and profile.

    Text encoders (BERT, MiniLM) are served without their classification head (the last stage
    returns token states, pooled by the front end), so a checkpoint without a head works.
    Without a plan, the units are split evenly over `devices`, the profile measured here.
    """
    from edgesplit.api.pipeline import profile as measure
    from edgesplit.models import model_spec_from_name, unit_names

    spec = model_spec_from_name(model)
    if spec.family in ("gpt2", "llama"):
        raise ConfigError(f"'{model}' is a decoder; it is served by the generation pipeline")
    num_units = len(unit_names(spec)) - (0 if uses_head(spec) else 1)
    if profile is None:
        profile = measure(
            _measurable(spec, model),
            batch_size,
            repeats=2,
            warmup=1,
            seq_len=None if uses_head(spec) else seq_len,
        )
    if profile.num_units != num_units:
        profile = profile.model_copy(update={"units": profile.units[:num_units]})
    if plan is None:
        if not devices:
            raise ConfigError("serving an encoder needs --plan and -c, or --devices")
        kind = profile.device_kinds[0]
        cluster = cluster or Cluster(
            source=devices[0],
            devices=tuple(DeviceSpec(name=d, kind=kind, memory_mb=1 << 16) for d in devices),
        )
        cuts = [round(i * num_units / len(devices)) for i in range(len(devices) + 1)]
        placements = tuple(
            StagePlacement(device=d, start=cuts[i], end=cuts[i + 1]) for i, d in enumerate(devices)
        )
        plan = Plan(
            model=profile.model,
            profile_hash=profile.digest(),
            cluster_hash=cluster.digest(),
            batch_size=profile.batch_size,
            objective="throughput",
            planner=PlannerInfo(name="even"),
            stages=placements,
            predicted=CostModel(profile, cluster).predict(placements),
        )
    elif plan.num_units != num_units:  # a plan with the head: the last stage stops before it
        stages = [s for s in plan.stages if s.start < num_units]
        stages[-1] = stages[-1].model_copy(update={"end": num_units})
        plan = plan.model_copy(update={"stages": tuple(stages)})
    if cluster is None:
        raise ConfigError("a plan needs its cluster (-c cluster.toml)")
    return spec, plan, cluster, profile


def _measurable(spec: ModelSpec, model: str) -> str:
    """A checkpoint that builds whole: a BERT without a classifier gets a zero one (unused)."""
    if spec.family != "bert" or not spec.checkpoint:
        return model
    from safetensors import safe_open

    directory = Path(spec.checkpoint)
    for file in directory.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            if any(k.endswith("classifier.weight") for k in handle.keys()):  # noqa: SIM118
                return model
    return str(_with_zero_head(directory))


def _with_zero_head(directory: Path) -> Path:
    import os

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    from edgesplit.models.build import save_checkpoint
    from edgesplit.models.spec import ModelSpec

    home = Path(os.environ.get("EDGESPLIT_HOME") or Path.home() / ".cache" / "edgesplit")
    target = home / "models" / f"{directory.name}-with-head"
    if (target / "config.json").is_file():
        return target
    config = BertConfig.from_pretrained(directory)
    model = BertForSequenceClassification(config)
    model.bert = BertModel.from_pretrained(directory, add_pooling_layer=True)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
    spec = ModelSpec(family="bert", preset=directory.name)
    model.eval()  # type: ignore[no-untyped-call]  # torch's Module.eval is untyped here
    return save_checkpoint(spec, target, model)


def embedding_codec(model: str, spec: ModelSpec, max_tokens: int) -> EmbeddingCodec:
    """Tokenizer side of a text encoder (MiniLM: its tokenizer, mean pooling, normalized)."""
    from transformers import AutoTokenizer

    if not spec.checkpoint or not (Path(spec.checkpoint) / "tokenizer.json").is_file():
        vocab = 1000

        def encode(text: str) -> list[int]:  # seeded test presets have no tokenizer
            return [1, *(b % (vocab - 3) + 3 for b in text.encode()), 2]

        normalize = False
    else:
        tokenizer = AutoTokenizer.from_pretrained(spec.checkpoint)

        def encode(text: str) -> list[int]:
            return [int(i) for i in tokenizer(text)["input_ids"]]

        modules = Path(spec.checkpoint) / "modules.json"
        normalize = modules.is_file() and "Normalize" in modules.read_text()

    def row(ids: Sequence[int]) -> Arrays:
        array = np.array([list(ids)], dtype=np.int64)
        return {"input_ids": array, "attention_mask": np.ones_like(array)}

    return EmbeddingCodec(
        name=model, max_tokens=max_tokens, encode=encode, row=row, normalize=normalize
    )


def image_codec(model: str, spec: ModelSpec) -> ImageCodec:
    """Image side of a ViT/DeiT: RGB, resized to the model's size, normalized as its processor."""
    from edgesplit.models.build import _config

    config = _config(spec)
    size = int(config.image_size)
    channels = int(config.num_channels)
    mean, std = np.full(channels, 0.5), np.full(channels, 0.5)
    if spec.checkpoint and (Path(spec.checkpoint) / "preprocessor_config.json").is_file():
        meta = json.loads((Path(spec.checkpoint) / "preprocessor_config.json").read_text())
        mean = np.asarray(meta.get("image_mean", mean), dtype=np.float64)
        std = np.asarray(meta.get("image_std", std), dtype=np.float64)
    labels_map = getattr(config, "id2label", None) or {}
    num_labels = int(getattr(config, "num_labels", len(labels_map)))
    labels = tuple(str(labels_map.get(i, labels_map.get(str(i), i))) for i in range(num_labels))

    def preprocess(data: bytes) -> Arrays:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in ("PNG", "JPEG"):
                    raise ValueError(f"{image.format} images are not accepted; send PNG or JPEG")
                width, height = image.size
                if width * height > _MAX_IMAGE_PIXELS:
                    raise ValueError(f"{width}x{height} pixels is too large")
                rgb = image.convert("RGB" if channels == 3 else "L").resize(
                    (size, size), Image.Resampling.BILINEAR
                )
                pixels = np.asarray(rgb, dtype=np.float64) / 255.0
        except ValueError:
            raise
        except Exception as e:  # PIL raises many kinds for a broken file
            raise ValueError(f"cannot decode the image ({type(e).__name__})") from e
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        pixels = (pixels - mean) / std  # (H, W, C)
        return {"pixel_values": pixels.transpose(2, 0, 1)[None].astype(np.float32)}

    return ImageCodec(name=model, labels=labels, preprocess=preprocess)


def keepalive_row(spec: ModelSpec, profile: ModelProfile) -> Arrays:
    from edgesplit.models import example_input

    row = example_input(spec, 1, seq_len=2) if spec.family == "bert" else example_input(spec, 1)
    return {k: v.detach().contiguous().numpy() for k, v in row.items()}


def model_kind(model: str) -> ModelKind:
    from edgesplit.models import model_spec_from_name

    family = model_spec_from_name(model).family
    return (
        "text"
        if family in ("gpt2", "llama")
        else "embeddings"
        if family == "bert"
        else ("classify")
    )


def profile_seq_len(spec: ModelSpec, profile: ModelProfile) -> int:
    """Tokens per row the plan was sized for (the stream's frame bound follows from it)."""
    from edgesplit.models import default_seq_len

    per_row = profile.input_bytes / max(profile.batch_size, 1)
    # BERT inputs: int64 input_ids + attention_mask (+ token_type_ids) per token.
    guess = int(per_row // 16)
    return guess if guess > 0 else default_seq_len(spec)
