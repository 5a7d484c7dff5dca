"""Profiling in rounds: each round in its own random order, medians over rounds, drift per round.

The timing itself is replaced by a fake that makes round 1 slower by a known factor, so the
tests check the bookkeeping (order, resume, aggregation, drift) exactly; one real tiny run checks
that the real profiler goes through the same path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgesplit.cosearch import profiler as profiler_module
from edgesplit.cosearch.profiler import (
    HostMeasurement,
    ProfileSettings,
    drift_by_round,
    load_host_results,
    load_host_rounds,
    profile_configs,
)
from edgesplit.cosearch.space import EncoderConfig

CONFIGS = [
    EncoderConfig(modality="text", num_layers=n, hidden_size=32, num_heads=2, ffn_size=64)
    for n in (1, 2, 3, 4)
]
SETTINGS = ProfileSettings(seq_len=16, repeats=1, warmup=0, rounds=3)
SLOW_ROUND, SLOWDOWN = 1, 1.25


@pytest.fixture
def fake_timer(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """profile_config -> cpu_s = num_layers ms, x SLOWDOWN on the calls of SLOW_ROUND."""
    calls: list[str] = []
    real = profiler_module.profile_config
    template = real(CONFIGS[0], ProfileSettings(seq_len=16, repeats=1, warmup=0))

    def fake(config: EncoderConfig, settings: ProfileSettings | None = None) -> HostMeasurement:
        assert settings is not None
        round_index = len(calls) // len(CONFIGS)  # calls come round by round
        calls.append(config.key())
        cpu = config.num_layers * 1e-3 * (SLOWDOWN if round_index == SLOW_ROUND else 1.0)
        return template.model_copy(
            update={
                "config_key": config.key(),
                "config": config,
                "settings": settings,
                "cpu_s": cpu,
                "wall_s": cpu,
                "peak_memory_bytes": 1000 * config.num_layers + round_index,
            }
        )

    monkeypatch.setattr(profiler_module, "profile_config", fake)
    return calls


def test_rounds_visit_configs_in_a_fresh_seeded_order_and_keep_medians(
    tmp_path: Path, fake_timer: list[str]
) -> None:
    path = tmp_path / "host.jsonl"
    progress: list[tuple[int, int]] = []
    measured = profile_configs(
        CONFIGS, path, SETTINGS, on_progress=lambda i, n, m: progress.append((i, n))
    )
    keys = [c.key() for c in CONFIGS]
    expected = [
        keys[int(i)] for r in range(3) for i in np.random.default_rng(r).permutation(len(keys))
    ]
    assert fake_timer == expected
    assert progress == [(i, 12) for i in range(1, 13)]
    lines = load_host_rounds(path)
    assert sorted((m.config_key, m.round) for m in lines) == sorted(
        (k, r) for k in keys for r in range(3)
    )
    # One measurement per config, in the caller's order: the median over rounds (the slow
    # round is the maximum, so the median is the undisturbed time), the largest peak memory.
    assert [m.config_key for m in measured] == keys
    for config, m in zip(CONFIGS, measured, strict=True):
        assert m.rounds == 3
        assert m.cpu_s == pytest.approx(config.num_layers * 1e-3)
        assert m.round_spread == pytest.approx(SLOWDOWN - 1.0)
        assert m.peak_memory_bytes == 1000 * config.num_layers + 2
        assert m.energy_j_modelled == pytest.approx(m.cpu_s * SETTINGS.core_power_w)
    assert [m.config_key for m in load_host_results(path)] == sorted(
        keys, key=lambda k: expected.index(k)
    )
    assert drift_by_round(lines) == pytest.approx([1.0, SLOWDOWN, 1.0])


def test_rounds_resume_only_the_missing_config_rounds(
    tmp_path: Path, fake_timer: list[str]
) -> None:
    path = tmp_path / "host.jsonl"
    profile_configs(CONFIGS, path, SETTINGS)
    text = path.read_text().splitlines(keepends=True)
    path.write_text("".join(text[:5]))  # killed during round 1
    fake_timer.clear()
    fake_timer.extend(["done"] * 5)  # keeps the fake's round bookkeeping aligned
    measured = profile_configs(CONFIGS, path, SETTINGS)
    assert len(fake_timer) == 12  # 7 config-rounds measured again, none twice
    assert len(load_host_rounds(path)) == 12
    assert all(m.rounds == 3 for m in measured)
    fake_timer.clear()
    profile_configs(CONFIGS, path, SETTINGS)
    assert fake_timer == []  # everything resumed


def test_single_round_files_load_as_before_and_show_no_drift(tmp_path: Path) -> None:
    one = ProfileSettings(seq_len=16, repeats=1, warmup=0)
    path = tmp_path / "host.jsonl"
    measured = profile_configs(CONFIGS[:2], path, one)  # the real profiler
    assert [m.rounds for m in measured] == [1, 1]
    assert measured[0].round_spread == 0.0
    assert measured[0].cpu_s > 0
    assert load_host_results(path) == measured
    assert drift_by_round(load_host_rounds(path)) == []
    # A line written before rounds existed (no round fields, settings without rounds) loads.
    line = path.read_text().splitlines()[0]
    old = line.replace(', "round": 0', "").replace(', "round_spread": 0.0', "")
    old = old.replace(', "rounds": 1', "")
    assert '"round' not in old
    (tmp_path / "old.jsonl").write_text(old + "\n")
    assert load_host_results(tmp_path / "old.jsonl") == measured[:1]
