"""Accuracy cache and host profiler: real (tiny) runs, and resuming without repeating work."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesplit.cosearch import profiler as profiler_module
from edgesplit.cosearch.accuracy import AccuracyCache, TrainSettings, proxy_config
from edgesplit.cosearch.profiler import ProfileSettings, load_host_results, profile_configs
from edgesplit.cosearch.space import EncoderConfig
from edgesplit.cosearch.tasks import load_task

TINY = EncoderConfig(modality="image", num_layers=1, hidden_size=128, num_heads=2, ffn_size=256)


def test_proxy_config_keeps_depth_and_heads() -> None:
    config = EncoderConfig(
        modality="text",
        num_layers=3,
        hidden_size=768,
        num_heads=12,
        ffn_size=3072,
        ffn_per_layer=(3072, 1024, 2048),
    )
    proxy = proxy_config(config, 8)
    assert (proxy.num_layers, proxy.num_heads, proxy.hidden_size) == (3, 12, 96)
    assert proxy.layer_ffn() == (384, 128, 256)
    assert proxy_config(config, 1) == config


@pytest.mark.slow
def test_accuracy_is_learned_and_cached(tmp_path: Path) -> None:
    task = load_task("digits")
    settings = TrainSettings(epochs=2)
    cache = AccuracyCache(tmp_path / "acc.json", task, settings)
    record = cache.get(TINY)
    assert record.accuracy > 0.3  # 10 classes: chance is 0.1
    assert cache.num_trained == 1
    # eager attention is the same function: served from the cache.
    assert cache.get(TINY.model_copy(update={"attention": "eager"})).accuracy == record.accuracy
    reopened = AccuracyCache(tmp_path / "acc.json", task, settings)
    assert reopened.get(TINY).accuracy == record.accuracy
    assert reopened.num_trained == 0


def test_profile_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ProfileSettings(seq_len=16, repeats=1, warmup=0)
    configs = [
        EncoderConfig(modality="text", num_layers=1, hidden_size=32, num_heads=2, ffn_size=64),
        EncoderConfig(modality="image", num_layers=2, hidden_size=32, num_heads=4, ffn_size=32),
    ]
    path = tmp_path / "host.jsonl"
    seen: list[int] = []
    first = profile_configs(configs[:1], path, settings, on_progress=lambda i, n, m: seen.append(i))
    assert seen == [1]
    assert first[0].cpu_s > 0
    assert first[0].flops > 0
    assert first[0].peak_memory_bytes > 0
    assert "modelled" in first[0].energy_model

    calls: list[EncoderConfig] = []
    real = profiler_module.profile_config

    def counting(
        config: EncoderConfig, s: ProfileSettings | None = None
    ) -> profiler_module.HostMeasurement:
        calls.append(config)
        return real(config, s)

    monkeypatch.setattr(profiler_module, "profile_config", counting)
    both = profile_configs(configs, path, settings)
    assert [c.key() for c in calls] == [configs[1].key()]  # the first one was resumed
    assert [m.config_key for m in both] == [c.key() for c in configs]
    # A torn last line (killed mid-write) is skipped, not fatal.
    with path.open("a") as f:
        f.write('{"config_key": "trunc')
    assert len(load_host_results(path)) == 2


def test_text_tasks() -> None:
    from edgesplit.cosearch.tasks import wordnet_available
    from edgesplit.errors import ConfigError

    docs = load_task("docstrings")
    assert docs.modality == "text"
    assert docs.num_classes == 8
    assert docs.x_train.shape[1] == docs.seq_len
    assert docs.x_train.max() < docs.vocab_size
    with pytest.raises(ConfigError, match="unknown task"):
        load_task("imagenet")
    if not wordnet_available():
        pytest.skip("Debian wordnet-base not installed (scripts/install_data.sh)")
    wordnet = load_task("wordnet-pos")
    assert wordnet.num_classes == 4
    assert len(set(wordnet.y_train.tolist())) == 4
