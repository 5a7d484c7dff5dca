"""Session-12 review fixes in `cosearch search/refine`, `quality` and `profile-merge`: bad input
is refused up front with what to do, and output says what happened (no model is trained or run
here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgesplit.cli.main import _register, app
from edgesplit.core.schema import write_json_file
from edgesplit.cosearch.accuracy import TrainSettings
from edgesplit.cosearch.refine import RefineResult, RefineSettings, RefineStep
from edgesplit.cosearch.search import Trial
from edgesplit.cosearch.space import EncoderConfig
from edgesplit.cosearch.workflow import choose_trial
from edgesplit.errors import ConfigError

_register()
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def _flat(text: str) -> str:
    return " ".join(re.sub(r"[│┃║|╭╮╰╯─]", " ", text).split())


# --- cosearch search (B6) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--memory-fraction", "2"),
        ("--memory-fraction", "0"),
        ("--max-latency-s", "0"),
        ("--max-peak-power-w", "-1"),
    ],
)
def test_cosearch_search_budgets_must_be_positive(tmp_path: Path, option: str, value: str) -> None:
    result = runner.invoke(
        app, ["cosearch", "search", option, value, "-o", str(tmp_path / "s.json")]
    )
    assert result.exit_code == 2, result.output
    assert option in _flat(result.output)


# --- cosearch refine (F9) -------------------------------------------------------------------------

CONFIG = EncoderConfig(modality="image", num_layers=2, hidden_size=768, num_heads=12, ffn_size=512)


def test_refine_without_a_search_file_says_how_to_write_it(tmp_path: Path) -> None:
    missing = tmp_path / "search.json"
    result = runner.invoke(app, ["cosearch", "refine", "-s", str(missing)])
    assert isinstance(result.exception, ConfigError), result.output
    assert f"`edgesplit cosearch search -o {missing}`" in str(result.exception)


def _trial(device: str) -> Trial:
    return Trial(
        number=0,
        config=CONFIG,
        device=device,
        accuracy=0.9,
        latency_s=0.01,
        energy_j=0.1,
        peak_power_w=5.0,
        memory_bytes=1e6,
        feasible=True,
    )


def test_refine_on_a_device_not_on_the_front_suggests_searching_it() -> None:
    with pytest.raises(ConfigError) as raised:
        choose_trial([_trial("a100-gpu")], device="rpi-cpu")
    assert "the front has a100-gpu" in str(raised.value)
    assert "`edgesplit cosearch search --device rpi-cpu`" in str(raised.value)
    with pytest.raises(ConfigError) as typo:  # a typo gets the did-you-mean, not a search
        choose_trial([_trial("a100-gpu")], device="a100-gpuu")
    assert "did you mean 'a100-gpu'?" in str(typo.value)
    assert "cosearch search" not in str(typo.value)


def test_config_label_shows_pruned_heads_and_ffn_when_the_layers_agree() -> None:
    pruned = CONFIG.model_copy(update={"heads_per_layer": (6, 6), "ffn_per_layer": (216, 216)})
    assert pruned.describe() == "image L2 H768 A6/12 F216 sdpa"
    mixed = CONFIG.model_copy(update={"heads_per_layer": (6, 9), "ffn_per_layer": (216, 216)})
    assert mixed.describe() == "image L2 H768 A12 F216 sdpa heads=[6, 9]"
    assert CONFIG.describe() == "image L2 H768 A12 F512 sdpa"


def _refine_result(stopped: str, last_kept: bool) -> RefineResult:
    def step(index: int, accepted: bool) -> RefineStep:
        return RefineStep(
            index=index,
            action="start" if index == 0 else "prune-ffn",
            config=CONFIG,
            accuracy=0.9,
            latency_s=0.01 / (index + 1),
            energy_j=0.1,
            accepted=accepted,
            reason="",
        )

    steps = (step(0, True), step(1, True), step(2, last_kept))
    return RefineResult(
        task="digits",
        settings=RefineSettings(device="rpi-cpu", num_steps=2),
        train_settings=TrainSettings(),
        start=steps[0],
        final=steps[1 + last_kept],
        steps=steps,
        stopped=stopped,
    )


@pytest.mark.parametrize(
    ("stopped", "last_kept", "said"),
    [("steps", True, True), ("steps", False, False), ("rejections", False, False)],
)
def test_refine_says_when_the_step_limit_cut_it_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped: str, last_kept: bool, said: bool
) -> None:
    from edgesplit.api import cosearch as flow

    result = _refine_result(stopped, last_kept)
    monkeypatch.setattr(flow, "cosearch_refine", lambda *a, **k: (result, tmp_path / "refine.md"))
    out = runner.invoke(app, ["cosearch", "refine", "--steps", "2"])
    assert out.exit_code == 0, out.output
    assert ("stopped at --steps 2 while the last step was still kept" in _flat(out.output)) is said


def test_report_page_says_when_the_step_limit_cut_it_short(tmp_path: Path) -> None:
    from edgesplit.cosearch.report import write_report
    from edgesplit.cosearch.search import Constraints, SearchResult

    search = SearchResult(
        method="random",
        seed=0,
        budget=1,
        task="digits",
        devices=("rpi-cpu",),
        constraints=Constraints(),
        trials=(_trial("rpi-cpu"),),
        pareto=(0,),
        reference=(1.0, 0.0, 0.0, 1.0),
        hypervolume=0.5,
        num_trainings=1,
    )
    write_json_file(search, tmp_path / "search.json")
    write_json_file(_refine_result("steps", True), tmp_path / "refine.json")
    page = write_report(tmp_path / "search.json", tmp_path / "refine.json", tmp_path / "r.md")
    assert "more steps (`--steps`) may prune further" in page.read_text()


# --- profile-merge (F8) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def board_profiles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgesplit import api

    folder = tmp_path_factory.mktemp("profiles")
    out = {}
    for name, kind in (("pi4", "rpi4"), ("jetson", "jetson-nano"), ("pi4b", "rpi4")):
        profile = api.profile("vit-tiny", 1, repeats=1, warmup=0, device_kind=kind)
        out[name] = api.save(profile, folder / f"{name}.json")
    return out


def test_profile_merge_of_distinct_kinds(board_profiles: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    result = runner.invoke(
        app,
        [
            "profile-merge",
            str(board_profiles["pi4"]),
            str(board_profiles["jetson"]),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "['jetson-nano', 'rpi4']" in result.output


def test_profile_merge_refuses_a_kind_in_two_files(
    board_profiles: dict[str, Path], tmp_path: Path
) -> None:
    pi4, pi4b = board_profiles["pi4"], board_profiles["pi4b"]
    result = runner.invoke(
        app, ["profile-merge", str(pi4), str(pi4b), "-o", str(tmp_path / "m.json")]
    )
    assert isinstance(result.exception, ConfigError), result.output
    message = str(result.exception)
    assert f"device kind 'rpi4' is in both {pi4} and {pi4b}" in message
    assert "--device-kind" in message
    assert not (tmp_path / "m.json").exists()
    twice = runner.invoke(
        app, ["profile-merge", str(pi4), str(pi4), "-o", str(tmp_path / "m.json")]
    )
    assert isinstance(twice.exception, ConfigError)
    assert "is given twice" in str(twice.exception)


def test_profile_merge_points_pipeedge_profiles_to_plan(
    board_profiles: dict[str, Path], tmp_path: Path
) -> None:
    name = "pipeedge:google/vit-large-patch16-224"
    result = runner.invoke(
        app, ["profile-merge", name, str(board_profiles["pi4"]), "-o", str(tmp_path / "m.json")]
    )
    assert isinstance(result.exception, ConfigError), result.output
    assert f"`edgesplit plan -p {name} ...`" in str(result.exception)
