"""File contracts: cluster TOML validation, versioned JSON, unknown keys, hashes, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesplit.core.cluster import Cluster, load_cluster
from edgesplit.core.plan import Plan
from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.core.schema import read_json_file, write_json_file
from edgesplit.errors import ConfigError, ProfileMissingError
from edgesplit.planners import make_plan

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def _profile() -> ModelProfile:
    units = tuple(
        UnitProfile(name=f"u{i}", param_bytes=1e6, output_bytes=1e5, time_s={"a": 0.1, "b": 0.2})
        for i in range(4)
    )
    return ModelProfile(model="m", batch_size=2, input_bytes=1e5, units=units)


def test_examples_load() -> None:
    cluster = load_cluster(EXAMPLES / "cluster.toml")
    assert cluster.source == "cam0"
    assert cluster.transfer_s(5e6, "cam0", "nuc0") == pytest.approx(0.005 + 5e6 * 8 / 40e6)
    assert cluster.transfer_s(5e6, "pi0", "pi0") == 0.0
    assert load_cluster(EXAMPLES / "pipeedge-8+8.toml").device("rcc7").memory_bytes == 8192e6


def test_unknown_key_names_key_and_suggests(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'source = "a"\n[[devices]]\nname = "a"\nkind = "k"\nmemroy_mb = 10\n',
    )
    with pytest.raises(ConfigError) as error:
        load_cluster(path)
    message = str(error.value)
    assert "device 'a' (1st [[devices]]): unknown key 'memroy_mb'" in message
    assert "did you mean 'memory_mb'" in message


def test_bad_values_are_named(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'source = "x"\n[[devices]]\nname = "a"\nkind = "k"\nmemory_mb = -5\n',
    )
    with pytest.raises(ConfigError) as error:
        load_cluster(path)
    assert "memory_mb" in str(error.value)
    assert "-5" in str(error.value)
    fixed = _write(tmp_path, 'source = "x"\n[[devices]]\nname = "a"\nkind = "k"\nmemory_mb = 5\n')
    with pytest.raises(ConfigError, match="source 'x' is not a device"):
        load_cluster(fixed)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_cluster(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_cluster(_write(tmp_path, "source = \n"))


def test_profile_round_trip_and_kind_checks(tmp_path: Path) -> None:
    profile = _profile()
    path = write_json_file(profile, tmp_path / "p.json")
    text = path.read_text()
    assert json.loads(text)["kind"] == "edgesplit.model_profile"
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert read_json_file(ModelProfile, path) == profile
    with pytest.raises(ConfigError, match="expected kind 'edgesplit.plan'"):
        read_json_file(Plan, path)
    data = json.loads(text)
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="schema_version 99"):
        read_json_file(ModelProfile, path)
    data["schema_version"] = 1
    data["units"][0]["tiem_s"] = {}
    path.write_text(json.dumps(data))
    expected = r"units\[0\]: unknown key .tiem_s.; did you mean .time_s."
    with pytest.raises(ConfigError, match=expected):
        read_json_file(ModelProfile, path)


def test_missing_kind_is_named(tmp_path: Path) -> None:
    cluster_path = _write(
        tmp_path,
        'source = "a"\n[[devices]]\nname = "a"\nkind = "jetson"\nmemory_mb = 100\n',
    )
    with pytest.raises(ProfileMissingError, match="'jetson'.*kinds present: \\['a', 'b'\\]"):
        make_plan(_profile(), load_cluster(cluster_path))


def _two_devices(tmp_path: Path) -> Cluster:
    return load_cluster(
        _write(
            tmp_path,
            'source = "a"\n[[devices]]\nname = "a"\nkind = "a"\nmemory_mb = 3\n'
            '[[devices]]\nname = "b"\nkind = "b"\nmemory_mb = 3\n',
        )
    )


def test_plan_round_trip_is_stable(tmp_path: Path) -> None:
    cluster = _two_devices(tmp_path)
    plan = make_plan(_profile(), cluster)
    first = write_json_file(plan, tmp_path / "plan.json").read_text()
    again = make_plan(_profile(), cluster)
    second = write_json_file(
        again.model_copy(update={"planner": plan.planner}), tmp_path / "plan2.json"
    ).read_text()
    assert first == second  # golden: identical on re-run (planning time aside)
    assert read_json_file(Plan, tmp_path / "plan.json") == plan


def test_plan_rejects_gaps_and_repeats(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from edgesplit.core.plan import StagePlacement

    plan = make_plan(_profile(), _two_devices(tmp_path))
    data = plan.model_dump()
    data["stages"] = [
        StagePlacement(device="a", start=0, end=2).model_dump(),
        StagePlacement(device="a", start=2, end=4).model_dump(),
    ]
    with pytest.raises(ValidationError, match="at most one stage"):
        Plan.model_validate(data)
    data["stages"][1] = StagePlacement(device="b", start=3, end=4).model_dump()
    with pytest.raises(ValidationError, match="contiguous"):
        Plan.model_validate(data)


def test_merge_profiles_unions_kinds() -> None:
    from edgesplit.core.profile import merge_profiles

    first = _profile()
    data = first.model_dump()
    for unit in data["units"]:
        unit["time_s"] = {"c": 0.3}
    merged = merge_profiles([first, ModelProfile.model_validate(data)])
    assert merged.device_kinds == ("a", "b", "c")
    data["units"] = data["units"][:2]
    with pytest.raises(ProfileMissingError, match="cannot merge"):
        merge_profiles([first, ModelProfile.model_validate(data)])


def test_write_to_a_directory_is_a_config_error_and_leaves_no_tmp(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ConfigError, match=r"out is a directory; give a file name, e\.g\. .*plan"):
        write_json_file(_profile(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_write_leaves_no_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, target: Path) -> Path:
        raise PermissionError(f"cannot replace {target}")

    monkeypatch.setattr(Path, "replace", refuse)
    with pytest.raises(PermissionError):
        write_json_file(_profile(), tmp_path / "p.json")
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_json_names_the_kind_expected(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text('source = "cam"\n')
    with pytest.raises(
        ConfigError, match="not valid JSON .* expected a JSON file of kind edgesplit.plan"
    ):
        read_json_file(Plan, path)
