"""The one adapter that turns a float32 module into a bfloat16 or int8 one (weights of a stage).

Owns `apply_dtype` (in place, any of our families and any unit subset) and `QUANTIZATION_API`,
the name of the library call int8 goes through. Every other module asks this one; nothing else
imports a quantization library. torch only; never ray, never planners.

[Note: int8 backend] Chosen by measurement (docs/precision.md, benchmarks/precision.py):
`torch.ao.quantization.quantize_dynamic` with per-output-channel int8 Linear weights, then each
of its Linears re-wrapped as `Int8Linear`: the same packed weights and fbgemm/qnnpack kernel
(`torch.ops.quantized.linear_dynamic`), activations quantized per call with one 8-bit range
per token instead of one 7-bit range per tensor ([Note: int8 activations per token]).
SmolLM2-135M decode, one thread: 13 ms/token vs 40 float32 (issue 17), where torchao 0.18's
eager int8 weight-only / dynamic-activation configs took 76 / 99 ms. torch marks
`torch.ao.quantization` deprecated; `tests/unit/models/test_precision.py` fails loudly when
the call, its module types or the ops disappear, and swapping the backend means changing
`_quantize_int8` and `Int8Linear` only.

[Note: stage dtypes and the wire] A stage computes in its dtype but always exchanges float32
at its boundary (`StageModule` casts in and out): a cut's wire format is the link encoding's
business (`core.link_codec`), never a side effect of the neighbours' dtypes. bfloat16 -> float32
-> bfloat16 is lossless, so a split bfloat16 model equals the unsplit bfloat16 model.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any, Final

import torch
from torch import nn

from edgesplit.core.precision import STAGE_DTYPES, StageDtype
from edgesplit.errors import ConfigError

__all__ = [
    "QUANTIZATION_API",
    "Int8Linear",
    "apply_dtype",
    "compute_dtype",
    "full_range_activations",
    "parse_dtype",
    "weight_bytes",
]

logger = logging.getLogger(__name__)

QUANTIZATION_API: Final = "torch.ao.quantization.quantize_dynamic"
_FLOAT32_BUFFERS: Final = frozenset({"inv_freq", "original_inv_freq"})
_VOCAB_TABLES: Final = frozenset({"embed_tokens", "wte", "word_embeddings", "tied_embedding"})


def parse_dtype(name: str) -> StageDtype:
    """`name` as a StageDtype, or a ConfigError listing the valid names."""
    for dtype in STAGE_DTYPES:
        if name == dtype:
            return dtype
    raise ConfigError(f"unknown stage dtype '{name}'; choose one of {', '.join(STAGE_DTYPES)}")


def compute_dtype(dtype: StageDtype) -> torch.dtype:
    """The floating dtype activations have inside a stage of `dtype` (int8 computes in float32)."""
    return torch.bfloat16 if dtype == "bfloat16" else torch.float32


def apply_dtype(module: nn.Module, dtype: StageDtype) -> nn.Module:
    """Convert `module`'s weights to `dtype` in place and return it (float32: unchanged).

    bfloat16 casts every floating parameter and buffer. int8 converts GPT-2's Conv1D
    projections to Linear, unties a tied LM head (it gets its own int8 copy of the embedding),
    then quantizes every Linear (int8 weights per output channel, activations per call) and
    the vocabulary Embedding (int8 per row) through `QUANTIZATION_API`.
    """
    if dtype == "float32":
        return module
    if dtype == "bfloat16":
        # Rotary frequencies stay float32 (as in our stages, whose rotary table is not a
        # submodule): rounding them to bfloat16 would shift every position's angle.
        kept = {
            name: buffer.clone()
            for name, buffer in module.named_buffers()
            if name.rpartition(".")[2] in _FLOAT32_BUFFERS
        }
        module.to(torch.bfloat16)
        for name, buffer in kept.items():
            owner, _, leaf = name.rpartition(".")
            module.get_submodule(owner)._buffers[leaf] = buffer
        return module
    if dtype == "int8":
        _conv1d_to_linear(module)
        for sub in list(module.modules()):
            untie = getattr(sub, "untie", None)
            if callable(untie):
                untie()
        return _quantize_int8(module)
    raise ConfigError(f"unknown stage dtype '{dtype}'")  # pragma: no cover - Literal guards it


def _conv1d_to_linear(module: nn.Module) -> None:
    """GPT-2's Conv1D (weight (in, out)) as an equivalent nn.Linear (weight (out, in))."""
    from transformers.pytorch_utils import Conv1D

    for name, child in list(module.named_children()):
        if isinstance(child, Conv1D):
            weight = child.weight.detach()  # (in, out)
            linear = nn.Linear(weight.shape[0], weight.shape[1], bias=child.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight.t())
                if child.bias is not None:
                    linear.bias.copy_(child.bias.detach())
            setattr(module, name, linear)
        else:
            _conv1d_to_linear(child)


def _quantize_int8(module: nn.Module) -> nn.Module:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import (
        float_qparams_weight_only_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    # Vocabulary tables go int8 per row; position / token-type tables stay float32: they are
    # small, and HF indexes them with strided views that the int8 embedding kernel refuses.
    spec: dict[Any, Any] = {nn.Linear: per_channel_dynamic_qconfig}
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Embedding) and name.rpartition(".")[2] in _VOCAB_TABLES:
            spec[name] = float_qparams_weight_only_qconfig
    with warnings.catch_warnings():
        # torch announces the removal of torch.ao.quantization; the test suite guards the call.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", ".*quantize_per.*deprecated", UserWarning)
        quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)
        full_range = full_range_activations()
        for owner in list(module.modules()):
            for name, child in list(owner.named_children()):
                if type(child) is DynamicLinear:
                    setattr(owner, name, Int8Linear(child, full_range=full_range))
    return module


