"""`edgesplit offload serve|send|bench`: the adaptive-offloading edge server and device client.

Prints with rich (cli.common's console); all work happens in edgesplit.offload, reached
through `edgesplit.api.offload`. Every option is checked before anything connects, binds
or loads (rc 2 with the flag, the value and the range).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar, cast, get_args

import numpy as np
import typer
from rich.table import Table

from edgesplit.cli.common import console
from edgesplit.errors import ConfigError

if TYPE_CHECKING:
    from edgesplit.api.offload import LiveRun

__all__ = ["register"]

UrlOpt = Annotated[
    str, typer.Option("--url", help="Edge server base URL (http:// is added if missing).")
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="EDGESPLIT_OFFLOAD_TOKEN", help="Bearer token, if required."),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", help="Checkpoint dir (default: the bundled offload/weights)."),
]


def _choice(value: str, allowed: tuple[str, ...], flag: str) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"{flag} must be one of {', '.join(allowed)}, not {value!r}")
    return value


Num = TypeVar("Num", int, float)


def _bounds(
    low: float, high: float | None = None, *, above: bool = False, unit: str = ""
) -> Callable[[Num | None], Num | None]:
    """An option callback: `low <= value` (`low < value` with `above`) and `value <= high`.

    Its message names the value and the range ("must be 1..100, got 500"); typer's own `min=`
    names neither the value nor, for floats, an open bound.
    """
    units = f" {unit}" if unit else ""

    def check(value: Num | None) -> Num | None:
        if value is None:
            return value
        fits = (value > low if above else value >= low) and (high is None or value <= high)
        if not fits:  # NaN fails too
            if above:
                wanted = f"greater than {low:g}{units}"
            elif high is None:
                wanted = f"at least {low:g}{units}"
            else:
                wanted = f"{low:g}..{high:g}{units}"
            raise typer.BadParameter(f"must be {wanted}, got {value:g}")
        return value

    return check


REUSE_MODES = ("incremental", "recompute")


def _load_image(
    path: Path | None, test_index: int | None, size: int
) -> tuple[np.ndarray, int | None]:
    from edgesplit.api.offload import load_fashion_mnist, upscale

    if path is not None:
        from PIL import Image, UnidentifiedImageError

        if not path.is_file():
            raise ConfigError(f"image not found: {path} (cwd is {Path.cwd()})")
        try:
            with Image.open(path) as image:
                gray = image.convert("L").resize((size, size))
                return np.asarray(gray, dtype=np.uint8), None
        except UnidentifiedImageError as e:
            raise ConfigError(f"{path} is not an image Pillow can read (PNG, JPEG, ...)") from e
        except OSError as e:  # unreadable or truncated
            raise ConfigError(f"cannot read image {path}: {e}") from e
    images, labels = load_fashion_mnist("test")
    index = test_index or 0
    if not 0 <= index < len(images):
        raise ConfigError(f"--test-index must be 0..{len(images) - 1} (Fashion-MNIST test set)")
    return upscale(images[index : index + 1], size)[0], int(labels[index])


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help=(
            "Adaptive offloading (A-MOT): a weak device sends a few image patches, the edge "
            "server reconstructs them with a masked autoencoder and classifies.\n\n"
            "  edgesplit offload serve --port 8470 --token s3cret\n"
            "  edgesplit offload serve --ray-replicas 2   # Ray Serve, see serve --help\n"
            "  edgesplit offload send --test-index 3 --token s3cret --slo-ms 250\n"
            "  edgesplit offload bench --token s3cret --trace lte --mean-kbps 100 --slo-ms 250"
        ),
        no_args_is_help=True,
    )

    @group.command("serve")
    def serve_cmd(
        host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
        port: Annotated[
            int, typer.Option(callback=_bounds(0, 65535), help="TCP port, 0..65535 (0: any free).")
        ] = 8470,
        token: TokenOpt = None,
        weights: WeightsOpt = None,
        max_body_bytes: Annotated[
            int, typer.Option(callback=_bounds(1), help="Request body limit, bytes.")
        ] = 262_144,
        max_connections: Annotated[
            int,
            typer.Option(
                callback=_bounds(1), help="Open connections admitted (the next gets a 503)."
            ),
        ] = 64,
        header_timeout_s: Annotated[
            float,
            typer.Option(
                callback=_bounds(0, above=True, unit="s"),
                help="A request's headers must arrive within this many s.",
            ),
        ] = 10.0,
        body_timeout_s: Annotated[
            float,
            typer.Option(
                callback=_bounds(0, above=True, unit="s"),
                help="A request's body must arrive within this many s.",
            ),
        ] = 30.0,
        reuse: Annotated[
            str, typer.Option(help="Round-2 reuse: incremental|recompute.")
        ] = "incremental",
        tiny: Annotated[bool, typer.Option(help="Random tiny model (smoke tests).")] = False,
        ray_replicas: Annotated[
            int,
            typer.Option(
                callback=_bounds(0, 64),
                help=(
                    "Serve with Ray Serve, N replicas (0..64) behind one port (0: one uvicorn "
                    "process, the default). One process runs one inference at a time; use "
                    "replicas when requests queue on it (p95 well above the compute time in "
                    "/metrics) AND the host has idle cores, about one replica per core. Serve "
                    "adds ~13 ms of server CPU per request (measured, see docs/offload.md), so "
                    "it pays only for models slower than that. Starts an embedded local Ray "
                    "(15-35 s, ~350 MB per replica)."
                ),
            ),
        ] = 0,
        ray_cpus: Annotated[
            float,
            typer.Option(callback=_bounds(0, above=True), help="Ray CPUs reserved per replica."),
        ] = 1.0,
        ray_affinity: Annotated[
            bool,
            typer.Option(
                help=(
                    "Route by the x-session-id header (consistent hashing) so round 2 reaches "
                    "the replica holding round 1; `offload send` sends that header with every "
                    "round. Without it round 2 may get 409 and the client resends everything "
                    "as one round (correct, no reuse)."
                )
            ),
        ] = True,
    ) -> None:
        """Run the edge server (FastAPI + uvicorn): /v1/infer, /v1/info, /health, /metrics, /.

        --ray-replicas N: the same app as a Ray Serve app of N replicas (docs/offload.md).

        Example (the bundled model on port 8470, clients need the token):
          edgesplit offload serve --port 8470 --token s3cret
        Serves until Ctrl-C; writes no files.
        """
        from edgesplit.api.offload import serve_offload, serve_offload_ray, server_config

        options = {
            "host": host,
            "port": port,
            "token": token,
            "max_body_bytes": max_body_bytes,
            "max_connections": max_connections,
            "header_timeout_s": header_timeout_s,
            "body_timeout_s": body_timeout_s,
            "reuse": _choice(reuse, REUSE_MODES, "--reuse"),
        }
        config = server_config(options)
        auth = "bearer token" if token else "none"
        # The "server on" line comes only once the port is bound and the model loaded (Ray:
        # once the replicas answer); a busy port or bad --weights fails before it, rc 2.
        if ray_replicas > 0:
            affinity = "on" if ray_affinity else "off"
            serve_offload_ray(
                config,
                replicas=ray_replicas,
                num_cpus=ray_cpus,
                affinity=ray_affinity,
                weights_dir=weights,
                tiny=tiny,
                on_start=lambda: console.print(
                    f"starting Ray Serve, {ray_replicas} replica(s) (15-35 s) ..."
                ),
                on_ready=lambda url: console.print(
                    f"edgesplit offload server on {url} (Ray Serve, {ray_replicas} replica(s), "
                    f"affinity {affinity}, auth: {auth})"
                ),
            )
            return
        serve_offload(
            config,
            weights,
            tiny=tiny,
            on_ready=lambda url: console.print(f"edgesplit offload server on {url} (auth: {auth})"),
        )

    @group.command("send")
    def send_cmd(
        image: Annotated[
            Path | None,
            typer.Argument(help="Image file (any Pillow format); default: a test image."),
        ] = None,
        test_index: Annotated[
            int | None,
            typer.Option(
                callback=_bounds(0), help="Fashion-MNIST test image index instead of a file."
            ),
        ] = None,
        url: UrlOpt = "http://127.0.0.1:8470",
        token: TokenOpt = None,
        k: Annotated[
            int, typer.Option(callback=_bounds(1), help="Patches in round 1 (fixed mode).")
        ] = 16,
        codec: Annotated[str, typer.Option(help="raw|zlib|png|jpeg|jpeg_shared|webp")] = "webp",
        quality: Annotated[
            int | None, typer.Option(callback=_bounds(1, 100), help="jpeg/webp quality, 1..100.")
        ] = 50,
        sampling: Annotated[str, typer.Option(help="random|grid|server")] = "server",
        extra_k: Annotated[
            int, typer.Option(callback=_bounds(0), help="Round-2 patches (fixed mode).")
        ] = 0,
        slo_ms: Annotated[
            float | None,
            typer.Option(
                callback=_bounds(0, above=True, unit="ms"),
                help="Latency SLO: choose adaptively from the tables.",
            ),
        ] = None,
        weights: WeightsOpt = None,
    ) -> None:
        """Classify one image through the server (fixed settings, or adaptive with --slo-ms).

        Example (Fashion-MNIST test image 3, settings chosen to answer within 250 ms):
          edgesplit offload send --test-index 3 --token s3cret --slo-ms 250
        Needs a running `offload serve` (--url; its --token if set); prints the rounds only.
        """
        from edgesplit.api.offload import (
            CODEC_NAMES,
            CodecName,
            OffloadClient,
            SamplingName,
            check_url,
            load_tables,
            sample_indices,
        )

        codec_name = cast(CodecName, _choice(codec, CODEC_NAMES, "--codec"))
        sampling_name = cast(SamplingName, _choice(sampling, get_args(SamplingName), "--sampling"))

        with OffloadClient(check_url(url), token=token) as client:
            info = client.info()
            pixels, label = _load_image(image, test_index, info.image_size)
            table = Table(title="edgesplit offload send")
            for column in ("round", "patches", "bytes", "latency ms", "class", "confidence"):
                table.add_column(column)
            if slo_ms is not None:
                options = load_tables(weights).options
                result = client.classify(pixels, options, slo_s=slo_ms / 1000)
                for i, stats in enumerate(result.rounds, start=1):
                    table.add_row(
                        str(i), "", str(stats.body_bytes), f"{1000 * stats.elapsed_s:.1f}", "", ""
                    )
                answer = result.response
                table.add_row(
                    "answer",
                    str(answer.num_received),
                    str(result.total_bytes),
                    f"{1000 * result.latency_s:.1f}",
                    answer.class_name,
                    f"{answer.confidence:.3f}",
                )
                console.print(f"policy chose {result.option_name}")
                late_ms = 1000 * result.latency_s - slo_ms
                if late_ms > 0:
                    slo_line = f"SLO {slo_ms:g} ms missed by {late_ms:.1f} ms"
                else:
                    slo_line = f"SLO {slo_ms:g} ms met ({-late_ms:.1f} ms to spare)"
            else:
                slo_line = None
                if k > info.num_patches:
                    console.print(
                        f"note: --k {k} capped to {info.num_patches}, the server's patches per "
                        "image (all of them)"
                    )
                left = info.num_patches - min(k, info.num_patches)
                if extra_k > left:
                    console.print(
                        f"note: --extra-k {extra_k} capped to {left}, the patches round 1 leaves"
                    )
                order = np.asarray(info.patch_order)
                indices = sample_indices(
                    sampling_name,
                    info.num_patches,
                    k,
                    rng=np.random.default_rng(0),
                    server_order=order,
                )
                answer, stats = client.send_round(
                    pixels,
                    indices,
                    codec=codec_name,
                    quality=quality,
                    patch_size=info.patch_size,
                    extra_k=extra_k,
                )
                table.add_row(
                    "1",
                    str(answer.num_received),
                    str(stats.body_bytes),
                    f"{1000 * stats.elapsed_s:.1f}",
                    answer.class_name,
                    f"{answer.confidence:.3f}",
                )
                if extra_k and answer.requested_indices:
                    answer, stats = client.send_round(
                        pixels,
                        answer.requested_indices,
                        codec=codec_name,
                        quality=quality,  # type: ignore[arg-type]
                        patch_size=info.patch_size,
                        request_id=answer.request_id,
                        round_index=2,
                        session_id=answer.session_id,
                    )
                    table.add_row(
                        "2",
                        str(answer.num_received),
                        str(stats.body_bytes),
                        f"{1000 * stats.elapsed_s:.1f}",
                        answer.class_name,
                        f"{answer.confidence:.3f}",
                    )
            console.print(table)
            if slo_line is not None:
                console.print(slo_line)
            if label is not None:
                from edgesplit.api.offload import CLASS_NAMES

                console.print(f"true class: {CLASS_NAMES[label]}")

    @group.command("bench")
    def bench_cmd(
        url: UrlOpt = "http://127.0.0.1:8470",
        token: TokenOpt = None,
        trace: Annotated[str, typer.Option(help="steady|step|random_walk|wifi|lte")] = "lte",
        mean_kbps: Annotated[
            float,
            typer.Option(
                callback=_bounds(0, above=True, unit="kbit/s"), help="Mean uplink rate, kbit/s."
            ),
        ] = 100.0,
        one_way_ms: Annotated[
            float, typer.Option(callback=_bounds(0, unit="ms"), help="One-way latency, ms.")
        ] = 20.0,
        slo_ms: Annotated[
            float,
            typer.Option(
                callback=_bounds(0, above=True, unit="ms"), help="Latency SLO per frame, ms."
            ),
        ] = 250.0,
        frames: Annotated[
            int,
            typer.Option(callback=_bounds(1), help="Frames to send (Fashion-MNIST test images)."),
        ] = 40,
        period_ms: Annotated[
            float,
            typer.Option(
                callback=_bounds(0, above=True, unit="ms"), help="A frame every this many ms."
            ),
        ] = 500.0,
        weights: WeightsOpt = None,
        seed: Annotated[int, typer.Option(help="Trace seed.")] = 0,
    ) -> None:
        """Send Fashion-MNIST test frames over an emulated link; report SLO attainment.

        Example (an LTE-like uplink trace at 100 kbit/s mean, a 250 ms SLO per frame):
          edgesplit offload bench --token s3cret --trace lte --mean-kbps 100 --slo-ms 250
        Needs a running `offload serve` (--url; its --token if set); prints the table only
        (Ctrl-C: the table of the frames done so far).
        """
        from edgesplit.api.offload import (
            TRACE_NAMES,
            FrameRecord,
            LinkEmulator,
            LiveRun,
            OffloadClient,
            TokenBucket,
            TraceName,
            check_url,
            iter_frames,
            load_fashion_mnist,
            load_tables,
            make_trace,
            upscale,
        )

        trace_name = cast(TraceName, _choice(trace, TRACE_NAMES, "--trace"))
        base_url = check_url(url)
        options = load_tables(weights).options
        images, labels = load_fashion_mnist("test")
        if frames > len(images):
            raise ConfigError(f"--frames must be 1..{len(images)} (the Fashion-MNIST test set)")
        x, y = upscale(images[:frames]), labels[:frames]
        rate = mean_kbps * 1000 / 8
        link = LinkEmulator(
            TokenBucket(make_trace(trace_name, rate, seed=seed), burst_bytes=300),
            one_way_ms / 1000,
        )
        done: list[FrameRecord] = []
        interrupted = False
        try:
            with OffloadClient(
                base_url,
                token=token,
                link=link,
                rtt_s=2 * one_way_ms / 1000,
                initial_bandwidth_bytes_per_s=rate / 2,
            ) as client:
                client.info()
                for record in iter_frames(
                    client, x, y, options, slo_s=slo_ms / 1000, period_s=period_ms / 1000
                ):
                    done.append(record)
        except KeyboardInterrupt:
            interrupted = True
        title = f"offload bench: {trace} {mean_kbps:g} kbit/s, SLO {slo_ms:g} ms"
        if done:
            _print_bench(LiveRun.from_frames(done), title, slo_ms)
        if interrupted:
            console.print(f"interrupted after {len(done)} of {frames} frames")
            raise typer.Exit(130)

    app.add_typer(group, name="offload")


def _print_bench(run: LiveRun, title: str, slo_ms: float) -> None:
    """The bench table and one line on the frames that missed the SLO (as `send` says it)."""
    table = Table(title=title)
    for column in (
        "frames",
        "SLO met",
        "accuracy",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "bytes/frame",
        "round 2",
    ):
        table.add_column(column)
    table.add_row(
        str(run.num_frames),
        f"{100 * run.slo_attainment(slo_ms / 1000):.1f} %",
        f"{100 * run.correct.mean():.1f} %",
        *(f"{1000 * run.latency_percentile_s(q):.0f}" for q in (50, 95, 99)),
        f"{run.body_bytes.mean():.0f}",
        f"{100 * (run.rounds == 2).mean():.0f} %",
    )
    console.print(table)
    late_ms = 1000 * run.latency_s - slo_ms
    missed = int((late_ms > 0).sum())
    if missed:
        console.print(
            f"SLO {slo_ms:g} ms missed on {missed} of {run.num_frames} frame(s), "
            f"by up to {late_ms.max():.1f} ms"
        )
    else:
        console.print(f"SLO {slo_ms:g} ms met on all {run.num_frames} frame(s)")
