"""Derived kinds ([[kinds]] relative_to = "host") on a profile whose measured kind is "host".

`generate profile` names its kind "host"; the second derived kind failed with "has 2 kinds"
because "host" was read as "the only kind" even though a kind of that name exists.
"""

from __future__ import annotations

import pytest

from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.errors import ProfileMissingError


def _profile(kinds: tuple[str, ...]) -> ModelProfile:
    units = tuple(
        UnitProfile(
            name=f"u{i}", param_bytes=1e6, output_bytes=1e3, time_s=dict.fromkeys(kinds, 0.01)
        )
        for i in range(3)
    )
    return ModelProfile(model="m", batch_size=1, input_bytes=1e3, units=units)


def test_several_kinds_derive_from_a_kind_named_host() -> None:
    profile = _profile(("host",))
    for name, slowdown in (("pi", 6.0), ("phone", 3.0)):
        profile = profile.with_derived_kind(name, "host", slowdown)
    assert profile.times_for("phone")[0] == pytest.approx(0.03)
    assert profile.times_for("pi")[0] == pytest.approx(0.06)


def test_host_is_ambiguous_without_such_a_kind() -> None:
    with pytest.raises(ProfileMissingError, match="name one of them"):
        _profile(("x86-a", "arm-b")).with_derived_kind("pi", "host", 6.0)
