"""Import ProTran's measurements (EdgeTran, Tuli & Jha) and the device catalog they come from.

Owns `DeviceInfo` (the 7 ProTran devices plus this host), `Measurement` (one architecture on one
device: latency, energy, peak power) and `load_protran` (reads `results_<kind>_<device>_b<batch>_
r<runs>.json` files: model hash -> model_dict{l, o, h, f}, model_type, performance). Pure: json,
pydantic, numpy. Data: vendored in src/edgesplit/data/protran (BSD-3-Clause, Shikhar Tuli and
Jha Lab; `edgesplit.data.PROTRAN_DIR`).

[Note: ProTran units] `latency` is seconds and `energy` joules per sequence as ProTran recorded
them at the file's batch size, `peak_power` watts. We keep the numbers as published and predict
them per device; comparisons across devices are of predicted values, never mixed with ours.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgesplit.core.schema import FrozenModel
from edgesplit.cosearch.space import Architecture, LayerSpec, OpKind, OpSpec
from edgesplit.data import PROTRAN_DIR
from edgesplit.errors import ConfigError

__all__ = [
    "DEVICES",
    "HOST_DEVICE",
    "PROTRAN_SEQ_LEN",
    "DeviceInfo",
    "Measurement",
    "load_protran",
    "parse_model_dict",
]

# FlexiBERT/EdgeTran evaluate GLUE at 128 tokens; the FLOP features of imported models use it.
PROTRAN_SEQ_LEN = 128
PROTRAN_VOCAB = 30522

DeviceKind = Literal["cpu", "gpu", "npu"]


class DeviceInfo(FrozenModel):
    """A device the co-search can place a model on. Memory sizes are catalog assumptions."""

    name: str
    kind: DeviceKind
    batch_size: int = Field(ge=1)
    memory_bytes: int = Field(gt=0)
    description: str
    source: Literal["protran", "host"]


_GB = 1024**3
DEVICES: dict[str, DeviceInfo] = {
    d.name: d
    for d in (
        DeviceInfo(
            name="a100-gpu",
            kind="gpu",
            batch_size=128,
            memory_bytes=40 * _GB,
            description="NVIDIA A100 40 GB",
            source="protran",
        ),
        DeviceInfo(
            name="m1-pro-cpu",
            kind="cpu",
            batch_size=32,
            memory_bytes=16 * _GB,
            description="Apple M1 Pro CPU (16 GB unified, assumed)",
            source="protran",
        ),
        DeviceInfo(
            name="m1-pro-gpu",
            kind="gpu",
            batch_size=32,
            memory_bytes=16 * _GB,
            description="Apple M1 Pro GPU (16 GB unified, assumed)",
            source="protran",
        ),
        DeviceInfo(
            name="rpi-cpu",
            kind="cpu",
            batch_size=1,
            memory_bytes=4 * _GB,
            description="Raspberry Pi 4 CPU (4 GB, assumed)",
            source="protran",
        ),
        DeviceInfo(
            name="ncs-npu",
            kind="npu",
            batch_size=1,
            memory_bytes=512 * 1024**2,
            description="Intel Neural Compute Stick 2 (512 MB)",
            source="protran",
        ),
        DeviceInfo(
            name="jetson-nano-cpu",
            kind="cpu",
            batch_size=1,
            memory_bytes=4 * _GB,
            description="NVIDIA Jetson Nano CPU (4 GB)",
            source="protran",
        ),
        DeviceInfo(
            name="jetson-nano-gpu",
            kind="gpu",
            batch_size=1,
            memory_bytes=4 * _GB,
            description="NVIDIA Jetson Nano GPU (4 GB)",
            source="protran",
        ),
    )
}
HOST_DEVICE = "host-cpu"

_FILE_RE = re.compile(r"results_(cpu|gpu|npu)_(.+)_b(\d+)_r(\d+)\.json$")
_OP_RE = re.compile(r"^(sa_sdp|sa_wma|l_dft|l_dct)_(\d+)$|^c_(\d+)_(\d+)$")


class Measurement(FrozenModel):
    """One architecture measured on one device."""

    device: str
    model_hash: str
    model_type: str
    architecture: Architecture
    latency_s: float = Field(gt=0)
    energy_j: float = Field(ge=0)
    peak_power_w: float = Field(ge=0)


def parse_op(text: str) -> OpSpec:
    """`sa_wma_192` -> OpSpec(kind='sa_wma', dim=192); `c_5_64` -> a conv with kernel 5."""
    match = _OP_RE.match(text)
    if match is None:
        raise ConfigError(
            f"unknown ProTran operator {text!r}; "
            "expected sa_sdp_D, sa_wma_D, l_dft_D, l_dct_D or c_K_D"
        )
    if match.group(1):
        kind: OpKind = match.group(1)  # type: ignore[assignment]  # regex alternatives are OpKinds
        return OpSpec(kind=kind, dim=int(match.group(2)))
    return OpSpec(kind="conv", dim=int(match.group(4)), kernel_size=int(match.group(3)))


def parse_model_dict(
    model_dict: dict[str, object], *, seq_len: int = PROTRAN_SEQ_LEN
) -> Architecture:
    """FlexiBERT `model_dict` {l, o, h, f} -> `Architecture` (ops and FFN stack per layer)."""
    try:
        num_layers = int(model_dict["l"])  # type: ignore[call-overload]
        ops = model_dict["o"]
        hidden = model_dict["h"]
        ffn = model_dict["f"]
    except KeyError as e:
        raise ConfigError(f"ProTran model_dict lacks key {e}; expected l, o, h, f") from e
    assert isinstance(ops, list)
    assert isinstance(hidden, list)
    assert isinstance(ffn, list)
    if not (len(ops) == len(hidden) == len(ffn) == num_layers):
        raise ConfigError(
            f"ProTran model_dict says l={num_layers} but has {len(ops)} op lists, "
            f"{len(hidden)} hidden sizes and {len(ffn)} FFN stacks"
        )
    layers = tuple(
        LayerSpec(
            hidden_size=int(h),
            ops=tuple(parse_op(str(o)) for o in layer_ops),
            ffn_sizes=tuple(int(x) for x in layer_ffn),
        )
        for layer_ops, h, layer_ffn in zip(ops, hidden, ffn, strict=True)
    )
    return Architecture(layers=layers, seq_len=seq_len, vocab_size=PROTRAN_VOCAB)


def _device_name(kind: str, device: str) -> str:
    return f"{device}-{kind}"


def load_protran(directory: Path) -> list[Measurement]:
    """Every measurement in a ProTran results folder, in file then model-hash order.

    Raises:
        ConfigError: the folder has no `results_*.json` files or a file is malformed.
    """
    directory = Path(directory)
    files = sorted(p for p in directory.glob("results_*.json") if _FILE_RE.search(p.name))
    if not files:
        raise ConfigError(
            f"no ProTran results_<kind>_<device>_b<batch>_r<runs>.json files in {directory}; "
            f"point --protran at a folder of them (the bundled set is {PROTRAN_DIR})"
        )
    out: list[Measurement] = []
    for path in files:
        match = _FILE_RE.search(path.name)
        assert match is not None
        device = _device_name(match.group(1), match.group(2))
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
        for model_hash in sorted(data):
            entry = data[model_hash]
            perf = entry["performance"]
            out.append(
                Measurement(
                    device=device,
                    model_hash=model_hash,
                    model_type=str(entry.get("model_type", "")),
                    architecture=parse_model_dict(entry["model_dict"]),
                    latency_s=float(perf["latency"]),
                    energy_j=float(perf["energy"]),
                    peak_power_w=float(perf["peak_power"]),
                )
            )
    return out
