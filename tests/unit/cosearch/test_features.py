"""Derived features: params and FLOPs checked against the torch encoder and HF BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgesplit.cosearch.encoder import Encoder
from edgesplit.cosearch.features import (
    ADDITIVE_NAMES,
    FEATURE_NAMES,
    additive_terms,
    count_flops,
    count_params,
    featurize,
)
from edgesplit.cosearch.protran import parse_model_dict
from edgesplit.cosearch.space import EncoderConfig

CONFIGS = [
    EncoderConfig(modality="text", num_layers=2, hidden_size=64, num_heads=4, ffn_size=128),
    EncoderConfig(
        modality="image",
        num_layers=3,
        hidden_size=32,
        num_heads=2,
        ffn_size=64,
        heads_per_layer=(2, 1, 2),
        ffn_per_layer=(64, 16, 40),
        attention="eager",
    ),
]


def _encoder(config: EncoderConfig, tokens: int) -> Encoder:
    vocab = 50 if config.modality == "text" else 0
    patch = 0 if config.modality == "text" else 12
    return Encoder(config, num_classes=3, seq_len=tokens, vocab_size=vocab, patch_pixels=patch)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.describe())
def test_params_match_encoder(config: EncoderConfig) -> None:
    tokens = 9
    model = _encoder(config, tokens)
    arch = config.architecture(
        tokens + 1,
        vocab_size=50 if config.modality == "text" else 0,
        patch_pixels=0 if config.modality == "text" else 12,
    )
    total = sum(p.numel() for p in model.parameters())
    classifier = sum(p.numel() for p in model.classifier.parameters())
    assert count_params(arch) == total - classifier - model.cls.numel()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.describe())
def test_flops_match_torch_flop_counter(config: EncoderConfig) -> None:
    tokens = 9
    model = _encoder(config.model_copy(update={"attention": "eager"}), tokens).eval()
    if config.modality == "text":
        inputs = torch.randint(0, 50, (1, tokens))
    else:
        inputs = torch.randn(1, tokens, 12)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs)
    arch = config.architecture(tokens + 1, patch_pixels=0 if config.modality == "text" else 12)
    classifier = 2 * config.hidden_size * 3
    # The patch projection runs on the patches only (the CLS token is not projected).
    patch_correction = 0 if config.modality == "text" else 2 * 12 * config.hidden_size
    assert counter.get_total_flops() == pytest.approx(
        count_flops(arch) - patch_correction + classifier, rel=1e-9
    )


def test_homogeneous_encoder_matches_hf_bert_layer_params() -> None:
    from transformers import BertConfig, BertModel

    config = EncoderConfig(modality="text", num_layers=2, hidden_size=64, num_heads=4, ffn_size=96)
    bert = BertModel(
        BertConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
            vocab_size=50,
            max_position_embeddings=16,
        )
    )
    ours = _encoder(config, 9)
    assert sum(p.numel() for p in bert.encoder.parameters()) == sum(
        p.numel() for p in ours.layers.parameters()
    )


def test_feature_vector_and_additive_terms() -> None:
    arch = parse_model_dict(
        {
            "l": 2,
            "o": [["sa_sdp_64", "c_5_64"], ["l_dft_32", "sa_wma_32"]],
            "h": [128, 64],
            "f": [[256, 128], [512]],
        }
    )
    x = featurize(arch)
    assert x.shape == (len(FEATURE_NAMES),)
    assert np.all(np.isfinite(x))
    named = dict(zip(FEATURE_NAMES, x, strict=True))
    assert named["num_layers"] == 2
    assert named["hidden_changes"] == 1
    assert named["conv_count"] == 1
    assert named["sa_wma_count"] == 1
    terms = additive_terms([arch])
    assert terms.shape == (1, len(ADDITIVE_NAMES))
    assert np.all(terms >= 0)
    assert dict(zip(ADDITIVE_NAMES, terms[0], strict=True))["between_count"] == 1
