"""Structural edits are exact: pruning equals gating units to zero, growing preserves outputs."""

from __future__ import annotations

import pytest
import torch

from edgesplit.cosearch.encoder import Encoder
from edgesplit.cosearch.space import EncoderConfig


@pytest.fixture(params=[False, True], ids=["post-ln", "pre-ln"])
def model(request: pytest.FixtureRequest) -> Encoder:
    torch.manual_seed(0)
    config = EncoderConfig(modality="image", num_layers=2, hidden_size=16, num_heads=4, ffn_size=12)
    return Encoder(
        config, num_classes=3, seq_len=5, patch_pixels=6, norm_first=request.param
    ).eval()


@pytest.fixture
def inputs() -> torch.Tensor:
    return torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_prune_heads_equals_zero_gates(model: Encoder, inputs: torch.Tensor) -> None:
    gates = [torch.ones(4), torch.tensor([1.0, 0.0, 1.0, 0.0])]
    expected = model(inputs, head_gates=gates)
    model.prune_heads(1, [0, 2])
    assert model.config().layer_heads() == (4, 2)
    torch.testing.assert_close(model(inputs), expected)


@torch.no_grad()
def test_prune_ffn_equals_zero_gates(model: Encoder, inputs: torch.Tensor) -> None:
    keep = [0, 3, 4, 7, 11]
    gate = torch.zeros(12)
    gate[keep] = 1.0
    expected = model(inputs, ffn_gates=[gate, torch.ones(12)])
    model.prune_ffn(0, keep)
    assert model.config().layer_ffn() == (5, 12)
    torch.testing.assert_close(model(inputs), expected)


@torch.no_grad()
def test_growing_preserves_function(model: Encoder, inputs: torch.Tensor) -> None:
    before = model(inputs)
    generator = torch.Generator().manual_seed(2)
    model.grow_ffn(0, 5, generator)
    model.grow_heads(1, 2, generator)
    assert model.config().layer_ffn() == (17, 12)
    assert model.config().layer_heads() == (4, 6)
    torch.testing.assert_close(model(inputs), before)


@torch.no_grad()
def test_eager_and_sdpa_agree(model: Encoder, inputs: torch.Tensor) -> None:
    expected = model(inputs)
    for layer in model.blocks():
        layer.attention = "eager"
    torch.testing.assert_close(model(inputs), expected, rtol=1e-5, atol=1e-5)


def test_pre_ln_differs_only_by_a_final_norm() -> None:
    config = EncoderConfig(modality="image", num_layers=2, hidden_size=16, num_heads=4, ffn_size=12)
    torch.manual_seed(0)
    post = Encoder(config, num_classes=3, seq_len=5, patch_pixels=6).eval()
    torch.manual_seed(0)
    pre = Encoder(config, num_classes=3, seq_len=5, patch_pixels=6, norm_first=True).eval()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(pre) == count(post) + 2 * 16
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert not torch.allclose(pre(x), post(x))  # the norm placement changes the function
