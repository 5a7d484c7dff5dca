"""CLI friction (review F6, F9, F10, F11): inputs checked before long work, progress where a
step is long, a generation plan's table in the user's terms, a warned `cluster down`, examples
and option descriptions in the help of robust, cosearch, generate plan/profile and plan."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgesplit.cli.main import _register, app
from edgesplit.core.schema import write_json_file
from edgesplit.data import PROTRAN_DIR
from edgesplit.errors import ConfigError

_register()
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _flat(text: str) -> str:
    """Output with the table borders and line breaks folded into single spaces."""
    return " ".join(re.sub(r"[│┃║|]", " ", text).split())


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


# --- help pages (F6) ----------------------------------------------------------------------------

COMMANDS = [
    ("robust", "plan"),
    ("robust", "eval"),
    ("robust", "run"),
    ("robust", "finetune"),
    ("cosearch", "profile"),
    ("cosearch", "fit"),
    ("cosearch", "search"),
    ("cosearch", "refine"),
    ("generate", "plan"),
    ("generate", "profile"),
    ("plan", "show"),
    ("plan", "compare"),
    ("cluster", "up"),
    ("cluster", "status"),
    ("cluster", "down"),
    ("cluster", "survey"),
    ("offload", "serve"),
    ("offload", "send"),
    ("offload", "bench"),
]


def _option_rows(output: str) -> list[str]:
    """The option rows of a help page, continuation lines joined to their option."""
    rows: list[str] = []
    for line in output.split("Options")[1].splitlines():
        cells = line.strip("│ ╰╭─")
        if re.match(r"(\* +)?--[a-z]", cells):
            rows.append(cells)
        elif rows and cells:
            rows[-1] += " " + cells
    return rows


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_has_a_runnable_example_and_describes_every_option(command: tuple[str, ...]) -> None:
    output = _help(*command)
    assert re.search(rf"^ +edgesplit {' '.join(command)} ", output, flags=re.MULTILINE), output
    assert "…" not in output  # nothing cut at 100 columns
    for row in _option_rows(output):
        # "--opt  -o  <type>  Description [default: x]": something besides type and default
        described = re.sub(r"\[default: [^\]]*\]|\[required\]|<[^>]*>|\[x[^\]]*\]", "", row)
        words = [w for w in described.split() if not w.startswith("-") and w != "*"]
        assert words, f"{' '.join(command)}: no description for {row!r}"


@pytest.mark.parametrize(
    ("command", "leak"),
    [
        (("offload", "serve"), "serve_ray."),
        (("offload", "serve"), "benchmarks/"),
        (("generate", "run"), "issue 17"),
        (("cosearch", "fit"), "src/edgesplit/data"),
    ],
)
def test_help_has_no_internal_references(command: tuple[str, ...], leak: str) -> None:
    output = _help(*command)
    assert leak not in output
    assert "…" not in output


def test_robust_models_are_the_study_tasks() -> None:
    from edgesplit.cli.robust import MODELS
    from edgesplit.models.robust_tasks import task_names

    assert task_names() == MODELS


# --- inputs checked before the long work (F9, F11) ----------------------------------------------


def test_cosearch_search_missing_predictors_fails_before_the_bar(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["cosearch", "search", "-p", str(tmp_path / "nope.json"), "-o", str(tmp_path / "s.json")],
    )
    assert isinstance(result.exception, ConfigError), result.output
    assert "nope.json" in str(result.exception)
    assert "cosearch fit" in str(result.exception)
    assert "search" not in result.output  # no "tpe search 0/32" bar drawn first
    assert not (tmp_path / "s.json").exists()


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    from edgesplit.cosearch.costs import PredictorRecipe
    from edgesplit.cosearch.predictor import PredictorSettings

    path = tmp_path / "predictors.json"
    write_json_file(
        PredictorRecipe(
            protran_dir=None,
            host_results=None,
            settings=PredictorSettings(),
            devices=("rpi-cpu", "a100-gpu"),
            cross_validation={},
        ),
        path,
    )
    return path


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--task", "digitz"], "unknown task 'digitz'; did you mean 'digits'?"),
        (["--device", "rpi-cpuu"], "unknown device 'rpi-cpuu'; did you mean 'rpi-cpu'?"),
    ],
)
def test_cosearch_search_checks_task_and_devices_first(
    recipe: Path, tmp_path: Path, extra: list[str], needle: str
) -> None:
    result = runner.invoke(
        app, ["cosearch", "search", "-p", str(recipe), "-o", str(tmp_path / "s.json"), *extra]
    )
    assert isinstance(result.exception, ConfigError), result.output
    assert needle in str(result.exception)
    assert "search" not in result.output


@pytest.fixture
def robust_plan(tmp_path: Path) -> Path:
    """A robust plan over dev0..dev3 of a synthetic problem whose model no task builds: a
    command that got as far as loading the model would fail on that instead."""
    from edgesplit.planners.robust import RobustProblem, RobustUnit
    from edgesplit.planners.robust_objective import SurrogateCalibration

    units = tuple(
        RobustUnit(
            name=f"layer{layer}.{kind}.{slot}",
            layer_index=layer,
            kind=kind,
            param_bytes=1000,
            flops_per_token=2000,
            importance=1.0 + slot,
        )
        for layer in range(2)
        for kind in ("attn", "ffn")
        for slot in range(4)
    )
    problem = RobustProblem(
        model="no-such-study",
        units=units,
        shared_bytes=500,
        hidden_bytes=4096,
        tokens_per_request=16,
        calibration=SurrogateCalibration(
            metric_name="accuracy",
            higher_is_better=True,
            intact_metric=1.0,
            chance_metric=0.0,
            lost_importance=(10.0, 20.0, 30.0),
            measured_metric=(0.8, 0.5, 0.2),
        ),
    )
    write_json_file(problem, tmp_path / "problem.json")
    plan = tmp_path / "plan.json"
    problem_path = str(tmp_path / "problem.json")
    result = runner.invoke(
        app, ["robust", "plan", "--problem", problem_path, "--devices", "4", "-o", str(plan)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(plan.read_text())["devices"] == ["dev0", "dev1", "dev2", "dev3"]
    return plan


def test_robust_eval_rejects_an_unknown_kill_device_first(robust_plan: Path) -> None:
    result = runner.invoke(app, ["robust", "eval", str(robust_plan), "--kill", "dev1,devX"])
    assert isinstance(result.exception, ConfigError), result.output
    message = str(result.exception)
    assert "--kill devX: not a device of the plan" in message
    assert "dev0, dev1, dev2, dev3" in message


def test_robust_run_rejects_an_unknown_fault_device_first(robust_plan: Path) -> None:
    cluster = str(EXAMPLES / "cluster.toml")
    result = runner.invoke(
        app, ["robust", "run", "--plan", str(robust_plan), "-c", cluster, "--fault", "kill:pi1@1"]
    )
    assert isinstance(result.exception, ConfigError), result.output
    assert "--fault pi1: not a device of the plan" in str(result.exception)


@pytest.mark.parametrize("command", [["plan"], ["finetune"]])
def test_robust_unknown_model_suggests_the_closest(command: list[str]) -> None:
    started = time.perf_counter()
    result = runner.invoke(app, ["robust", *command, "-m", "vit-digitz"])
    assert isinstance(result.exception, ConfigError), result.output
    assert "did you mean 'vit-digits'?" in str(result.exception)
    assert time.perf_counter() - started < 20  # no importance measured, no model trained


# --- cosearch fit progress (F9) -----------------------------------------------------------------


@pytest.fixture
def small_protran(tmp_path: Path) -> Path:
    """The bundled Raspberry Pi CPU measurements, cut to 12 models (one device, 3 targets)."""
    name = "results_cpu_rpi_b1_r1.json"
    data = json.loads((PROTRAN_DIR / name).read_text())
    folder = tmp_path / "protran"
    folder.mkdir()
    (folder / name).write_text(json.dumps({k: data[k] for k in sorted(data)[:12]}))
    return folder


@pytest.fixture
def small_host_profile(tmp_path: Path) -> Path:
    """Eight tiny configs really profiled here (a 2-fold host fit trains on 4)."""
    from edgesplit.cosearch.profiler import ProfileSettings, profile_configs
    from edgesplit.cosearch.space import EncoderConfig

    path = tmp_path / "host.jsonl"
    configs = [
        EncoderConfig(modality="text", num_layers=n, hidden_size=h, num_heads=2, ffn_size=64)
        for n in (1, 2, 3, 4)
        for h in (32, 64)
    ]
    profile_configs(configs, path, ProfileSettings(seq_len=8, repeats=1, warmup=0))
    return path


def test_cosearch_fit_reports_progress(
    small_protran: Path, small_host_profile: Path, tmp_path: Path
) -> None:
    from edgesplit.api import cosearch as flow

    calls: list[tuple[int, int, str]] = []
    recipe = flow.cosearch_fit(
        tmp_path / "predictors.json",
        protran_dir=small_protran,
        host_results=small_host_profile,
        method="additive",
        num_folds=2,
        on_progress=lambda done, total, label: calls.append((done, total, label)),
    )
    assert calls == [
        (0, 4, "rpi-cpu latency_s"),
        (1, 4, "rpi-cpu energy_j"),
        (2, 4, "rpi-cpu peak_power_w"),
        (3, 4, "host-cpu latency_s"),
        (4, 4, ""),
    ]
    assert set(recipe.cross_validation) == {"rpi-cpu", "host-cpu"}


def test_cosearch_fit_draws_a_bar(
    small_protran: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no out/cosearch/host_profile.jsonl picked up from the repo
    options = ["--method", "additive", "--folds", "2", "-o", "predictors.json"]
    result = runner.invoke(app, ["cosearch", "fit", "--protran", str(small_protran), *options])
    assert result.exit_code == 0, result.output
    assert re.search(r"fitting\s.*3/3", result.output), result.output
    assert (tmp_path / "predictors.json").is_file()


def test_cosearch_fit_missing_protran_fails_before_the_bar(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["cosearch", "fit", "--protran", str(tmp_path), "-o", str(tmp_path / "p.json")]
    )
    assert isinstance(result.exception, ConfigError), result.output
    assert "fitting" not in result.output


# --- generate plan speaks in the user's terms (F9) ----------------------------------------------


def test_generate_plan_title_names_the_concurrency_and_objective(tmp_path: Path) -> None:
    from edgesplit.core.profile import ModelProfile, UnitProfile
    from edgesplit.planners.generation import GenerationProfile

    names = ["embed", *(f"block{i}.{h}" for i in range(3) for h in ("attn", "mlp")), "head"]

    def units(scale: float, tokens: int) -> ModelProfile:
        return ModelProfile(
            model="toy",
            batch_size=1,
            input_bytes=8.0 * tokens,
            units=tuple(
                UnitProfile(
                    name=n,
                    param_bytes=1e6,
                    output_bytes=8.0 if n == "head" else 3072.0 * tokens,
                    time_s={"fast": 0.01 * scale},
                )
                for n in names
            ),
        )

    profile = GenerationProfile(
        model="toy",
        decode=units(1.0, 1),
        prefill=units(4.0, 16),
        prompt_length=16,
        cache_length=64,
        kv_bytes_per_token=tuple(1000.0 if n.endswith(".attn") else 0.0 for n in names),
    )
    write_json_file(profile, tmp_path / "gen.json")
    (tmp_path / "c.toml").write_text(
        'source = "d0"\n'
        + "".join(f'[[devices]]\nname = "d{i}"\nkind = "fast"\nmemory_mb = 100\n' for i in (0, 1))
    )
    files = ["--profile", str(tmp_path / "gen.json"), "-c", str(tmp_path / "c.toml")]
    files += ["-o", str(tmp_path / "p.json")]
    result = runner.invoke(app, ["generate", "plan", *files, "--concurrency", "8"])
    assert result.exit_code == 0, result.output
    flat = _flat(result.output)
    assert "toy: 8 sequence(s) at once, objective tokens_per_s" in flat, result.output
    assert "(batch 1)" not in flat
    assert "objective throughput" not in flat


# --- cluster down warns (F10) -------------------------------------------------------------------


def test_cluster_down_warns_that_ray_stop_stops_every_ray() -> None:
    assert "EVERY Ray on this machine" in _flat(_help("cluster", "down"))
    result = runner.invoke(app, ["cluster", "down", "--dry-run"])  # stops nothing
    assert result.exit_code == 0, result.output
    assert "stops every Ray on this machine" in _flat(result.stderr)
    assert re.search(r"ray stop$", result.stdout.strip()), result.stdout