class Int8Linear(nn.Module):
    """A dynamically quantized Linear whose activations get their own 8-bit range per token.

    [Note: int8 activations per token] `quantize_dynamic`'s own Linear quantizes its input with
    one range for the whole tensor and 7 bits (`reduce_range=True`, hard-coded). SmolLM2's MLP
    down projections see "massive activations" on a sequence's first token (up to ~3000,
    ~2000x the median token's maximum; benchmarks/results/precision_sensitivity.json): one
    range for every token leaves the others a few levels, +209 % perplexity. One asymmetric
    range per token, 8 bits: +3.5 % (docs/precision.md). This module gets per-token ranges
    from the same fbgemm/qnnpack kernel and the same packed int8 weights (no second copy):
    each row x is mapped affinely onto [0, 1], x = lo + span * u (lo = min(x, 0), span =
    max(x, 0) - lo), so the kernel's one range for all rows of u is every row's own range, and
    W x = span * (W u) + lo * rowsum(W). One row (a decode step) needs no mapping: one range
    per tensor is one per token already. `full_range`: 8-bit activations where the kernel does
    not saturate (VNNI on x86, qnnpack; `full_range_activations` probes it), else 7 bits.
    Split equals unsplit stays exact: a row's result depends on that row only.
    """

    def __init__(self, dynamic: nn.Module, *, full_range: bool) -> None:
        from torch.ao.nn.quantized.modules.linear import LinearPackedParams

        super().__init__()
        weight, bias = dynamic._packed_params._weight_bias()  # type: ignore[union-attr,operator]
        self.in_features: int = int(weight.shape[1])
        self.out_features: int = int(weight.shape[0])
        self._packed_params = LinearPackedParams(dtype=torch.qint8)
        self._packed_params.set_weight_bias(weight, None)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)
        self.row_sums: torch.Tensor
        self.register_buffer("row_sums", weight.dequantize().sum(1))
        self.reduce_range = not full_range

    def weight(self) -> torch.Tensor:
        """The int8 weight (a per-channel quantized tensor, unpacked: a copy)."""
        return self._packed_params._weight_bias()[0]  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed_params._packed_params
        if x.numel() == x.shape[-1]:  # one token: one range per tensor is one per token
            y = torch.ops.quantized.linear_dynamic(x, packed, self.reduce_range)
        else:
            # amin + amax: 15x faster than torch.aminmax along a dim on this CPU.
            low = x.amin(-1, keepdim=True).clamp_(max=0.0)
            span = (x.amax(-1, keepdim=True).clamp_(min=0.0) - low).clamp_(min=_TINY)
            y = torch.ops.quantized.linear_dynamic((x - low) / span, packed, self.reduce_range)
            y = torch.addcmul(y.mul_(span), low, self.row_sums)
        return y if self.bias is None else y.add_(self.bias)

    def extra_repr(self) -> str:
        bits = 7 if self.reduce_range else 8
        return f"in_features={self.in_features}, out_features={self.out_features}, " + (
            f"activations: int8 per token ({bits}-bit range)"
        )


_TINY: Final = float(torch.finfo(torch.float32).tiny)


@functools.cache
def full_range_activations() -> bool:
    """Whether the int8 kernel takes 8-bit activations without saturating, probed once.

    fbgemm on x86 CPUs without VNNI multiplies uint8 x int8 pairs into saturating int16
    (`vpmaddubsw`), which is why torch quantizes activations to 7 bits there; with VNNI (and on
    qnnpack) 8 bits are exact. The probe: 256 products 255 x 127, exact sum vs saturated.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", ".*quantize_per.*deprecated", UserWarning)
        weight = torch.quantize_per_channel(
            torch.ones(8, 256),
            torch.full((8,), 1 / 127, dtype=torch.float64),
            torch.zeros(8, dtype=torch.int64),
            0,
            torch.qint8,
        )
        packed = torch.ops.quantized.linear_prepack(weight, None)
        y = torch.ops.quantized.linear_dynamic(torch.ones(1, 256), packed, False)
    exact = bool((y - 256.0).abs().max() < 2.0)
    logger.debug("int8 activations: %s", "8-bit" if exact else "7-bit (kernel saturates)")
    return exact


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the weights `module` holds, int8 ones included (shared tensors counted once).

    `nn.Module.parameters()` does not see int8 weights (they sit in packed parameters): each
    quantized Linear or Embedding counts one byte per weight plus its per-channel scales and
    zero points and its float bias (an `Int8Linear`'s bias is an ordinary parameter). Buffers
    are not weights and are not counted.
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.nn.quantized.modules.embedding_ops import Embedding as QuantizedEmbedding

    seen: set[int] = set()
    total = 0
    for parameter in module.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel() * parameter.element_size()
    for sub in module.modules():
        if isinstance(sub, Int8Linear | DynamicLinear | QuantizedEmbedding) and id(sub) not in seen:
            seen.add(id(sub))
            weight = sub.weight()
            total += weight.numel() * weight.element_size()
            if weight.qscheme() in _PER_CHANNEL:
                for extra in (weight.q_per_channel_scales(), weight.q_per_channel_zero_points()):
                    total += extra.numel() * extra.element_size()
            bias = sub.bias() if isinstance(sub, DynamicLinear) else None
            if bias is not None:
                total += bias.numel() * bias.element_size()
    return total


_PER_CHANNEL: Final = (torch.per_channel_affine, torch.per_channel_affine_float_qparams)
