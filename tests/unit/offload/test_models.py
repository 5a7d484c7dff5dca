"""The MAE/ViT building blocks and the reconstruction pipeline (tiny random weights)."""

from __future__ import annotations

import numpy as np
import torch

from edgesplit.offload.models import sincos_2d
from edgesplit.offload.patches import patchify
from edgesplit.offload.pipeline import OffloadPipeline, tiny_pipeline


def test_position_tables_are_nonzero_and_distinct() -> None:
    table = sincos_2d(8, 16)
    assert table.shape == (64, 16)
    assert table.abs().sum() > 0
    assert torch.unique(table, dim=0).shape[0] == 64


def test_received_patches_are_pasted_back_exactly() -> None:
    pipeline = tiny_pipeline()
    image = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    indices = np.array([[3, 10, 40]])
    result = pipeline.run(patchify(image, 8)[indices[0]][None], indices)
    got = patchify(np.rint(result.image[0]).astype(np.uint8), 8)[indices[0]]
    assert np.abs(got.astype(int) - patchify(image, 8)[indices[0]].astype(int)).max() <= 1
    assert np.isneginf(result.uncertainty[0, indices[0]]).all()
    extra = OffloadPipeline.most_uncertain(result, 5)[0]
    assert not set(extra.tolist()) & {3, 10, 40}


def test_round2_reuse_vs_recompute() -> None:
    pipeline = tiny_pipeline()
    image = np.random.default_rng(1).integers(0, 256, (64, 64)).astype(np.uint8)
    patches = patchify(image, 8)
    first_idx, extra_idx = np.array([[0, 20, 41]]), np.array([[5, 60]])
    first = pipeline.run(patches[first_idx[0]][None], first_idx)
    reuse = pipeline.run(patches[extra_idx[0]][None], extra_idx, first, reuse="incremental")
    scratch = pipeline.run(patches[extra_idx[0]][None], extra_idx, first, reuse="recompute")
    joint = np.concatenate([first_idx, extra_idx], axis=1)
    fresh = pipeline.run(patches[joint[0]][None], joint)
    # recompute equals a fresh round 1 on all five patches
    assert np.allclose(scratch.probabilities, fresh.probabilities, atol=1e-5)
    # incremental keeps round-1 token states: the new tokens' states are computed from them
    assert reuse.state.latent.shape == fresh.state.latent.shape
    assert torch.equal(reuse.state.latent[:, :3], first.state.latent)
    assert not torch.allclose(reuse.state.latent[:, :3], fresh.state.latent[:, :3])
