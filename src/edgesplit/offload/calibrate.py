"""Offline measurement of what each offloading setting achieves: accuracy, bytes, confidence.

Owns running the real pipeline (codec round trip included) over a labelled image set for one
setting (sampling, k1, codec/quality, round-2 sizes k2), the server-latency profile at batch 1,
and folding both into the policy's `OffloadTables`. Used by `make models` and the benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from edgesplit.offload.codec import (
    CodecName,
    decode_patches,
    decode_segments,
    encode_patches,
    encode_segments,
    is_lossy,
)
from edgesplit.offload.patches import SamplingName, patchify, sample_indices
from edgesplit.offload.pipeline import OffloadPipeline, ReuseMode
from edgesplit.offload.policy import OffloadOption, OffloadTables
from edgesplit.offload.protocol import PatchRequestHeader, encode_frame

__all__ = [
    "FULL_CODECS",
    "K1_VALUES",
    "K2_VALUES",
    "PATCH_CODECS",
    "PROGRESSIVE_CODEC",
    "PROGRESSIVE_ENDS",
    "REUSE_CODEC",
    "Outcome",
    "ProgressiveOutcome",
    "Setting",
    "build_tables",
    "calibrate_tables",
    "measure_all",
    "measure_progressive",
    "measure_setting",
    "p95_table",
    "profile_server_s",
    "progressive_options",
    "round_trip_patches",
    "server_profile",
]

TAUS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.01)  # 1.01: always take round 2
REUSE_CODEC: tuple[CodecName, int | None] = ("webp", 50)
K1_VALUES = (4, 8, 12, 16, 24, 32, 64)
K2_VALUES = (8, 16)
PATCH_CODECS: tuple[tuple[CodecName, int | None], ...] = (
    ("zlib", None),
    ("jpeg_shared", 50),
    ("webp", 50),
)
# Progressive round 1: server-order patches in independently decodable WebP segments, cut at the
# deadline (fewer, larger segments: each WebP file costs ~40 bytes of headers).
PROGRESSIVE_ENDS = (4, 8, 16, 32, 64)
PROGRESSIVE_CODEC: tuple[CodecName, int | None] = ("webp", 50)
FULL_CODECS: tuple[tuple[CodecName, int | None], ...] = (
    ("raw", None),
    ("png", None),
    *(("jpeg", q) for q in (10, 30, 50, 90)),
    *(("jpeg_shared", q) for q in (10, 30, 50, 90)),
    *(("webp", q) for q in (10, 30, 50, 90)),
)


@dataclass(frozen=True, slots=True)
class Setting:
    sampling: SamplingName
    k1: int
    codec: CodecName
    quality: int | None = None

    @property
    def name(self) -> str:
        codec = self.codec if self.quality is None else f"{self.codec}{self.quality}"
        return f"{self.sampling}-k{self.k1}-{codec}"


@dataclass(slots=True)
class Outcome:
    """Per-image results of one setting over a labelled set."""

    setting: Setting
    correct1: np.ndarray  # (n,) bool
    confidence1: np.ndarray  # (n,)
    bytes1: np.ndarray  # (n,) request body bytes (frame header + payload)
    correct2: dict[int, np.ndarray] = field(default_factory=dict)  # k2 -> (n,) bool
    bytes2: dict[int, np.ndarray] = field(default_factory=dict)
    correct2_recompute: dict[int, np.ndarray] = field(default_factory=dict)


def round_trip_patches(
    image: np.ndarray, indices: np.ndarray, codec: CodecName, quality: int | None, patch_size: int
) -> tuple[np.ndarray, int]:
    """What the server receives for these patches, and the request body size in bytes."""
    order = np.sort(indices)
    patches = patchify(image, patch_size)[order]
    payload = encode_patches(patches, codec, quality)
    header = PatchRequestHeader(
        request_id="0123456789abcdef0123456789abcdef",  # uuid4().hex length, as the client
        session_id=None,
        image_size=image.shape[0],
        patch_size=patch_size,
        codec=codec,
        quality=quality,
        indices=order.tolist(),
        payload_bytes=len(payload),
        extra_k=16,
    )
    size = len(encode_frame(header, payload))
    received = (
        decode_patches(payload, codec, len(order), patch_size, quality)
        if is_lossy(codec)
        else patches
    )
    # back in the caller's index order
    position = np.argsort(np.argsort(indices))
    return received[position], size


def measure_setting(
    pipeline: OffloadPipeline,
    images: np.ndarray,
    labels: np.ndarray,
    setting: Setting,
    *,
    k2_values: tuple[int, ...] = (),
    server_order: np.ndarray,
    seed: int = 0,
    batch_size: int = 250,
    recompute_too: bool = False,
) -> Outcome:
    """Run round 1 (and round 2 for each k2, with the server's uncertainty choice) on all images."""
    rng = np.random.default_rng(seed)
    n, p = len(images), pipeline.patch_size
    num_patches = pipeline.num_patches
    idx1 = np.stack(
        [
            sample_indices(
                setting.sampling, num_patches, setting.k1, rng=rng, server_order=server_order
            )
            for _ in range(n)
        ]
    )
    out = Outcome(setting, np.zeros(n, bool), np.zeros(n), np.zeros(n, np.int64))
    for k2 in k2_values:
        out.correct2[k2], out.bytes2[k2] = np.zeros(n, bool), np.zeros(n, np.int64)
        if recompute_too:
            out.correct2_recompute[k2] = np.zeros(n, bool)
    for start in range(0, n, batch_size):
        rows = slice(start, min(n, start + batch_size))
        received = []
        for i in range(rows.start, rows.stop):
            patches, size = round_trip_patches(
                images[i], idx1[i], setting.codec, setting.quality, p
            )
            received.append(patches)
            out.bytes1[i] = size
        first = pipeline.run(np.stack(received), idx1[rows])
        prediction = first.probabilities.argmax(axis=1)
        out.correct1[rows] = prediction == labels[rows]
        out.confidence1[rows] = first.probabilities.max(axis=1)
        for k2 in k2_values:
            if setting.k1 + k2 > num_patches:
                continue
            idx2 = OffloadPipeline.most_uncertain(first, k2)
            received2 = []
            for j, i in enumerate(range(rows.start, rows.stop)):
                patches, size = round_trip_patches(
                    images[i], idx2[j], setting.codec, setting.quality, p
                )
                received2.append(patches)
                out.bytes2[k2][i] = size
            modes: list[ReuseMode] = (
                ["incremental", "recompute"] if recompute_too else ["incremental"]
            )
            for mode in modes:
                second = pipeline.run(np.stack(received2), idx2, first, reuse=mode)
                correct = second.probabilities.argmax(axis=1) == labels[rows]
                target = out.correct2 if mode == "incremental" else out.correct2_recompute
                target[k2][rows] = correct
    return out


def profile_server_s(
    pipeline: OffloadPipeline,
    image: np.ndarray,
    k1: int,
    k2: int = 0,
    *,
    repeats: int = 20,
    reuse: ReuseMode = "incremental",
) -> tuple[np.ndarray, np.ndarray]:
    """Batch-1 server compute samples (seconds): round 1 at k1, and round 2 adding k2."""
    p = pipeline.patch_size
    rng = np.random.default_rng(0)
    patches = patchify(image, p)
    round1, round2 = [], []
    for r in range(repeats + 2):
        idx = rng.permutation(pipeline.num_patches)
        a, b = idx[:k1], idx[k1 : k1 + k2]
        t = time.perf_counter()
        first = pipeline.run(patches[a][None], a[None])
        t1 = time.perf_counter() - t
        t2 = 0.0
        if k2:
            t = time.perf_counter()
            pipeline.run(patches[b][None], b[None], first, reuse=reuse)
            t2 = time.perf_counter() - t
        if r >= 2:  # two warm-up runs
            round1.append(t1)
            round2.append(t2)
    return np.array(round1), np.array(round2)


def _two_round_options(
    common: Mapping[str, object],
    k2: int,
    correct1: np.ndarray,
    confidence1: np.ndarray,
    correct2: np.ndarray,
    bytes2: np.ndarray,
    server_s: tuple[float, float],
) -> list[OffloadOption]:
    """The two-round options of one round-1 setting and k2, one per tau in TAUS: round 2 is
    taken for the images whose round-1 confidence is below tau."""
    options = []
    for tau in TAUS:
        second = confidence1 < tau
        correct = np.where(second, correct2, correct1)
        options.append(
            OffloadOption(
                k2=k2,
                tau=tau,
                accuracy=float(correct.mean()),
                round2_fraction=float(second.mean()),
                bytes2_mean=float(bytes2.mean()),
                bytes2_p95=float(np.percentile(bytes2, 95)),
                server1_s=server_s[0],
                server2_s=server_s[1],
                **common,  # type: ignore[arg-type]
            )
        )
    return options


def build_tables(
    outcomes: list[Outcome], server_s: dict[tuple[int, int], tuple[float, float]]
) -> OffloadTables:
    """One-round and two-round options (every tau in TAUS) from measured outcomes; each option
    carries the number of images its accuracies were measured on (`num_images`).

    `server_s[(k1, k2)]` = (round-1 p95, round-2 p95) seconds, k2 = 0 for one round.
    """
    options: list[OffloadOption] = []
    for outcome in outcomes:
        s = outcome.setting
        acc1 = float(outcome.correct1.mean())
        common = {
            "sampling": s.sampling,
            "codec": s.codec,
            "quality": s.quality,
            "k1": s.k1,
            "accuracy_round1": acc1,
            "bytes1_mean": float(outcome.bytes1.mean()),
            "bytes1_p95": float(np.percentile(outcome.bytes1, 95)),
            "num_images": len(outcome.correct1),
        }
        options.append(
            OffloadOption(accuracy=acc1, server1_s=server_s[(s.k1, 0)][0], **common)  # type: ignore[arg-type]
        )
        for k2, correct2 in outcome.correct2.items():
            if s.k1 + k2 > 64 or (s.k1, k2) not in server_s:
                continue
            options += _two_round_options(
                common,
                k2,
                outcome.correct1,
                outcome.confidence1,
                correct2,
                outcome.bytes2[k2],
                server_s[(s.k1, k2)],
            )
    n = len(outcomes[0].correct1) if outcomes else 0
    return OffloadTables(num_images=n, options=options)


def full_image_outcomes(
    pipeline: OffloadPipeline, images: np.ndarray, labels: np.ndarray
) -> list[Outcome]:
    """Whole-image offload with each codec (the k = N mosaic is the image itself)."""
    outcomes = []
    all_indices = np.arange(pipeline.num_patches)
    for codec, quality in FULL_CODECS:
        received, sizes = [], []
        for image in images:
            patches, size = round_trip_patches(image, all_indices, codec, quality, 8)
            received.append(patches)
            sizes.append(size)
        decoded = np.stack(
            [p.reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).reshape(64, 64) for p in received]
        )
        probs = pipeline.classify_images(decoded)
        setting = Setting("grid", 64, codec, quality)
        outcomes.append(Outcome(setting, probs.argmax(1) == labels, probs.max(1), np.array(sizes)))
    return outcomes


