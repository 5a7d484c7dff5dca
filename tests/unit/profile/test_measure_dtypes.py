"""`profile --dtype`: every unit measured per dtype, bytes from the converted weights."""

from __future__ import annotations

import pytest

from edgesplit.models import build_stage, model_spec_from_name, unit_names
from edgesplit.profile.measure import profile_model


@pytest.mark.parametrize("name", ["llama-tiny", "bert-tiny"])
def test_per_dtype_figures_match_the_converted_stages(name: str) -> None:
    spec = model_spec_from_name(name)
    profile = profile_model(
        spec, 1, repeats=1, warmup=0, device_kind="bench", dtypes=("int8", "bfloat16", "int8")
    )
    assert profile.dtype == "float32"
    assert profile.dtypes == ("float32", "bfloat16", "int8")
    names = unit_names(spec)
    for dtype in ("float32", "bfloat16", "int8"):
        times = profile.times_for("bench", dtype)
        assert all(t > 0 for t in times)
        sizes = profile.param_bytes_for(dtype)
        # A unit's bytes are what a one-unit stage of that dtype holds.
        for index in (0, 1, len(names) - 1):
            stage = build_stage(spec, index, index + 1, dtype)
            assert sizes[index] == pytest.approx(stage.param_bytes(), rel=1e-6), names[index]
    f32 = sum(profile.param_bytes_for("float32"))
    assert sum(profile.param_bytes_for("bfloat16")) == pytest.approx(f32 / 2, rel=0.01)
    assert sum(profile.param_bytes_for("int8")) < 0.5 * f32


def test_float32_only_profile_has_no_per_dtype_key() -> None:
    profile = profile_model(model_spec_from_name("vit-tiny"), 1, repeats=1, warmup=0)
    assert all(u.by_dtype is None for u in profile.units)
    assert "by_dtype" not in profile.model_dump(mode="json")["units"][0]
