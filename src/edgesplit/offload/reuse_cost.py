"""What round-2 reuse saves on the server: CPU per image and the bytes the device resends.

Owns the measurement behind docs/offload.md "Round-2 reuse": round 2 run incrementally on the
cached round-1 state vs from scratch on all k1 + k2 patches (what a server without the session
must do), in thread CPU time so other processes' load does not leak in. torch via the pipeline.
"""

from __future__ import annotations

import time

import numpy as np

from edgesplit.offload.calibrate import REUSE_CODEC
from edgesplit.offload.codec import decode_patches, encode_patches
from edgesplit.offload.patches import patchify
from edgesplit.offload.pipeline import OffloadPipeline

__all__ = ["reuse_costs"]


def reuse_costs(
    pipeline: OffloadPipeline, images: np.ndarray, k1: int, k2: int, batch: int
) -> dict[str, float]:
    """Server CPU per image for round 2 with reuse vs from scratch, and the bytes each needs.

    Reuse: decode the k2 new patches, encode only them against the cached round-1 keys/values,
    decode + classify. From scratch (what a server without the session must do): the device
    resends all k1 + k2 patches; decode them all and run the whole pipeline. Thread CPU time
    (not wall time), so other processes' load on the shared machine does not leak in. Patches
    are random (seeded) among the 64 of a 64x64 image in 8x8 patches, coded as REUSE_CODEC.

    Args:
        pipeline: the server's pipeline (64x64 images, 8x8 patches).
        images: uint8 (n, 64, 64); whole batches of them are used.
        k1: patches in round 1; k2: patches round 2 adds.
        batch: images per pipeline call (the server uses 1; batching shows the encoder's share).

    Returns:
        CPU seconds per image each way, the fraction reuse saves, payload bytes each way.
    """
    rng = np.random.default_rng(0)
    cpu = {"reuse": 0.0, "scratch": 0.0}
    sent = {"reuse": 0, "scratch": 0}
    codec, quality = REUSE_CODEC

    for start in range(0, len(images) - batch + 1, batch):
        chunk = images[start : start + batch]
        idx = np.stack([rng.permutation(64) for _ in chunk])
        a, b, ab = idx[:, :k1], idx[:, k1 : k1 + k2], idx[:, : k1 + k2]

        def payloads(ix: np.ndarray, chunk: np.ndarray = chunk) -> list[bytes]:
            return [
                encode_patches(patchify(im, 8)[i], codec, quality)  # type: ignore[arg-type]
                for im, i in zip(chunk, ix, strict=True)
            ]

        def decode(ps: list[bytes], k: int) -> np.ndarray:
            return np.stack([decode_patches(x, codec, k, 8, quality) for x in ps])  # type: ignore[arg-type]

        pa, pb, pab = payloads(a), payloads(b), payloads(ab)
        first = pipeline.run(decode(pa, k1), a)
        t = time.thread_time()
        pipeline.run(decode(pb, k2), b, first, reuse="incremental")
        cpu["reuse"] += time.thread_time() - t
        t = time.thread_time()
        pipeline.run(decode(pab, k1 + k2), ab)
        cpu["scratch"] += time.thread_time() - t
        sent["reuse"] += sum(map(len, pb))
        sent["scratch"] += sum(map(len, pab))
    n = (len(images) // batch) * batch
    return {
        "batch": batch,
        "cpu_per_image_s_reuse": cpu["reuse"] / n,
        "cpu_per_image_s_scratch": cpu["scratch"] / n,
        "compute_saved_fraction": 1 - cpu["reuse"] / cpu["scratch"],
        "payload_bytes_reuse": sent["reuse"] / n,
        "payload_bytes_scratch": sent["scratch"] / n,
    }
