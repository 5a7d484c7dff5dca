"""The serving capability: `edgesplit serve` (HTTP) and `run --inputs` (files) on the runtime.

Wires serving/ (the front end, which sees only engine protocols) to runtime/ (the generation
pipeline for decoders, the batch pipeline `run_plan` for encoders) through the adapters and
codecs of api/serving_engines.py ([Note: engine adapters] there says what the runtime does not
offer yet). Holds no logic beyond wiring.

Example:
    >>> from edgesplit.api import serving  # doctest: +SKIP
    >>> with serving.open_app("gpt2-tiny", devices=["a", "b"]) as app:
    ...     uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgesplit.api.generation import decode_stages
from edgesplit.api.precision import with_stage_dtype
from edgesplit.api.serving_engines import (
    PipelineBatchEngine,
    PipelineDecodeEngine,
    embedding_codec,
    encoder_parts,
    image_codec,
    model_kind,
    profile_seq_len,
    text_codec,
    uses_head,
)
from edgesplit.core.cluster import Cluster
from edgesplit.core.plan import Plan
from edgesplit.core.precision import StageDtype
from edgesplit.core.profile import ModelProfile
from edgesplit.errors import ConfigError, DeviceUnavailableError, EdgesplitError
from edgesplit.serving import ServerConfig, TextCodec, make_app
from edgesplit.serving.app import ServingApp
from edgesplit.serving.engine import Arrays

if TYPE_CHECKING:
    from edgesplit.runtime.config import ScheduledFault

__all__ = [
    "PipelineBatchEngine",
    "PipelineDecodeEngine",
    "Prediction",
    "ServeOptions",
    "bind_listener",
    "encoder_parts",
    "model_kind",
    "open_app",
    "predict_inputs",
    "read_inputs",
    "serve",
    "served_names",
    "text_codec",
]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRACEFUL_SHUTDOWN_S = 3  # seconds (uvicorn takes an int)


@dataclass(frozen=True)
class ServeOptions:
    """Knobs of `serve` (front end and engines)."""

    token: str | None = None
    max_batch_wait_ms: float = 10.0
    queue_size: int = 64
    max_concurrent: int = 8  # decode sequences interleaved on the stages
    max_body_bytes: int = 8 << 20
    faults: tuple[ScheduledFault, ...] = ()
    standby_devices: tuple[str, ...] = ()
    batch_size: int = 8  # encoder micro-batch when the profile is measured here
    served_name: str | None = None  # the model's id in the API (default: `served_names`)
    dtype: StageDtype | None = None  # every stage's weights (serve --dtype); None: the plan's
    micro_batches: int = 0  # decode frames in flight (0: one per stage; a generation plan's count)


# -- the app -------------------------------------------------------------------------------------
def served_names(model: str, served_name: str | None = None) -> tuple[str, frozenset[str]]:
    """The model's id in the API and the other ids a request may name for it.

    `served_name` (serve --served-model-name) wins alone; a checkpoint directory is served as
    its basename (`smollm2-135m`), its path as given and resolved accepted too; a preset by name.
    """
    if served_name:
        return served_name, frozenset()
    path = Path(model).expanduser()
    if not path.is_dir():
        return model, frozenset()
    name = path.resolve().name
    return name, frozenset({model, str(path), str(path.resolve())} - {name})


@contextlib.contextmanager
def open_app(
    model: str,
    *,
    devices: Sequence[str] = (),
    stages: Sequence[tuple[str, int, int]] | None = None,
    plan: Plan | None = None,
    cluster: Cluster | None = None,
    profile: ModelProfile | None = None,
    options: ServeOptions | None = None,
) -> Iterator[ServingApp]:
    """Start the pipeline for `model` and yield the ASGI app serving it (closed on exit).

    Decoders run on `stages` (or `devices` split by decode weights, `decode_stages`); encoders
    on `plan` + `cluster` (or an even split over `devices`, profiled here).
    """
    options = options or ServeOptions()
    name, aliases = served_names(model, options.served_name)
    config = ServerConfig(
        token=options.token,
        max_body_bytes=options.max_body_bytes,
        queue_size=options.queue_size,
        max_batch_wait_s=options.max_batch_wait_ms / 1000.0,
        model_aliases=aliases,
    )
    kind = model_kind(model)
    if kind == "text":
        with _decoder(model, devices, stages, cluster, options) as (codec, engine):
            yield make_app(config, text=(replace(codec, name=name), engine))
        return
    spec, plan, cluster, profile = encoder_parts(
        model,
        devices=devices,
        plan=plan,
        cluster=cluster,
        profile=profile,
        batch_size=options.batch_size,
    )
    if options.dtype is not None:
        plan = with_stage_dtype(plan, options.dtype, profile, cluster)
    from edgesplit.runtime.config import check_run_devices

    check_run_devices([s.device for s in plan.stages], options.standby_devices, options.faults)
    batch_engine = PipelineBatchEngine(
        plan,
        cluster,
        profile,
        spec,
        faults=options.faults,
        standby_devices=options.standby_devices,
    )
    batch_engine.start()
    try:
        if kind == "embeddings":
            embed = embedding_codec(model, spec, profile_seq_len(spec, profile))
            yield make_app(config, embeddings=(replace(embed, name=name), batch_engine))
        else:
            image = replace(image_codec(model, spec), name=name)
            yield make_app(config, classify=(image, batch_engine))
    finally:
        batch_engine.close()


@contextlib.contextmanager
def _decoder(
    model: str,
    devices: Sequence[str],
    stages: Sequence[tuple[str, int, int]] | None,
    cluster: Cluster | None,
    options: ServeOptions,
) -> Iterator[tuple[TextCodec, PipelineDecodeEngine]]:
    from edgesplit.models import model_spec_from_name, unit_names
    from edgesplit.runtime.config import RuntimeConfig, check_run_devices
    from edgesplit.runtime.generation import GenerationConfig, GenerationPipeline

    chosen = list(stages) if stages is not None else decode_stages(model, devices)
    # A drill on a device that runs nothing would never fire: refused before anything loads.
    check_run_devices([d for d, _, _ in chosen], options.standby_devices, options.faults)
    spec = model_spec_from_name(model)
    codec = text_codec(model)
    runtime = RuntimeConfig(compute="real", standby_devices=options.standby_devices)
    pipeline = GenerationPipeline(
        spec,
        chosen,
        GenerationConfig(
            max_concurrent=options.max_concurrent,
            max_context=codec.context_length,
            micro_batches=options.micro_batches,
            runtime=runtime,
            dtype=options.dtype or "float32",
        ),
        num_units=len(unit_names(spec)),
        cluster=cluster,
    )
    pipeline.start()
    engine = PipelineDecodeEngine(pipeline, options.max_concurrent, options.faults)
    try:
        yield codec, engine
    finally:
        engine.close()
        pipeline.close()


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    devices: Sequence[str] = (),
    stages: Sequence[tuple[str, int, int]] | None = None,
    plan: Plan | None = None,
    cluster: Cluster | None = None,
    profile: ModelProfile | None = None,
    options: ServeOptions | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve `model` over HTTP until interrupted (blocking).

    The port is bound first, so that a busy port fails at once (before Ray and the model load);
    uvicorn then serves on that socket. `on_ready` gets the URL once the model is up.
    """
    import uvicorn

    sock = bind_listener(host, port)
    try:
        with open_app(
            model,
            devices=devices,
            stages=stages,
            plan=plan,
            cluster=cluster,
            profile=profile,
            options=options,
        ) as app:
            config = uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="warning",
                # Ctrl-C ends open streams after this long (they are aborted: their sequences'
                # caches freed), instead of waiting for thousands of tokens.
                timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
            )
            server = uvicorn.Server(config)
            if on_ready is not None:
                bound = sock.getsockname()[1]
                on_ready(f"http://{f'[{host}]' if ':' in host else host}:{bound}")
            server.run(sockets=[sock])
            if not server.started:  # uvicorn.run exits 3 here; it logged why
                raise EdgesplitError(f"the HTTP server on {host}:{port} did not start (see above)")
    finally:
        sock.close()


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port, for uvicorn's `server.run(sockets=[...])`: an HTTP
    front end binds before it loads anything, so a busy port is a ConfigError at once."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    if not 0 <= port <= 65535:
        sock.close()
        raise ConfigError(f"--port must be 0..65535 (0 = any free port), got {port}")
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{host}:{port} is already in use (another server?); pick another --port"
            ) from e
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; check --host and --port"
        ) from e
    sock.set_inheritable(True)
    return sock


