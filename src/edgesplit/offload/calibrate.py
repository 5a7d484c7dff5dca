"""Offline measurement of what each offloading setting achieves: accuracy, bytes, confidence.

Owns running the real pipeline (codec round trip included) over a labelled image set for one
setting (sampling, k1, codec/quality, round-2 sizes k2), the server-latency profile at batch 1,
and folding both into the policy's `OffloadTables`. Used by `make models` and the benchmark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edgesplit.offload.codec import CodecName, decode_patches, encode_patches, is_lossy
from edgesplit.offload.patches import SamplingName, patchify, sample_indices
from edgesplit.offload.pipeline import OffloadPipeline, ReuseMode
from edgesplit.offload.policy import OffloadOption, OffloadTables
from edgesplit.offload.protocol import PatchRequestHeader, encode_frame

__all__ = [
    "Outcome",
    "Setting",
    "build_tables",
    "measure_setting",
    "profile_server_s",
    "round_trip_patches",
]

TAUS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.01)  # 1.01: always take round 2


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


def build_tables(
    outcomes: list[Outcome], server_s: dict[tuple[int, int], tuple[float, float]]
) -> OffloadTables:
    """One-round and two-round options (every tau in TAUS) from measured outcomes.

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
        }
        options.append(
            OffloadOption(accuracy=acc1, server1_s=server_s[(s.k1, 0)][0], **common)  # type: ignore[arg-type]
        )
        for k2, correct2 in outcome.correct2.items():
            if s.k1 + k2 > 64 or (s.k1, k2) not in server_s:
                continue
            for tau in TAUS:
                second = outcome.confidence1 < tau
                correct = np.where(second, correct2, outcome.correct1)
                options.append(
                    OffloadOption(
                        k2=k2,
                        tau=tau,
                        accuracy=float(correct.mean()),
                        round2_fraction=float(second.mean()),
                        bytes2_mean=float(outcome.bytes2[k2].mean()),
                        bytes2_p95=float(np.percentile(outcome.bytes2[k2], 95)),
                        server1_s=server_s[(s.k1, k2)][0],
                        server2_s=server_s[(s.k1, k2)][1],
                        **common,  # type: ignore[arg-type]
                    )
                )
    n = len(outcomes[0].correct1) if outcomes else 0
    return OffloadTables(num_images=n, options=options)
