"""ProTran import: operator parsing, model_dict shape checks, the file format, the bundled data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from edgesplit.cosearch.protran import DEVICES, load_protran, parse_model_dict, parse_op
from edgesplit.data import PROTRAN_DIR
from edgesplit.errors import ConfigError

ENTRY = {
    "model_dict": {
        "l": 2,
        "o": [["sa_wma_192", "c_13_192", "l_dct_192", "sa_sdp_192"], ["l_dft_64", "sa_sdp_64"]],
        "h": [768, 128],
        "f": [[3072, 1024], [256]],
    },
    "model_type": "shallow_wide",
    "embedding": "[1, 2]",
    "performance": {"latency": 0.5, "energy": 2.0, "peak_power": 4.1},
}


def test_parse_op() -> None:
    assert parse_op("sa_wma_192").model_dump() == {"kind": "sa_wma", "dim": 192, "kernel_size": 0}
    assert parse_op("c_13_64").model_dump() == {"kind": "conv", "dim": 64, "kernel_size": 13}
    with pytest.raises(ConfigError, match="unknown ProTran operator"):
        parse_op("rnn_64")


def test_parse_model_dict_and_mismatch() -> None:
    arch = parse_model_dict(ENTRY["model_dict"])  # type: ignore[arg-type]
    assert [layer.hidden_size for layer in arch.layers] == [768, 128]
    assert [len(layer.ops) for layer in arch.layers] == [4, 2]
    assert arch.layers[0].ffn_sizes == (3072, 1024)
    bad = dict(ENTRY["model_dict"], l=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="l=3"):
        parse_model_dict(bad)


def test_load_folder(tmp_path: Path) -> None:
    (tmp_path / "results_cpu_rpi_b1_r1.json").write_text(json.dumps({"abc": ENTRY}))
    (tmp_path / "results_gpu_a100_b128_r3.json").write_text(json.dumps({"x": ENTRY, "y": ENTRY}))
    rows = load_protran(tmp_path)
    assert Counter(r.device for r in rows) == {"rpi-cpu": 1, "a100-gpu": 2}
    assert rows[0].latency_s == 0.5
    assert rows[0].peak_power_w == 4.1
    assert set(Counter(r.device for r in rows)) <= set(DEVICES)
    with pytest.raises(ConfigError, match="no ProTran"):
        load_protran(tmp_path / "missing")


def test_bundled_data_counts() -> None:
    rows = load_protran(PROTRAN_DIR)
    counts = Counter(r.device for r in rows)
    assert set(counts) == set(DEVICES)
    assert counts["a100-gpu"] == 239
    assert counts["jetson-nano-cpu"] == 223
    assert counts["ncs-npu"] == 21
    assert len({r.model_hash for r in rows}) == 686
