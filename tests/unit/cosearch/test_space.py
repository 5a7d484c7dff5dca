from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from edgesplit.cosearch.space import EncoderConfig, SearchSpace


def test_samples_are_valid_and_seeded() -> None:
    space = SearchSpace()
    a = [space.sample(np.random.default_rng(3)) for _ in range(1)]
    b = [space.sample(np.random.default_rng(3)) for _ in range(1)]
    assert a == b
    rng = np.random.default_rng(0)
    for _ in range(200):
        c = space.sample(rng)
        assert c.hidden_size % c.num_heads == 0
        assert space.contains(c)


def test_sample_unique_and_exclude() -> None:
    space = SearchSpace()
    first = space.sample_unique(np.random.default_rng(0), 30)
    assert len({c.key() for c in first}) == 30
    second = space.sample_unique(np.random.default_rng(0), 10, exclude=[c.key() for c in first])
    assert not {c.key() for c in second} & {c.key() for c in first}


def test_base_shaped_is_bert_base() -> None:
    base = SearchSpace().base_shaped()
    assert (base.num_layers, base.hidden_size, base.num_heads, base.ffn_size) == (12, 768, 12, 3072)
    small = SearchSpace(hidden_size=(64, 128), num_layers=(2, 4), ffn_size=(128, 512)).base_shaped()
    assert (small.num_layers, small.hidden_size, small.ffn_size) == (4, 128, 512)


def test_heterogeneous_sampling_and_normalized_key() -> None:
    space = SearchSpace(heterogeneous=True)
    configs = space.sample_unique(np.random.default_rng(1), 20)
    assert any(c.heterogeneous for c in configs)
    for c in configs:
        assert max(c.layer_heads()) <= c.num_heads
    uniform = EncoderConfig(
        modality="text",
        num_layers=2,
        hidden_size=128,
        num_heads=4,
        ffn_size=256,
        heads_per_layer=(4, 4),
        ffn_per_layer=(256, 256),
    )
    plain = EncoderConfig(modality="text", num_layers=2, hidden_size=128, num_heads=4, ffn_size=256)
    assert uniform.key() == plain.key()


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValidationError, match="divisible"):
        EncoderConfig(modality="text", num_layers=2, hidden_size=128, num_heads=12, ffn_size=256)
    with pytest.raises(ValidationError, match="entries"):
        EncoderConfig(
            modality="text",
            num_layers=2,
            hidden_size=128,
            num_heads=4,
            ffn_size=256,
            heads_per_layer=(4,),
        )