def raw_like(outcome: Outcome, pipeline: OffloadPipeline, image: np.ndarray) -> Outcome:
    """The raw-codec twin of a lossless (zlib) outcome: same pixels, raw byte counts."""
    s = outcome.setting
    _, size1 = round_trip_patches(image, np.arange(s.k1), "raw", None, 8)
    twin = Outcome(
        replace(s, codec="raw"),
        outcome.correct1,
        outcome.confidence1,
        np.full_like(outcome.bytes1, size1),
    )
    for k2, correct in outcome.correct2.items():
        _, size2 = round_trip_patches(image, np.arange(k2), "raw", None, 8)
        twin.correct2[k2] = correct
        twin.bytes2[k2] = np.full_like(outcome.bytes2[k2], size2)
    return twin


def measure_all(
    pipeline: OffloadPipeline,
    images: np.ndarray,
    labels: np.ndarray,
    server_order: np.ndarray,
    *,
    recompute: tuple[CodecName, int | None] | None = None,
) -> list[Outcome]:
    """Every setting the policy may choose: server-order patches x PATCH_CODECS x K1_VALUES
    (+ round 2 with each of K2_VALUES), the raw twins of the zlib ones, and full images in
    every FULL_CODECS codec. `recompute`: also measure round 2 from scratch for this codec."""
    out = []
    for codec, quality in PATCH_CODECS:
        for k1 in K1_VALUES:
            outcome = measure_setting(
                pipeline,
                images,
                labels,
                Setting("server", k1, codec, quality),
                k2_values=tuple(k for k in K2_VALUES if k1 + k <= pipeline.num_patches),
                server_order=server_order,
                recompute_too=(codec, quality) == recompute,
            )
            out.append(outcome)
            if codec == "zlib":
                out.append(raw_like(outcome, pipeline, images[0]))
    return out + full_image_outcomes(pipeline, images, labels)


