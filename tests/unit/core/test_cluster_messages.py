"""cluster.toml errors in the file's own words (ux-review F4): one problem per mistake, entries
named as the user wrote them, no pydantic prefixes or dict dumps; kinds checked against a
profile with the nearest known kind; a missing file names the cwd."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesplit.core.cluster import Cluster, _ordinal, load_cluster
from edgesplit.core.cost import CostModel
from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.errors import ConfigError, ProfileMissingError

EXAMPLE = (Path(__file__).resolve().parents[3] / "examples" / "cluster.toml").read_text()

# pydantic's own noise that must never reach a cluster.toml message.
NOISE = ("Field required", "<root>", "Value error", "(got {", "(got [", "devices.", "problem(s)")


def _error(tmp_path: Path, text: str) -> list[str]:
    """The message's lines, after checking the header counts them and no noise is left."""
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_cluster(path)
    message = str(error.value)
    for noise in NOISE:
        assert noise not in message, message
    header, *lines = message.split("\n")
    count = len(lines)
    assert header == f"{path}: {count} problem{'s' if count != 1 else ''}", message
    return [line.removeprefix("  ") for line in lines]


def _example(old: str, new: str, count: int = 1) -> str:
    assert EXAMPLE.count(old) >= count, old
    return EXAMPLE.replace(old, new, count)


def test_a_misspelt_key_is_one_problem_per_typo(tmp_path: Path) -> None:
    text = EXAMPLE.replace('kind = "rpi4"\nmemory_mb', 'kind = "rpi4"\nmemroy_mb')
    assert _error(tmp_path, text) == [
        "device 'pi0' (2nd [[devices]]): unknown key 'memroy_mb'; did you mean 'memory_mb'?",
        "device 'pi1' (3rd [[devices]]): unknown key 'memroy_mb'; did you mean 'memory_mb'?",
    ]


def test_a_missing_key_without_a_misspelling_is_still_reported(tmp_path: Path) -> None:
    # The suggestion explains only the key it names: a second missing key stays a problem.
    text = _example('name = "pi0"\nkind = "rpi4"\nmemory_mb', 'name = "pi0"\nmemroy_mb')
    assert _error(tmp_path, text) == [
        "device 'pi0' (2nd [[devices]]): missing key 'kind'",
        "device 'pi0' (2nd [[devices]]): unknown key 'memroy_mb'; did you mean 'memory_mb'?",
    ]
    nameless = _example('name = "jetson0"\n', "")
    assert _error(tmp_path, nameless) == ["4th [[devices]]: missing key 'name'"]


def test_an_unknown_key_far_from_any_lists_the_valid_keys(tmp_path: Path) -> None:
    assert _error(tmp_path, _example("slowdown = 6.0", "slowdown = 6.0\ncolour = 1")) == [
        "kind 'rpi4' (2nd [[kinds]]): unknown key 'colour' (valid keys: name, relative_to, "
        "slowdown)"
    ]


def test_kinds_links_and_defaults_entries_are_named(tmp_path: Path) -> None:
    text = _example('relative_to = "host"\nslowdown = 6.0', 'relativ_to = "host"\nslowdown = 6.0')
    assert _error(tmp_path, text) == [
        "kind 'rpi4' (2nd [[kinds]]): unknown key 'relativ_to'; did you mean 'relative_to'?"
    ]
    text = _example("bandwidth_mbps = 50", "bandwidth_mbps = -50")
    assert _error(tmp_path, text) == [
        "link phone0-nuc0 (3rd [[links]]): bandwidth_mbps should be greater than 0 (got -50)"
    ]
    assert _error(tmp_path, _example("latency_ms = 2.0", "latncy_ms = 2.0")) == [
        "[defaults]: unknown key 'latncy_ms'; did you mean 'latency_ms'?"
    ]
    assert _error(tmp_path, _example("source =", "sorce =")) == [
        "unknown key 'sorce'; did you mean 'source'?"
    ]


def test_field_errors_show_the_value_typed(tmp_path: Path) -> None:
    assert _error(tmp_path, _example("memory_mb = 4096", 'memory_mb = "4GB"')) == [
        "device 'jetson0' (4th [[devices]]): memory_mb should be a valid number, unable to "
        "parse string as a number (got '4GB')"
    ]
    text = _example("failure_probability = 0.1", "failure_probability = 1.5")
    assert _error(tmp_path, text) == [
        "device 'phone0' (6th [[devices]]): failure_probability should be less than 1 (got 1.5)"
    ]


