"""A [[kinds]] entry named like a measured kind, and `relative_to = "host"` bound to a board.

A profile measured on a board (`profile --device-kind rpi4`) with examples/cluster.toml: "host"
bound to rpi4 and `[[kinds]] rpi4 = host x 6` replaced the measured Pi times by 6 x themselves,
silently (review session 12, B13).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgesplit.core.cluster import Cluster, load_cluster
from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "cluster.toml"


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


def test_a_board_profile_with_the_example_cluster_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        load_cluster(EXAMPLE).check_kinds(("rpi4",), "m")
    assert str(error.value).split("\n")[1:] == [
        "  kind 'rpi4' (2nd [[kinds]]) is measured in profile 'm' and derived in [[kinds]] "
        "(host x 6, where host = the profile's kind 'rpi4'); remove the [[kinds]] entry to use "
        "the measurement, or give the derived kind another name"
    ]


def test_a_derived_kind_may_not_replace_a_measured_one(tmp_path: Path) -> None:
    from edgesplit.api.pipeline import prepare_profile

    text = (
        'source = "a"\n[[devices]]\nname = "a"\nkind = "pi"\nmemory_mb = 1\n'
        '[[kinds]]\nname = "pi"\nrelative_to = "x86"\nslowdown = 2.0\n'
    )
    cluster = _cluster(tmp_path, text)
    with pytest.raises(ConfigError, match=r"kind 'pi' \(1st \[\[kinds\]\]\) is measured .*"
                       r"\(x86 x 2\); remove the \[\[kinds\]\] entry"):  # fmt: skip
        prepare_profile(_profile(("x86", "pi")), cluster)


def test_host_bound_to_a_board_is_noted_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgesplit.api import pipeline

    text = (
        'source = "a"\n[[devices]]\nname = "a"\nkind = "phone"\nmemory_mb = 1\n'
        '[[kinds]]\nname = "phone"\nrelative_to = "host"\nslowdown = 3.0\n'
        '[[kinds]]\nname = "cam"\nrelative_to = "phone"\nslowdown = 3.0\n'
    )
    cluster = _cluster(tmp_path, text)
    note = (
        "relative_to 'host' = the profile's kind 'jetson' (profile 'm'): [[kinds]] 'phone' are "
        "the jetson times x their slowdown"
    )
    assert cluster.check_kinds(("jetson",), "m") == (note,)
    pipeline._note_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="edgesplit.api.pipeline"):
        prepared = pipeline.prepare_profile(_profile(("jetson",)), cluster)
        pipeline.prepare_profile(_profile(("jetson",)), cluster)
    assert prepared.times_for("phone")[0] == pytest.approx(0.03)
    assert [r.getMessage() for r in caplog.records] == [note]


@pytest.mark.parametrize("kind", ["host", "host-amd-epyc-2c"])
def test_this_hosts_kind_needs_no_note(tmp_path: Path, kind: str) -> None:
    cluster = load_cluster(EXAMPLE)
    assert cluster.check_kinds((kind,), "m") == ()
