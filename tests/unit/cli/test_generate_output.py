"""`generate plan` and `generate profile` output (review session 12, D3 and F12): the plan's
headline is what each sequence gets at the planned concurrency (the one-sequence figure in
brackets), a long solve says so, and `generate profile` prints the batch table it measured."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgesplit.api import generation as gen
from edgesplit.cli.main import _register, app
from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.core.schema import write_json_file
from edgesplit.errors import ConfigError
from edgesplit.planners.generation import DecodeBatchScaling, GenerationProfile

_register()
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
NAMES = ["embed", *(f"block{i}.{h}" for i in range(3) for h in ("attn", "mlp")), "head"]


def _flat(text: str) -> str:
    return " ".join(re.sub(r"[│┃║|]", " ", text).split())


def _units(kind: str, scale: float, tokens: int) -> ModelProfile:
    return ModelProfile(
        model="toy",
        batch_size=1,
        input_bytes=8.0 * tokens,
        units=tuple(
            UnitProfile(
                name=n,
                param_bytes=1e6,
                output_bytes=8.0 if n == "head" else 3072.0 * tokens,
                time_s={kind: 0.01 * scale},
            )
            for n in NAMES
        ),
    )


def _profile(kind: str = "fast", batches: tuple[int, ...] = (2, 4, 8)) -> GenerationProfile:
    """8 units of 10 ms; a step of b rows costs (1 + (b - 1) / 4) one-row steps."""
    return GenerationProfile(
        model="toy",
        decode=_units(kind, 1.0, 1),
        prefill=_units(kind, 4.0, 16),
        prompt_length=16,
        cache_length=64,
        kv_bytes_per_token=tuple(1000.0 if n.endswith(".attn") else 0.0 for n in NAMES),
        decode_batch=tuple(
            DecodeBatchScaling(batch=b, unit_scale=(1 + (b - 1) / 4,) * len(NAMES)) for b in batches
        ),
    )


@pytest.fixture
def plan_files(tmp_path: Path) -> list[str]:
    write_json_file(_profile(), tmp_path / "gen.json")
    (tmp_path / "c.toml").write_text(
        'source = "d0"\n'
        + "".join(f'[[devices]]\nname = "d{i}"\nkind = "fast"\nmemory_mb = 100\n' for i in (0, 1))
    )
    return ["--profile", str(tmp_path / "gen.json"), "-c", str(tmp_path / "c.toml")]


def test_plan_headline_is_each_sequences_time_at_the_concurrency(
    plan_files: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "p.json"
    result = runner.invoke(
        app, ["generate", "plan", *plan_files, "--concurrency", "8", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    g = json.loads(out.read_text())["generation"]
    each, alone = g["concurrent_time_per_token_s"] * 1e3, g["time_per_token_s"] * 1e3
    assert each > alone * 1.05  # the toy is a case where they differ
    flat = _flat(result.output)
    assert f"each sequence {each:.1f} ms/token ({alone:.1f} ms alone)" in flat, result.output
    assert f"{g['tokens_per_s']:.2f} tokens/s over 8 sequences" in flat
    assert "time per token" not in flat  # the old single-sequence headline
    # several exact solves (one per micro-batch size): said before they start
    assert "solving (MILP" in flat
    assert flat.index("solving (MILP") < flat.index("each sequence")


def test_plan_for_one_sequence_is_quiet_and_says_one_sequence(
    plan_files: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["generate", "plan", *plan_files, "-o", str(out)])
    assert result.exit_code == 0, result.output
    g = json.loads(out.read_text())["generation"]
    flat = _flat(result.output)
    assert f"{g['time_per_token_s'] * 1e3:.1f} ms/token" in flat
    assert "(one sequence)" in flat
    assert "solving" not in flat  # a quick solve stays quiet


def test_plan_progress_announces_a_long_solve_once() -> None:
    from edgesplit.cli.common import console
    from edgesplit.cli.generate import _SolveProgress
    from edgesplit.planners.progress import SolveProgress

    with console.capture() as captured:
        progress = _SolveProgress("tokens_per_s")
        progress.last = -100.0  # the first report prints its figure
        progress(SolveProgress(1.0, 0.02, 0.01))
        progress(SolveProgress(2.0, 0.025, 0.01))  # within EVERY_S: no line
    text = captured.get()
    assert text.count("solving (MILP") == 1, text
    assert "best so far 50.00 tokens/s" in text


def test_profile_prints_the_decode_time_vs_batch_table(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def measured(model: str, *, device_kind: str, batch_sizes: list[int], **_: object) -> object:
        assert batch_sizes == [2, 4, 8]
        return _profile(device_kind, tuple(batch_sizes))

    monkeypatch.setattr(gen, "measure_generation_profile", measured)
    out = tmp_path / "gen.json"
    argv = ["generate", "profile", "--model", "toy", "--batch-sizes", "2,4,8", "-o", str(out)]
    result = runner.invoke(app, [*argv, "--device-kind", "rpi4"])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    flat = _flat(result.output)
    assert "toy decode on rpi4 (KV cache 64 tokens)" in flat, result.output
    assert "batch step ms ms/token tokens/s x batch 1" in flat
    # 80 ms per one-row step; b rows: 80 x (1 + (b - 1) / 4) ms
    for batch, step in ((1, 80.0), (2, 100.0), (4, 140.0), (8, 220.0)):
        speed = f"{batch / step * 1e3:.1f} {80 * batch / step:.2f}"
        row = f"{batch} {step:.1f} {step / batch:.1f} {speed}"
        assert row in flat, (row, result.output)
    assert "prefill of 16 tokens 320.0 ms" in flat
    assert f"generation profile written to {out}" in flat


def test_profile_without_batch_sizes_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(gen, "measure_generation_profile", lambda model, **kw: _profile("host", ()))
    argv = [
        "generate",
        "profile",
        "--model",
        "toy",
        "--batch-sizes",
        "",
        "-o",
        str(tmp_path / "g.json"),
    ]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "batch sizes not measured" in _flat(result.output)


def test_profile_device_kind_help_keeps_the_kinds_table_name() -> None:
    result = runner.invoke(app, ["generate", "profile", "--help"])
    assert result.exit_code == 0, result.output
    assert "[[kinds]]" in _flat(result.output)
    assert "[]" not in result.output


def test_plan_time_limit_reaches_the_planner(plan_files: list[str], tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    argv = ["generate", "plan", *plan_files, "--concurrency", "4", "--time-limit", "5", "-o"]
    result = runner.invoke(app, [*argv, str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["plan"]["planner"]["options"]["time_limit_s"] == 5.0
    zero = runner.invoke(app, [*argv[:-3], "--time-limit", "0", "-o", str(out)])
    assert isinstance(zero.exception, ConfigError), zero.output
    assert "--time-limit must be positive" in str(zero.exception)


def test_small_times_keep_their_digits() -> None:
    from edgesplit.cli.generate import _ms

    assert [_ms(s) for s in (0.0801, 0.0013, 0.000137)] == ["80.1", "1.30", "0.137"]
