"""A stage decodes the frames it receives and encodes what it sends (StageSpec.link_encoding)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from edgesplit.core.link_codec import encode_tensors
from edgesplit.runtime.stage import StageSpec, _Item, _StageRunner


class _Double:
    def __init__(self) -> None:
        self.seen: dict[str, np.ndarray] = {}

    def run(self, request_id: int, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
        self.seen = dict(tensors)
        return {"hidden": tensors["hidden"] * 2}, meta


def _spec(**fields: Any) -> StageSpec:
    return StageSpec(
        index=1, device="d", start=2, end=4, epoch=0, compute="real", run_key_hex="0" * 64, **fields
    )


def test_defaults_are_float32() -> None:
    spec = _spec()
    assert (spec.dtype, spec.link_encoding) == ("float32", "float32")
    assert StageSpec.model_validate(spec.model_dump()).dtype == "float32"


def test_a_stage_decodes_its_input_and_encodes_its_output() -> None:
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 5, 8)).astype(np.float32)
    executor = _Double()
    runner = _StageRunner(
        _spec(link_encoding="int8-token"), executor, "127.0.0.1", threading.Event()
    )
    incoming = encode_tensors({"hidden": hidden}, "float16")
    frame = runner._run(_Item(7, 2, incoming, {}, None, 0.0))
    assert executor.seen["hidden"].dtype == np.float32  # decoded before the executor
    np.testing.assert_array_equal(
        executor.seen["hidden"], hidden.astype(np.float16).astype(np.float32)
    )
    assert frame.tensors["hidden"].dtype == np.int8
    assert frame.tensors["hidden#scale"].shape == (2, 5, 1)
    expected = encode_tensors({"hidden": executor.seen["hidden"] * 2}, "int8-token")
    np.testing.assert_array_equal(frame.tensors["hidden"], expected["hidden"])


def test_float32_links_pass_arrays_through() -> None:
    hidden = np.ones((1, 3, 4), dtype=np.float32)
    runner = _StageRunner(_spec(), _Double(), "127.0.0.1", threading.Event())
    frame = runner._run(_Item(1, 2, {"hidden": hidden}, {}, None, 0.0))
    assert set(frame.tensors) == {"hidden"}
    assert frame.tensors["hidden"].dtype == np.float32