def server_profile(
    pipeline: OffloadPipeline, image: np.ndarray, repeats: int
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Batch-1 server compute samples for every (k1, k2) the tables use (k2 = 0: one round)."""
    samples = {}
    for k1 in K1_VALUES:
        for k2 in (0, *K2_VALUES):
            if k1 + k2 <= pipeline.num_patches:
                samples[(k1, k2)] = profile_server_s(pipeline, image, k1, k2, repeats=repeats)
    return samples


def p95_table(
    samples: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
) -> dict[tuple[int, int], tuple[float, float]]:
    return {
        key: (float(np.percentile(a, 95)), float(np.percentile(b, 95)) if key[1] else 0.0)
        for key, (a, b) in samples.items()
    }


def calibrate_tables(
    pipeline: OffloadPipeline, server_order: np.ndarray, *, num_images: int = 600
) -> OffloadTables:
    """Measure the policy's tables on held-out training images (never the test split)."""
    from edgesplit.offload.data import load_fashion_mnist, upscale
    from edgesplit.offload.training import VALIDATION_SIZE

    images, labels = load_fashion_mnist("train")
    x = upscale(images[-VALIDATION_SIZE:][:num_images])
    y = labels[-VALIDATION_SIZE:][:num_images]
    outcomes = measure_all(pipeline, x, y, server_order)
    server_s = p95_table(server_profile(pipeline, x[0], repeats=20))
    tables = build_tables(outcomes, server_s)
    progressive = progressive_options(measure_progressive(pipeline, x, y, server_order), server_s)
    return tables.model_copy(update={"options": [*tables.options, *progressive]})


@dataclass(slots=True)
class ProgressiveOutcome:
    """Per-image results of a progressive round 1 after each whole segment.

    `header_bytes[c]` is the body overhead (prefix + msgpack header) of a plan capped at
    ends[c]; `segment_bytes[:, j]` the size of segment j; correct/confidence after segment j;
    correct2[(j, k2)] is round 2 (k2 requested patches) after prefix j.
    """

    ends: tuple[int, ...]
    codec: CodecName
    quality: int | None
    header_bytes: np.ndarray  # (n, S)
    segment_bytes: np.ndarray  # (n, S)
    correct: np.ndarray  # (n, S) bool
    confidence: np.ndarray  # (n, S)
    correct2: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    bytes2: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    def body_bytes(self, cap: int, prefix: int) -> np.ndarray:
        """(n,) request body bytes of a plan capped at segment `cap`, cut after `prefix`."""
        return self.header_bytes[:, cap] + self.segment_bytes[:, : prefix + 1].sum(axis=1)


def _progressive_header_bytes(ends: tuple[int, ...], sizes: list[int]) -> int:
    header = PatchRequestHeader(
        request_id="0123456789abcdef0123456789abcdef",
        image_size=64,
        patch_size=8,
        codec=PROGRESSIVE_CODEC[0],
        quality=PROGRESSIVE_CODEC[1],
        server_order=True,
        payload_bytes=sum(sizes),
        segment_ends=list(ends),
        segment_bytes=sizes,
        extra_k=16,
    )
    return len(encode_frame(header, b"\0" * sum(sizes))) - sum(sizes)


def measure_progressive(
    pipeline: OffloadPipeline,
    images: np.ndarray,
    labels: np.ndarray,
    server_order: np.ndarray,
    *,
    ends: tuple[int, ...] = PROGRESSIVE_ENDS,
    k2_values: tuple[int, ...] = K2_VALUES,
    batch_size: int = 250,
) -> ProgressiveOutcome:
    """Round 1 after every whole segment of a progressive upload (and round 2 after each)."""
    codec, quality = PROGRESSIVE_CODEC
    n, p, s = len(images), pipeline.patch_size, len(ends)
    out = ProgressiveOutcome(
        ends,
        codec,
        quality,
        np.zeros((n, s), np.int64),
        np.zeros((n, s), np.int64),
        np.zeros((n, s), bool),
        np.zeros((n, s)),
    )
    for j in range(s):
        for k2 in k2_values:
            if ends[j] + k2 <= pipeline.num_patches:
                out.correct2[(j, k2)] = np.zeros(n, bool)
                out.bytes2[(j, k2)] = np.zeros(n, np.int64)
    order = np.asarray(server_order)[: ends[-1]]
    for start in range(0, n, batch_size):
        rows = range(start, min(n, start + batch_size))
        received = []
        for i in rows:
            patches = patchify(images[i], p)[order]
            segments = encode_segments(patches, list(ends), codec, quality)
            sizes = [len(x) for x in segments]
            out.segment_bytes[i] = sizes
            for c in range(s):
                out.header_bytes[i, c] = _progressive_header_bytes(ends[: c + 1], sizes[: c + 1])
            received.append(
                decode_segments(b"".join(segments), sizes, list(ends), codec, p, quality)
            )
        got = np.stack(received)
        sl = slice(rows.start, rows.stop)
        for j, end in enumerate(ends):
            idx = np.broadcast_to(order[:end], (len(rows), end))
            first = pipeline.run(got[:, :end], np.ascontiguousarray(idx))
            out.correct[sl, j] = first.probabilities.argmax(axis=1) == labels[sl]
            out.confidence[sl, j] = first.probabilities.max(axis=1)
            for k2 in k2_values:
                if (j, k2) not in out.correct2:
                    continue
                idx2 = OffloadPipeline.most_uncertain(first, k2)
                received2 = []
                for r, i in enumerate(rows):
                    patches2, size = round_trip_patches(images[i], idx2[r], codec, quality, p)
                    received2.append(patches2)
                    out.bytes2[(j, k2)][i] = size
                second = pipeline.run(np.stack(received2), idx2, first)
                out.correct2[(j, k2)][sl] = second.probabilities.argmax(axis=1) == labels[sl]
    return out


def progressive_options(
    outcome: ProgressiveOutcome, server_s: dict[tuple[int, int], tuple[float, float]]
) -> list[OffloadOption]:
    """Progressive options for every cap (one round, and round 2 after a whole cap, per tau)."""
    options: list[OffloadOption] = []
    ends = outcome.ends
    for c, cap in enumerate(ends):
        prefix = {
            "prefix_ends": ends[: c + 1],
            "prefix_accuracy": tuple(float(outcome.correct[:, j].mean()) for j in range(c + 1)),
            "prefix_bytes_mean": tuple(
                float(outcome.body_bytes(c, j).mean()) for j in range(c + 1)
            ),
            "prefix_bytes_p95": tuple(
                float(np.percentile(outcome.body_bytes(c, j), 95)) for j in range(c + 1)
            ),
            "prefix_server_s": tuple(server_s[(ends[j], 0)][0] for j in range(c + 1)),
        }
        acc1 = prefix["prefix_accuracy"][-1]
        common = {
            "sampling": "server",
            "codec": outcome.codec,
            "quality": outcome.quality,
            "k1": cap,
            "accuracy_round1": acc1,
            "bytes1_mean": prefix["prefix_bytes_mean"][-1],
            "bytes1_p95": prefix["prefix_bytes_p95"][-1],
            "num_images": len(outcome.correct),
            **prefix,
        }
        options.append(
            OffloadOption(accuracy=acc1, server1_s=server_s[(cap, 0)][0], **common)  # type: ignore[arg-type]
        )
        for (j, k2), correct2 in outcome.correct2.items():
            if j != c or (cap, k2) not in server_s:
                continue
            options += _two_round_options(
                common,
                k2,
                outcome.correct[:, c],
                outcome.confidence[:, c],
                correct2,
                outcome.bytes2[(j, k2)],
                server_s[(cap, k2)],
            )
    return options
