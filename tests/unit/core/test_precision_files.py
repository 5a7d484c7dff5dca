"""Precision in files: per-dtype profiles, stage dtypes in plans, quality tables, link codec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgesplit.core.link_codec import (
    SCALE_SUFFIX,
    decode_tensors,
    encode_tensors,
    encoded_nbytes,
    parse_link_encoding,
)
from edgesplit.core.plan import Plan
from edgesplit.core.precision import LINK_ENCODINGS, LinkEncoding, encoded_bytes
from edgesplit.core.profile import ModelProfile, merge_profiles
from edgesplit.core.quality import DtypeQuality, LinkQuality, QualityTable, loss_from_values
from edgesplit.core.schema import read_json_file, stable_json, write_json_file
from edgesplit.errors import ConfigError, ProfileMissingError

SCHEMAS = Path(__file__).resolve().parents[2] / "data" / "schemas"


def test_float32_files_are_unchanged_by_the_new_keys() -> None:
    """Files written before per-dtype figures existed load, and re-dump byte for byte."""
    for name, model in (("plan_v1.json", Plan), ("model_profile_v1.json", ModelProfile)):
        text = (SCHEMAS / name).read_text()
        loaded = read_json_file(model, SCHEMAS / name)
        assert stable_json(loaded.model_dump(mode="json")) == text
    plan = read_json_file(Plan, SCHEMAS / "plan_v1.json")
    assert set(plan.dtypes) == {"float32"}
    assert {s.link_encoding for s in plan.stages} == {"float32"}
    assert plan.predicted.quality is None


def test_plan_with_stage_dtypes_round_trips(tmp_path: Path) -> None:
    plan = read_json_file(Plan, SCHEMAS / "plan_v1_precision.json")
    assert plan.dtypes[:2] == ("int8", "bfloat16")
    assert plan.stages[0].link_encoding == "int8-token"
    assert plan.predicted.quality is not None
    assert plan.predicted.quality.loss == pytest.approx(0.3)
    again = read_json_file(Plan, write_json_file(plan, tmp_path / "p.json"))
    assert again == plan


def test_unknown_dtype_is_refused_with_the_choices(tmp_path: Path) -> None:
    data = json.loads((SCHEMAS / "plan_v1_precision.json").read_text())
    data["stages"][0]["dtype"] = "int4"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="int8"):
        read_json_file(Plan, tmp_path / "bad.json")


def test_profile_per_dtype_figures() -> None:
    profile = read_json_file(ModelProfile, SCHEMAS / "model_profile_v1_by_dtype.json")
    assert profile.dtypes == ("float32", "bfloat16", "int8")
    kind = profile.device_kinds[0]
    f32 = profile.times_for(kind)
    assert profile.times_for(kind, "float32") == f32
    assert profile.times_for(kind, "int8") == pytest.approx([t * 0.35 for t in f32])
    assert profile.param_bytes_for("bfloat16") == pytest.approx(
        [b / 2 for b in profile.param_bytes_for()]
    )
    derived = profile.with_derived_kind("pi", kind, 3.0)
    assert derived.times_for("pi", "int8") == pytest.approx([t * 3 * 0.35 for t in f32])
    plain = read_json_file(ModelProfile, SCHEMAS / "model_profile_v1.json")
    assert plain.dtypes == ("float32",)
    with pytest.raises(ProfileMissingError, match="--dtype float32,int8"):
        plain.times_for(kind, "int8")


def test_merge_keeps_per_dtype_times() -> None:
    profile = read_json_file(ModelProfile, SCHEMAS / "model_profile_v1_by_dtype.json")
    kind = profile.device_kinds[0]
    other = profile.with_derived_kind("pi", kind, 2.0)
    merged = merge_profiles([profile, other])
    assert merged.times_for("pi", "int8") == other.times_for("pi", "int8")
    assert merged.times_for(kind, "int8") == profile.times_for(kind, "int8")


# --- link codec ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=7),
        elements=st.floats(-1e4, 1e4, width=32),
    ),
    st.sampled_from(LINK_ENCODINGS),
)
def test_codec_round_trip_error_is_bounded(array: np.ndarray, encoding: LinkEncoding) -> None:
    ids = np.arange(3, dtype=np.int64)
    wire = encode_tensors({"hidden": array, "position_ids": ids}, encoding)
    assert wire["position_ids"] is ids  # non-floating arrays pass through untouched
    back = decode_tensors(wire)
    assert set(back) == {"hidden", "position_ids"}
    assert back["hidden"].dtype == np.float32
    assert back["hidden"].shape == array.shape
    if encoding == "float32":
        np.testing.assert_array_equal(back["hidden"], array)
    elif encoding == "float16":
        np.testing.assert_allclose(back["hidden"], array, rtol=1e-3, atol=1e-3)
    else:
        scale = wire["hidden" + SCALE_SUFFIX]
        # [Note: int8 link scale]: at most half a step per element (float rounding aside).
        bound = np.broadcast_to(scale, array.shape) * 0.5 * (1 + 1e-5) + 1e-6
        assert np.all(np.abs(back["hidden"] - array) <= bound)


def test_codec_sizes_match_the_planner_arithmetic() -> None:
    hidden = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    for encoding in LINK_ENCODINGS:
        wire = encode_tensors({"hidden": hidden}, encoding)
        assert encoded_nbytes(wire) == encoded_bytes(hidden.nbytes, encoding, num_rows=10)
    per_token = encode_tensors({"hidden": hidden}, "int8-token")["hidden" + SCALE_SUFFIX]
    assert per_token.shape == (2, 5, 1)


def test_per_token_beats_per_tensor_on_an_outlier_row() -> None:
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((1, 8, 32)).astype(np.float32)
    hidden[0, 0] *= 100  # one token with huge activations (as LLM attention sinks have)
    errors = {}
    for encoding in ("int8-tensor", "int8-token"):
        back = decode_tensors(encode_tensors({"h": hidden}, encoding))["h"]  # type: ignore[arg-type]
        errors[encoding] = float(np.abs(back - hidden)[0, 1:].max())
    assert errors["int8-token"] < errors["int8-tensor"] / 10


def test_codec_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ConfigError, match="NaN"):
        encode_tensors({"h": np.array([np.nan], dtype=np.float32)}, "int8-tensor")
    with pytest.raises(ConfigError, match="reserved"):
        encode_tensors({"h#scale": np.zeros(1, np.float32)}, "float16")
    with pytest.raises(ConfigError, match="without its tensor"):
        decode_tensors({"h#scale": np.ones(1, np.float32)})
    with pytest.raises(ConfigError, match="does not match"):
        decode_tensors({"h": np.zeros((2, 3), np.int8), "h#scale": np.ones((3, 1), np.float32)})
    assert parse_link_encoding("int8-token") == "int8-token"
    with pytest.raises(ConfigError, match="float16"):
        parse_link_encoding("fp8")
    zeros = decode_tensors(encode_tensors({"h": np.zeros((2, 4), np.float32)}, "int8-token"))
    np.testing.assert_array_equal(zeros["h"], 0)


# --- quality tables -----------------------------------------------------------------------------


def _table() -> QualityTable:
    return QualityTable(
        model="m",
        metric="perplexity",
        loss_unit="percent",
        dataset="held-out",
        num_samples=10,
        float32_value=10.0,
        unit_names=("embed", "block0.attn", "block0.mlp", "head"),
        unit_param_bytes=(0.0, 40.0, 60.0, 0.0),
        dtypes=(
            DtypeQuality(dtype="int8", value=10.2, loss=2.0),
            DtypeQuality(dtype="bfloat16", value=9.99, loss=-0.1),
        ),
        links=(
            LinkQuality(encoding="int8-tensor", boundary=1, value=10.05, loss=0.5),
            LinkQuality(encoding="int8-tensor", boundary=2, value=10.1, loss=1.0),
        ),
    )


def test_quality_prediction_rule(tmp_path: Path) -> None:
    table = _table()
    assert table.predicted_loss([(0, 4, "float32")]) == 0
    assert table.predicted_loss([(0, 2, "int8"), (2, 4, "float32")]) == pytest.approx(0.8)
    assert table.predicted_loss([(0, 4, "bfloat16")]) == 0  # a measured gain never counts
    assert table.predicted_loss([(0, 4, "int8")], [(1, "int8-tensor")]) == pytest.approx(2.5)
    assert table.predicted_loss([(0, 4, "int8")], [(3, "int8-tensor")]) == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="int8-token"):
        table.link_loss(1, "int8-token")
    again = read_json_file(QualityTable, write_json_file(table, tmp_path / "q.json"))
    assert again == table
    assert again.digest() == table.digest()


def test_quality_table_checks_itself() -> None:
    data = _table().model_dump()
    with pytest.raises(ValueError, match="points"):
        QualityTable.model_validate({**data, "metric": "accuracy"})
    with pytest.raises(ValueError, match="boundary"):
        QualityTable.model_validate(
            {**data, "links": [{"encoding": "float16", "boundary": 4, "value": 1, "loss": 0}]}
        )
    assert loss_from_values("perplexity", 10.0, 10.3) == pytest.approx(3.0)
    assert loss_from_values("accuracy", 0.98, 0.975) == pytest.approx(0.5)
    assert loss_from_values("embedding_cosine", 1.0, 0.995) == pytest.approx(0.5)