def test_whole_file_errors_lose_the_prefix_and_the_dump(tmp_path: Path) -> None:
    assert _error(tmp_path, _example('source = "cam0"', 'source = "cam1"')) == [
        "source 'cam1' is not a device; did you mean 'cam0'? The devices are 'cam0', 'pi0', "
        "'pi1', 'jetson0', 'nuc0', 'phone0'; add it under [[devices]] or set source to one of "
        "them"
    ]
    assert _error(tmp_path, _example('name = "pi1"', 'name = "pi0"')) == [
        "device name 'pi0' is used by the 2nd and 3rd [[devices]]; names must be unique"
    ]


def test_every_whole_file_problem_at_once(tmp_path: Path) -> None:
    text = _example('b = "jetson0"', 'b = "jetson9"')
    text = text.replace('b = "nuc0"\nbandwidth_mbps = 40', 'b = "cam0"\nbandwidth_mbps = 40')
    assert _error(tmp_path, text.replace('source = "cam0"', 'source = "zz"')) == [
        "source 'zz' is not a device. The devices are 'cam0', 'pi0', 'pi1', 'jetson0', 'nuc0', "
        "'phone0'; add it under [[devices]] or set source to one of them",
        "link cam0-cam0 (1st [[links]]) joins a device to itself; a and b must differ",
        "link cam0-jetson9 (2nd [[links]]) names unknown device 'jetson9'; did you mean "
        "'jetson0'? The devices are 'cam0', 'pi0', 'pi1', 'jetson0', 'nuc0', 'phone0'",
    ]


def test_table_shape_mistakes(tmp_path: Path) -> None:
    single = 'source = "a"\n[devices]\nname = "a"\nkind = "k"\nmemory_mb = 1\n'
    assert _error(tmp_path, single) == [
        "[devices] is a single table; write each entry as its own [[devices]] table"
    ]
    assert _error(tmp_path, _example("[defaults]", "[[defaults]]")) == [
        "[[defaults]] is a list of tables; write one [defaults] table"
    ]
    assert _error(tmp_path, 'source = "a"\n') == ["no [[devices]] table; add at least one"]
    assert _error(tmp_path, 'source = "a"\ndevices = []\n') == [
        "no [[devices]] table; add at least one"
    ]
    # A bad only device: pydantic also calls the tuple too short; that is not a second problem.
    one = 'source = "a"\n[[devices]]\nname = "a"\nkind = "k"\nmemroy_mb = 1\n'
    assert _error(tmp_path, one) == [
        "device 'a' (1st [[devices]]): unknown key 'memroy_mb'; did you mean 'memory_mb'?"
    ]


def test_missing_file_names_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        load_cluster("nope.toml")
    assert str(error.value) == (
        f"cluster file not found: nope.toml; check the path (cwd is {tmp_path}) or start from "
        "examples/cluster.toml"
    )
    with pytest.raises(ConfigError, match="is a directory; give the cluster file, e.g. "):
        load_cluster(tmp_path)


def test_ordinals() -> None:
    words = [_ordinal(i - 1) for i in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111, 112)]
    assert words == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st",
        "111th", "112th",
    ]  # fmt: skip


# ---- device kinds against a profile (Cluster.check_kinds) -------------------------------------


def _profile(kinds: tuple[str, ...]) -> ModelProfile:
    units = tuple(
        UnitProfile(
            name=f"u{i}", param_bytes=1e6, output_bytes=1e3, time_s=dict.fromkeys(kinds, 0.01)
        )
        for i in range(3)
    )
    return ModelProfile(model="m", batch_size=1, input_bytes=1e3, units=units)


def _cluster(tmp_path: Path, text: str) -> Cluster:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return load_cluster(path)


def _kind_error(cluster: Cluster, kinds: tuple[str, ...]) -> list[str]:
    with pytest.raises(ProfileMissingError) as error:
        cluster.check_kinds(kinds, "m")
    header, *lines = str(error.value).split("\n")
    count = len(lines)
    assert header == f"cluster kinds vs profile 'm': {count} problem{'s' if count != 1 else ''}"
    return [line.removeprefix("  ") for line in lines]


