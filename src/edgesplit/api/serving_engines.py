"""Engine adapters and codecs of the serving capability (see api/serving.py).

Owns `PipelineDecodeEngine` and `PipelineBatchEngine` (the `serving.engine` protocols over the
runtime's generation and batch pipelines; [Note: engine adapters]), the tokenizer / image
codecs the front end is given, and `encoder_parts` (spec, plan, cluster, profile of an encoder
to serve). Wiring only; imported by api/serving.py.

[Note: engine adapters] `PipelineDecodeEngine` is a thin view of the runtime's long-lived decode
engine: one thread runs `GenerationPipeline.serve_forever`, `submit` hands each request to
`GenerationPipeline.submit` (continuous batching: it joins the running micro-batches after its
prefill), `abort` finishes the sink at once and has the pipeline drop the sequence between two
steps, freeing its caches on every stage (a client that disconnects frees its slot at once).
Sampling key 0 for every request: the same prompt and seed sample the same tokens.
`PipelineBatchEngine` runs one long `run_plan` whose `requests` is a generator fed by a queue; it
yields None ("nothing now") after `idle_poll_s` without a request, so the run idles and a
recovery goes on between two yields; errored micro-batches come back through `on_error` and the
health view through `on_health` (a stage being replaced or lost is not ok).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from edgesplit.core.cluster import Cluster, DeviceSpec
from edgesplit.core.cost import CostModel
from edgesplit.core.plan import Plan, PlannerInfo, StagePlacement
from edgesplit.core.profile import ModelProfile
from edgesplit.errors import ConfigError, DeviceUnavailableError, EdgesplitError
from edgesplit.serving import (
    DecodeRequest,
    EmbeddingCodec,
    EngineHealth,
    EngineStats,
    ImageCodec,
    TextCodec,
    TokenSink,
)
from edgesplit.serving.engine import Arrays, BatchDone, FinishReason

if TYPE_CHECKING:
    from edgesplit.models.spec import ModelSpec
    from edgesplit.runtime.config import ScheduledFault
    from edgesplit.runtime.generation import GenerationPipeline, SequenceResult
    from edgesplit.runtime.report import FailureRecord, RunHealth

__all__ = [
    "ModelKind",
    "PipelineBatchEngine",
    "PipelineDecodeEngine",
    "embedding_codec",
    "encoder_parts",
    "image_codec",
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
    sequence_id: int | None = None  # the pipeline's, once submitted
    aborted: bool = False
    finished: bool = False


class PipelineDecodeEngine:
    """A `DecodeEngine` over a started `GenerationPipeline` ([Note: engine adapters])."""

    def __init__(
        self,
        pipeline: GenerationPipeline,
        max_concurrent: int,
        faults: Sequence[ScheduledFault] = (),
    ) -> None:
        self.pipeline = pipeline
        self.max_concurrent = max_concurrent
        self._faults = tuple(faults)
        self._by_id: dict[str, _Live] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._broken = ""
        self._thread = threading.Thread(target=self._serve, daemon=True, name="decode-engine")
        self._thread.start()

    @property
    def failures(self) -> list[FailureRecord]:
        """Stage failures the pipeline survived (or not) while serving."""
        return self.pipeline.failures()

    def submit(self, request: DecodeRequest, sink: TokenSink) -> None:
        from edgesplit.runtime.generation import GenerationRequest

        live = _Live(request, sink)
        with self._lock:
            self._by_id[request.request_id] = live
        generation = GenerationRequest(
            prompt_ids=list(request.prompt_ids),
            max_new_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_k=request.top_k,
            seed=request.seed,
            stop_token_id=min(request.stop_token_ids) if request.stop_token_ids else None,
        )
        try:
            if self._broken:
                raise DeviceUnavailableError(self._broken)
            # Sampling key 0: the same prompt and seed sample the same tokens, whoever asks.
            sequence_id = self.pipeline.submit(
                generation,
                lambda _, token: self._token(live, token),
                lambda result: self._finished(live, result),
                key=0,
            )
        except EdgesplitError as e:
            self._finish(live, "error", f"{type(e).__name__}: {e}")
            return
        with self._lock:
            live.sequence_id = sequence_id
            aborted = live.aborted
        if aborted:
            self.pipeline.abort(sequence_id)

    def abort(self, request_id: str) -> None:
        with self._lock:
            live = self._by_id.get(request_id)
            if live is None or live.finished:
                return
            live.aborted = True
            sequence_id = live.sequence_id
        if sequence_id is not None:
            self.pipeline.abort(sequence_id)  # applied between steps; caches freed on every stage
        self._finish(live, "abort", "")

    def health(self) -> EngineHealth:
        state = self.pipeline.health()
        names = tuple(f"{s.device}[{s.start},{s.end})" for s in state.stages)
        if self._broken:
            return EngineHealth(False, self._broken, names)
        return EngineHealth(state.ok, state.detail or ("" if state.ok else state.state), names)

    def stats(self) -> EngineStats:
        stats = self.pipeline.stats()
        return EngineStats(
            running=stats.running, waiting=stats.waiting, step_batch_sizes=stats.step_batch_sizes
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _serve(self) -> None:
        try:
            self.pipeline.serve_forever(self._stop, self._faults)
        except Exception as e:  # the engine must report, not vanish
            logger.exception("decode engine stopped")
            self._broken = f"{type(e).__name__}: {e}"
        if not self._stop.is_set():
            self._broken = self._broken or self.pipeline.health().detail or "the decoder stopped"
        with self._lock:
            stranded = list(self._by_id.values())
        for live in stranded:
            self._finish(live, "error", self._broken or "the server is shutting down")

    def _token(self, live: _Live, token: int) -> None:
        if not live.aborted and not live.finished:
            live.sink.token(token)

    def _finished(self, live: _Live, result: SequenceResult) -> None:
        if result.finished == "abort":
            self._finish(live, "abort", "")
        else:
            self._finish(live, result.finished, result.error)

    def _finish(self, live: _Live, reason: FinishReason, detail: str) -> None:
        with self._lock:
            if live.finished:
                return
            live.finished = True
            self._by_id.pop(live.request.request_id, None)
        live.sink.finish(reason, detail)


def text_codec(model: str, max_context: int = 4096) -> TextCodec:
    """Tokenizer side of a decoder: its HF tokenizer (and chat template), else UTF-8 bytes.

    Byte-level test models have no chat template; they get a plain "role: content" one.
    """
    from edgesplit.api.generation import context_length, tokenizer_for
    from edgesplit.models import model_spec_from_name

    spec = model_spec_from_name(model)
    context = min(context_length(model), max_context)
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
