"""Profiling units on this host: what is recorded, and that the numbers mean what they say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgesplit.core.profile import ModelProfile
from edgesplit.errors import ConfigError
from edgesplit.models import build_model, model_spec_from_name, unit_names
from edgesplit.profile.host import host_device_kind, host_report
from edgesplit.profile.measure import profile_model

FLOAT = 4  # bytes


def test_gpt2_profile_records_every_unit_with_exact_bytes_and_flops() -> None:
    spec = model_spec_from_name("gpt2-tiny")
    calls: list[tuple[int, int, str]] = []
    profile = profile_model(
        spec, 2, repeats=2, warmup=1, device_kind="bench", progress=lambda *a: calls.append(a)
    )
    batch, tokens, hidden, vocab = 2, 16, 64, 256
    assert [u.name for u in profile.units] == unit_names(spec)
    assert profile.device_kinds == ("bench",)
    assert profile.notes == "seq_len=16"
    assert profile.input_bytes == batch * tokens * 8  # int64 token ids
    assert calls[0] == (0, len(profile.units), "embed")
    assert calls[-1] == (len(profile.units), len(profile.units), "done")
    for unit in profile.units:
        assert unit.time_s["bench"] > 0
        assert unit.cpu_time_s is not None
        assert unit.cpu_time_s["bench"] > 0
        assert unit.peak_memory_bytes is not None
        assert unit.peak_memory_bytes >= unit.param_bytes + unit.output_bytes
    hidden_bytes = batch * tokens * hidden * FLOAT + tokens * 8  # + (1, T) position ids
    by_name = {u.name: u for u in profile.units}
    assert by_name["block0.attn"].output_bytes == hidden_bytes
    assert by_name["block0.mlp"].output_bytes == hidden_bytes
    assert by_name["head"].output_bytes == batch * tokens * vocab * FLOAT
    # Attention: QKV and output projections plus QK^T and AV; MLP: two C x 4C matmuls.
    rows = batch * tokens
    attn = 2 * rows * hidden * 4 * hidden + 4 * batch * tokens * tokens * hidden
    assert by_name["block1.attn"].flops == attn
    assert by_name["block1.mlp"].flops == 2 * rows * hidden * 8 * hidden
    # Weights: every parameter once, plus the tied embedding again for the head.
    model = build_model(spec)
    weights = sum(p.numel() * FLOAT for p in model.parameters())
    tied = model.get_input_embeddings().weight.numel() * FLOAT
    assert sum(u.param_bytes for u in profile.units) == weights + tied


def test_padded_bert_sends_its_mask_and_vit_sends_only_hidden() -> None:
    bert = profile_model(model_spec_from_name("bert-tiny"), 3, repeats=1, warmup=0)
    block = next(u for u in bert.units if u.name == "block0.attn")
    assert block.output_bytes == 3 * 16 * 64 * FLOAT + 3 * 16 * 8  # hidden + 2-D int64 mask
    vit = profile_model(model_spec_from_name("vit-tiny"), 2, repeats=1, warmup=0)
    tokens = (32 // 8) ** 2 + 1
    assert vit.units[1].output_bytes == 2 * tokens * 64 * FLOAT
    assert vit.units[-1].output_bytes == 2 * 10 * FLOAT
    assert vit.input_bytes == 2 * 3 * 32 * 32 * FLOAT
    assert vit.device_kinds == (host_device_kind(),)


def test_longer_sequences_cost_more() -> None:
    spec = model_spec_from_name("llama-tiny")
    short = profile_model(spec, 1, repeats=1, warmup=0, seq_len=8)
    long = profile_model(spec, 1, repeats=1, warmup=0, seq_len=64)
    assert long.notes == "seq_len=64"
    for a, b in zip(short.units, long.units, strict=True):
        assert b.flops > a.flops or a.name == "embed"  # a table lookup has no flops
        assert b.output_bytes > a.output_bytes


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 1, "repeats": 0}, "repeats=0"),
        ({"batch_size": 1, "warmup": -1}, "warmup=-1"),
        ({"batch_size": 1, "num_threads": 0}, "threads=0"),
        ({"batch_size": 1, "seq_len": 0}, "seq_len"),
    ],
)
def test_bad_arguments(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        profile_model(model_spec_from_name("vit-tiny"), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cpu", "cores", "kind"),
    [
        ("AMD EPYC", 2, "host-amd-epyc-2c"),
        ("Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz", 8, "host-intel-core-i7-8650u-8c"),
        ("AMD Ryzen 7 5800H with Radeon Graphics", 16, "host-amd-ryzen-7-5800h-16c"),
        ("Cortex-A72", 4, "host-cortex-a72-4c"),
        ("", 1, "host-cpu-1c"),
    ],
)
def test_host_device_kind(cpu: str, cores: int, kind: str) -> None:
    assert host_device_kind(cpu, cores) == kind


def test_host_report() -> None:
    report = host_report()
    assert report["device_kind"] == host_device_kind()
    assert report["num_cpus"] >= 1
    assert report["torch"].startswith("2.")
    assert report["transformers"] == "5.23.0"


def test_cli_writes_a_profile(tmp_path: Path) -> None:
    output = tmp_path / "p.json"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "edgesplit.cli.main", "profile", "-m", "vit-tiny"),
            *("--batch-size", "2", "-o", str(output), "--repeats", "1", "--warmup", "0"),
            *("--device-kind", "laptop"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    assert "block3.mlp" in result.stdout
    data = json.loads(output.read_text())
    assert data["kind"] == "edgesplit.model_profile"
    profile = ModelProfile.model_validate(data)
    assert profile.device_kinds == ("laptop",)
    assert profile.batch_size == 2
    bad = subprocess.run(
        [sys.executable, "-m", "edgesplit.cli.main", "profile", "-m", "vit-nope", "-o", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "unknown model 'vit-nope'" in bad.stderr