def test_an_unknown_device_kind_suggests_the_nearest(tmp_path: Path) -> None:
    cluster = _cluster(
        tmp_path, _example('name = "pi0"\nkind = "rpi4"', 'name = "pi0"\nkind = "rpi5"')
    )
    assert _kind_error(cluster, ("x86",)) == [
        "device 'pi0' (2nd [[devices]]): kind 'rpi5' has no times in profile 'm'; did you mean "
        "'rpi4'? Known kinds: measured 'x86'; from [[kinds]]: 'camera-soc', 'rpi4', "
        "'jetson-nano', 'mini-pc', 'phone'. Profile the model on that kind (edgesplit profile) "
        "or add it under [[kinds]] with relative_to and slowdown"
    ]
    plain = _cluster(tmp_path, 'source = "a"\n[[devices]]\nname = "a"\nkind = "x"\nmemory_mb = 1\n'
                     '[[devices]]\nname = "b"\nkind = "x"\nmemory_mb = 1\n')  # fmt: skip
    assert _kind_error(plain, ("arm", "x86-64")) == [
        "devices 'a', 'b' (1st and 2nd [[devices]]): kind 'x' has no times in profile 'm'. "
        "Known kinds: measured 'arm', 'x86-64'. Profile the model on that kind (edgesplit "
        "profile) or add it under [[kinds]] with relative_to and slowdown"
    ]


def test_relative_to_errors_say_where(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, EXAMPLE)
    assert _kind_error(cluster, ("Minnowboard", "RCC")) == [
        "kinds 'camera-soc', 'rpi4', 'jetson-nano', 'mini-pc', 'phone' (1st to 5th [[kinds]]): "
        "relative_to = 'host' is ambiguous: profile 'm' was measured on 2 kinds 'Minnowboard', "
        "'RCC'; set relative_to to one of them"
    ]
    rpi4 = 'relative_to = "host"\nslowdown = 6.0'
    typo = _cluster(tmp_path, _example(rpi4, rpi4.replace("host", "hots")))
    assert _kind_error(typo, ("x86",)) == [
        "kind 'rpi4' (2nd [[kinds]]): relative_to = 'hots' is not a kind of profile 'm'; did "
        "you mean 'host'? Known kinds: 'x86', 'camera-soc', 'host'"
    ]
    later = _cluster(tmp_path, _example(rpi4, rpi4.replace("host", "phone")))
    assert _kind_error(later, ("x86",)) == [
        "kind 'rpi4' (2nd [[kinds]]): relative_to = 'phone' is not a kind of profile 'm'; "
        "'phone' is defined further down: move it above"
    ]


@pytest.mark.parametrize(
    ("kinds", "table", "device_kind"),
    [
        (("x86",), [("pi", "host"), ("phone", "host")], "phone"),  # host = the only kind
        (("host", "arm"), [("pi", "host"), ("phone", "host")], "pi"),  # a kind named host
        (("x86", "arm"), [("pi", "host")], "pi"),  # ambiguous host
        (("x86", "arm"), [("pi", "arm"), ("pi2", "pi")], "pi2"),  # chained
        (("x86",), [("pi2", "pi"), ("pi", "host")], "pi"),  # chained out of order
        (("x86",), [("pi", "host")], "rpi"),  # unknown device kind
        (("x86",), [], "x86"),  # measured, no table
    ],
)
def test_check_kinds_agrees_with_prepare_profile(
    tmp_path: Path, kinds: tuple[str, ...], table: list[tuple[str, str]], device_kind: str
) -> None:
    """check_kinds passes exactly when deriving the kinds and costing every device works."""
    from edgesplit.api.pipeline import prepare_profile

    text = 'source = "a"\n[[devices]]\nname = "a"\nkind = "' + device_kind + '"\nmemory_mb = 1\n'
    for name, relative_to in table:
        text += f'[[kinds]]\nname = "{name}"\nrelative_to = "{relative_to}"\nslowdown = 2.0\n'
    cluster = _cluster(tmp_path, text)
    profile = _profile(kinds)
    try:
        CostModel(prepare_profile(profile, cluster), cluster)
        works = True
    except ProfileMissingError:
        works = False
    try:
        cluster.check_kinds(profile.device_kinds, profile.model)
        passes = True
    except ProfileMissingError:
        passes = False
    assert passes == works