# -- run --inputs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """One input's answer: top labels (classifiers) or an embedding (text encoders)."""

    input: str
    labels: tuple[tuple[str, float], ...] = ()
    embedding: tuple[float, ...] = ()

    def to_json(self) -> str:
        body: dict[str, object] = {"input": self.input}
        if self.labels:
            body["labels"] = [{"label": name, "score": score} for name, score in self.labels]
        if self.embedding:
            body["embedding"] = list(self.embedding)
        return json.dumps(body, ensure_ascii=False)


def read_inputs(path: Path) -> list[tuple[str, bytes | str]]:
    """Images of a directory (PNG/JPEG, sorted by name) or one image, else lines of text."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"{path} holds no .png/.jpg/.jpeg file")
        return [(p.name, p.read_bytes()) for p in files]
    if not path.is_file():
        raise ConfigError(f"--inputs {path} is neither a file nor a directory")
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        return [(path.name, path.read_bytes())]
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"{path} has no non-empty line")
    return [(line, line) for line in lines]


def predict_inputs(
    model: str,
    inputs: Path,
    *,
    devices: Sequence[str] = (),
    plan: Plan | None = None,
    cluster: Cluster | None = None,
    profile: ModelProfile | None = None,
    top_k: int = 5,
    faults: Sequence[ScheduledFault] = (),
) -> list[Prediction]:
    """Send real images or lines of text through the pipeline; one prediction per input."""
    from edgesplit.api.pipeline import run
    from edgesplit.runtime.config import RuntimeConfig

    items = read_inputs(inputs)
    spec, plan, cluster, profile = encoder_parts(
        model, devices=devices, plan=plan, cluster=cluster, profile=profile
    )
    rows: list[Arrays] = []
    lengths: list[int] = []
    if uses_head(spec):
        codec = image_codec(model, spec)
        for name, data in items:
            if not isinstance(data, bytes):
                raise ConfigError(f"{name}: {model} classifies images; pass a directory of them")
            try:
                rows.append(codec.preprocess(data))
            except ValueError as e:
                raise ConfigError(f"{name}: {e}") from e
    else:
        text = embedding_codec(model, spec, profile_seq_len(spec, profile))
        for _, data in items:
            ids = text.encode(data if isinstance(data, str) else data.decode())[: text.max_tokens]
            rows.append(text.row(ids))
            lengths.append(len(ids))
    from edgesplit.serving.engine import stack_rows

    size = plan.batch_size
    pad = not uses_head(spec)
    batches = [stack_rows(rows[i : i + size], pad) for i in range(0, len(rows), size)]
    outputs: dict[int, dict[str, np.ndarray]] = {}
    report = run(
        plan,
        cluster,
        profile,
        config=RuntimeConfig(compute="real"),
        requests=batches,
        faults=faults,
        on_result=lambda index, out: outputs.__setitem__(index, out),
    )
    if len(outputs) != len(batches):
        raise DeviceUnavailableError(
            f"{len(batches) - len(outputs)} of {len(batches)} micro-batches got no answer "
            f"({report.notes or 'see the log'})"
        )
    predictions = []
    for index, (name, _) in enumerate(items):
        out = outputs[index // size]
        row = index % size
        if uses_head(spec):
            logits = np.asarray(out["logits"][row], dtype=np.float64)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            order = np.argsort(-probs, kind="stable")[:top_k]
            labels = image_codec(model, spec).labels
            predictions.append(Prediction(name, tuple((labels[i], float(probs[i])) for i in order)))
        else:
            states = np.asarray(out["hidden"][row, : lengths[index]], dtype=np.float64)
            vector = states.mean(axis=0)
            vector /= max(float(np.linalg.norm(vector)), 1e-12)
            predictions.append(Prediction(name, embedding=tuple(float(v) for v in vector)))
    return predictions
