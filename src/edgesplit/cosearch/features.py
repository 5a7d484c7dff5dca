"""Derived features of an encoder architecture: parameters, FLOPs and operator counts.

Owns `count_params`, `count_flops` and `featurize` (a fixed, named float vector per architecture)
that predictors learn from. Pure numpy; works the same for ProTran's heterogeneous FlexiBERT
models and for the configs built here, because both arrive as an `Architecture`.

[Note: cost formulas] Per layer with hidden size h, T tokens and a head of width d:
  sa_sdp  Q/K/V projections 3·h·d weights, 2·T·3hd FLOPs; scores and mixing 2·2·T²·d FLOPs
  sa_wma  sa_sdp plus a d×d weighting matrix (2·T·d² FLOPs)
  l_dft   a value projection (h·d) and an FFT along the sequence (≈ 2.5·T·log2(T)·d FLOPs)
  l_dct   a value projection and a DCT as a T×T matrix product (2·T²·d FLOPs)
  conv    a value projection, a kernel generator d×k and a span convolution (2·T·d·k FLOPs)
The heads' outputs are concatenated and projected back to h; the FFN stack h→f1→…→fn→h follows;
a layer whose h differs from the previous one adds a projection between them (FlexiBERT).
FLOPs count a multiply-add as 2; softmax, norms and activations are left out (they are small and
are captured by the element counts below).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from edgesplit.cosearch.space import OP_KINDS, Architecture, LayerSpec, OpSpec

__all__ = [
    "ADDITIVE_NAMES",
    "FEATURE_NAMES",
    "additive_terms",
    "count_flops",
    "count_params",
    "featurize",
    "featurize_many",
]


def _op_params(op: OpSpec, hidden: int) -> int:
    d = op.dim
    if op.kind == "sa_sdp":
        return 3 * (hidden * d + d)
    if op.kind == "sa_wma":
        return 3 * (hidden * d + d) + d * d
    if op.kind in ("l_dft", "l_dct"):
        return hidden * d + d
    return hidden * d + d + d * max(op.kernel_size, 1) + max(op.kernel_size, 1)  # conv


def _op_flops(op: OpSpec, hidden: int, seq_len: int) -> float:
    T, d = seq_len, op.dim
    if op.kind == "sa_sdp":
        return 2 * T * 3 * hidden * d + 4 * T * T * d
    if op.kind == "sa_wma":
        return 2 * T * 3 * hidden * d + 4 * T * T * d + 2 * T * d * d
    if op.kind == "l_dft":
        return 2 * T * hidden * d + 2.5 * T * math.log2(max(T, 2)) * d
    if op.kind == "l_dct":
        return 2 * T * hidden * d + 2 * T * T * d
    k = max(op.kernel_size, 1)
    return 2 * T * hidden * d + 2 * T * d * k + 2 * T * d * k


def _ffn_dims(layer: LayerSpec) -> list[int]:
    return [layer.hidden_size, *layer.ffn_sizes, layer.hidden_size]


def _layer_params(layer: LayerSpec) -> int:
    h = layer.hidden_size
    ops = sum(_op_params(op, h) for op in layer.ops)
    concat = sum(op.dim for op in layer.ops)
    out_proj = concat * h + h
    dims = _ffn_dims(layer)
    ffn = sum(a * b + b for a, b in itertools.pairwise(dims))
    norms = 4 * h
    return ops + out_proj + ffn + norms


def _layer_flops(layer: LayerSpec, seq_len: int) -> float:
    h = layer.hidden_size
    ops = sum(_op_flops(op, h, seq_len) for op in layer.ops)
    concat = sum(op.dim for op in layer.ops)
    dims = _ffn_dims(layer)
    ffn = sum(2 * seq_len * a * b for a, b in itertools.pairwise(dims))
    return ops + 2 * seq_len * concat * h + ffn


def _embedding_params(arch: Architecture) -> int:
    h = arch.layers[0].hidden_size
    patch_bias = h if arch.patch_pixels else 0
    rows = arch.vocab_size + arch.patch_pixels
    return rows * h + patch_bias + arch.seq_len * h + 2 * h


def count_params(arch: Architecture) -> int:
    """Weights of embeddings, every layer and inter-layer projections (no task head)."""
    total = _embedding_params(arch) + sum(_layer_params(layer) for layer in arch.layers)
    for prev, nxt in zip(arch.layers[:-1], arch.layers[1:], strict=True):
        if prev.hidden_size != nxt.hidden_size:
            total += prev.hidden_size * nxt.hidden_size + nxt.hidden_size
    return total


def count_flops(arch: Architecture) -> float:
    """Forward FLOPs for one sequence of `arch.seq_len` tokens (multiply-add = 2)."""
    T = arch.seq_len
    total = 2.0 * T * arch.patch_pixels * arch.layers[0].hidden_size  # patch projection
    total += sum(_layer_flops(layer, T) for layer in arch.layers)
    for prev, nxt in zip(arch.layers[:-1], arch.layers[1:], strict=True):
        if prev.hidden_size != nxt.hidden_size:
            total += 2.0 * T * prev.hidden_size * nxt.hidden_size
    return total


def _feature_dict(arch: Architecture) -> dict[str, float]:
    T = arch.seq_len
    f: dict[str, float] = {
        "num_layers": len(arch.layers),
        "seq_len": T,
        "log_params": math.log(count_params(arch)),
        "log_flops": math.log(count_flops(arch)),
    }
    hidden = [layer.hidden_size for layer in arch.layers]
    f["hidden_sum"] = sum(hidden)
    f["hidden_max"] = max(hidden)
    f["hidden_min"] = min(hidden)
    f["hidden_changes"] = sum(a != b for a, b in itertools.pairwise(hidden))
    attention_flops = projection_flops = ffn_flops = 0.0
    ffn_linears = 0
    ffn_width_sum = 0
    ffn_max = 0
    activation_elements = 0.0  # tensors written per forward: a memory-traffic proxy
    per_kind = {kind: {"count": 0.0, "dim": 0.0, "flops": 0.0} for kind in OP_KINDS}
    for layer in arch.layers:
        h = layer.hidden_size
        for op in layer.ops:
            stats = per_kind[op.kind]
            stats["count"] += 1
            stats["dim"] += op.dim
            stats["flops"] += _op_flops(op, h, T)
            if op.kind in ("sa_sdp", "sa_wma"):
                attention_flops += 4 * T * T * op.dim
                activation_elements += 3 * T * op.dim + T * T
            else:
                activation_elements += 2 * T * op.dim
        concat = sum(op.dim for op in layer.ops)
        projection_flops += 2 * T * concat * h
        dims = _ffn_dims(layer)
        ffn_flops += sum(2 * T * a * b for a, b in itertools.pairwise(dims))
        ffn_linears += len(dims) - 1
        ffn_width_sum += sum(layer.ffn_sizes)
        ffn_max = max(ffn_max, *layer.ffn_sizes)
        activation_elements += T * (2 * h + sum(layer.ffn_sizes))
    for kind, stats in per_kind.items():
        f[f"{kind}_count"] = stats["count"]
        f[f"{kind}_dim"] = stats["dim"]
        f[f"{kind}_log_flops"] = math.log1p(stats["flops"])
    f["conv_kernel_sum"] = float(
        sum(op.kernel_size for layer in arch.layers for op in layer.ops if op.kind == "conv")
    )
    f["num_ops"] = float(sum(len(layer.ops) for layer in arch.layers))
    f["log_attention_flops"] = math.log1p(attention_flops)
    f["log_projection_flops"] = math.log1p(projection_flops)
    f["log_ffn_flops"] = math.log1p(ffn_flops)
    f["ffn_linears"] = ffn_linears
    f["ffn_width_sum"] = ffn_width_sum
    f["ffn_max"] = ffn_max
    f["log_activation_elements"] = math.log(activation_elements)
    # Kernel launches per forward (ops + projections + FFN linears + norms): latency floor on
    # GPUs and NPUs at batch 1, where small models are launch-bound rather than FLOP-bound.
    f["kernel_launches"] = f["num_ops"] * 4 + 3 * len(arch.layers) + ffn_linears
    return f


_REFERENCE = Architecture(
    layers=(LayerSpec(hidden_size=8, ops=(OpSpec(kind="sa_sdp", dim=8),), ffn_sizes=(8,)),),
    seq_len=2,
)
FEATURE_NAMES: tuple[str, ...] = tuple(_feature_dict(_REFERENCE))


def featurize(arch: Architecture) -> np.ndarray:
    """The named feature vector (order `FEATURE_NAMES`) of one architecture, float64."""
    values = _feature_dict(arch)
    return np.array([values[name] for name in FEATURE_NAMES], dtype=np.float64)


def featurize_many(archs: list[Architecture]) -> np.ndarray:
    """(N, F) feature matrix."""
    if not archs:
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.stack([featurize(a) for a in archs])


def _additive_dict(arch: Architecture) -> dict[str, float]:
    """Work terms that latency is roughly a non-negative sum of (one per operator shape)."""
    T = arch.seq_len
    v = dict.fromkeys(ADDITIVE_NAMES, 0.0)
    for layer in arch.layers:
        h = layer.hidden_size
        for op in layer.ops:
            d = op.dim
            v[f"{op.kind}_proj"] += T * h * d
            # GPUs run big matrix products at higher efficiency: time grows sublinearly in MACs.
            v[f"{op.kind}_proj_sublinear"] += (T * h * d) ** 0.75
            v[f"{op.kind}_count"] += 1
            v[f"{op.kind}_elements"] += T * d
            if op.kind in ("sa_sdp", "sa_wma", "l_dct"):
                v[f"{op.kind}_mix"] += T * T * d
            if op.kind == "sa_wma":
                v["sa_wma_mix"] += T * d * d
            if op.kind == "l_dft":
                v["l_dft_mix"] += T * math.log2(max(T, 2)) * d
            if op.kind == "conv":
                v["conv_mix"] += T * d * op.kernel_size
        dims = _ffn_dims(layer)
        v["ffn_macs"] += sum(T * a * b for a, b in itertools.pairwise(dims))
        v["ffn_sublinear"] += sum((T * a * b) ** 0.75 for a, b in itertools.pairwise(dims))
        v["ffn_linears"] += len(dims) - 1
        v["ffn_elements"] += T * sum(layer.ffn_sizes)
        v["out_proj_macs"] += T * sum(op.dim for op in layer.ops) * h
        v["layers"] += 1
        v["hidden_elements"] += T * h
    for prev, nxt in zip(arch.layers[:-1], arch.layers[1:], strict=True):
        if prev.hidden_size != nxt.hidden_size:
            v["between_macs"] += T * prev.hidden_size * nxt.hidden_size
            v["between_count"] += 1
    # Weight memory: bytes read per forward (∝ params, embeddings included) and a quadratic
    # memory-pressure term (devices with 4 GB shared RAM slow down superlinearly with size).
    params = float(count_params(arch))
    v["params"] = params
    v["params_squared"] = params * params
    v["constant"] = 1.0
    return v


ADDITIVE_NAMES: tuple[str, ...] = (
    *(
        f"{kind}_{part}"
        for kind in OP_KINDS
        for part in ("proj", "proj_sublinear", "count", "elements", "mix")
    ),
    "ffn_macs",
    "ffn_sublinear",
    "ffn_linears",
    "ffn_elements",
    "out_proj_macs",
    "layers",
    "hidden_elements",
    "between_macs",
    "between_count",
    "params",
    "params_squared",
    "constant",
)


def additive_terms(archs: list[Architecture]) -> np.ndarray:
    """(N, len(ADDITIVE_NAMES)) non-negative work terms for the additive (physical) model."""
    if not archs:
        return np.zeros((0, len(ADDITIVE_NAMES)))
    rows = [_additive_dict(a) for a in archs]
    return np.array([[row[name] for name in ADDITIVE_NAMES] for row in rows], dtype=np.float64)
