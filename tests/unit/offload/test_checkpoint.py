"""The committed checkpoints and policy tables load and do what docs/offload.md says."""

from __future__ import annotations

import numpy as np
import pytest

from edgesplit.offload import DEFAULT_WEIGHTS_DIR, load_tables
from edgesplit.offload.data import fashion_mnist_available, load_fashion_mnist, upscale
from edgesplit.offload.patches import patchify

pytestmark = pytest.mark.skipif(
    not (DEFAULT_WEIGHTS_DIR / "mae.safetensors").exists(),
    reason="no offload checkpoints (run `make models`)",
)


@pytest.mark.skipif(not fashion_mnist_available(), reason="needs Debian dataset-fashion-mnist")
def test_trained_pipeline_is_accurate_on_full_and_sampled_images() -> None:
    from edgesplit.offload.server import load_pipeline

    pipeline, order = load_pipeline()
    images, labels = load_fashion_mnist("test")
    x, y = upscale(images[:200]), labels[:200]
    full = (pipeline.classify_images(x).argmax(1) == y).mean()
    assert full > 0.8
    idx = np.broadcast_to(np.array(order[:24]), (200, 24))
    patches = np.stack([patchify(im, 8)[i] for im, i in zip(x, idx, strict=True)])
    sampled = (pipeline.run(patches, idx).probabilities.argmax(1) == y).mean()
    assert sampled > 0.7  # 24 of 64 patches


def test_policy_tables_load() -> None:
    if not (DEFAULT_WEIGHTS_DIR / "tables.json").exists():
        pytest.skip("no tables.json (run `make models`)")
    tables = load_tables()
    assert tables.options
    assert any(o.k2 for o in tables.options)
    assert all(0.0 <= o.accuracy <= 1.0 for o in tables.options)
    assert all(o.num_images == tables.num_images for o in tables.options)
