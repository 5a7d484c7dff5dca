"""Width-sharded execution of transformer blocks (EASTER, Megatron-style tensor parallelism).

Owns `WidthModel` (a HF ViT / BERT / GPT-2 / Llama model re-expressed as per-unit weights),
`WidthUnit` (one attention head or KV group, or one FFN neuron group), masked evaluation for any
lost-unit set, and `WidthShard` (the slice of units one device holds, returning partial sums).
Imports torch and transformers; never ray or planners.

[Note: width units] A layer's attention output is Σ_h softmax(q_h k_hᵀ/√d) v_h W_O[h] + b_O, so
each head (Q/K/V columns + W_O rows) contributes one additive term; with GQA the unit is a KV
group together with the query heads that share it. An FFN's output is Σ_g act(x W1[:, g]) W2[g, :]
+ b2, so each neuron group (W1 columns + W2 rows; + gate columns for SwiGLU) is one term. Biases
b_O and b2, norms, embeddings and the head are shared parts and live on the coordinator. A lost
unit contributes zero, so the masked forward with `keep[u] = 0` is exactly what a distributed run
computes when no live device holds u.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from transformers.activations import ACT2FN

__all__ = [
    "Family",
    "UnitKind",
    "WidthContext",
    "WidthLayer",
    "WidthModel",
    "WidthShard",
    "WidthUnit",
    "find_block_list",
]

Family = Literal["vit", "bert", "gpt2", "llama"]
UnitKind = Literal["attn", "ffn"]
BYTES_PER_PARAM = 4  # float32


@dataclass(frozen=True, slots=True)
class WidthUnit:
    """One width unit: an attention head (or GQA KV group) or an FFN neuron group."""

    index: int
    layer_index: int
    kind: UnitKind
    slot: int  # head / KV-group index or neuron-group index within the layer
    param_bytes: int
    flops_per_token: int  # multiply-adds x2 of its projections (attention scores excluded)

    @property
    def name(self) -> str:
        part = "head" if self.kind == "attn" else "group"
        return f"layer{self.layer_index}.{self.kind}.{part}{self.slot}"


@dataclass
class WidthContext:
    """What every shard needs besides the hidden state: the additive attention mask and RoPE."""

    attn_bias: torch.Tensor | None  # (B, 1, 1, T, T) or (1, 1, 1, T, T) additive, or None
    rope_cos: torch.Tensor | None  # (B, T, d) for Llama, else None
    rope_sin: torch.Tensor | None


def find_block_list(model: nn.Module) -> tuple[Family, nn.ModuleList]:
    """The transformer block list, found by structure (docs/architecture.md §8)."""
    name = type(model).__name__.lower()
    candidates: list[tuple[Family, str]] = [
        ("vit", "vit.layers"),
        ("vit", "layers"),
        ("bert", "encoder.layer"),
        ("bert", "bert.encoder.layer"),
        ("gpt2", "transformer.h"),
        ("gpt2", "h"),
        ("llama", "model.layers"),
    ]
    for family, path in candidates:
        if family not in name:
            continue
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return family, obj
    raise ValueError(
        f"cannot find the block list of {type(model).__name__}; supported: ViT, BERT, GPT-2, "
        "Llama in transformers 5.23 (vit.layers, encoder.layer, transformer.h, model.layers)"
    )


def _split_cols(weight: torch.Tensor, num_units: int) -> torch.Tensor:
    """nn.Linear weight (out, in) -> per-unit column blocks (U, in, out/U)."""
    out_features, in_features = weight.shape
    return (
        weight.detach()
        .t()
        .reshape(in_features, num_units, out_features // num_units)
        .permute(1, 0, 2)
    )


def _split_rows(weight: torch.Tensor, num_units: int) -> torch.Tensor:
    """nn.Linear weight (out, in) -> per-unit row blocks of Wᵀ (U, in/U, out)."""
    out_features, in_features = weight.shape
    return weight.detach().t().reshape(num_units, in_features // num_units, out_features)


def _split_bias(bias: torch.Tensor | None, num_units: int) -> torch.Tensor | None:
    return None if bias is None else bias.detach().reshape(num_units, -1)


def _param(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t.clone().contiguous())


class WidthLayer(nn.Module):
    """One block's width units as stacked tensors, plus its shared norms and output biases."""

    def __init__(
        self,
        *,
        norm_attn: nn.Module,
        norm_ffn: nn.Module,
        post_norm: bool,
        wq: torch.Tensor,
        bq: torch.Tensor | None,
        wk: torch.Tensor,
        bk: torch.Tensor | None,
        wv: torch.Tensor,
        bv: torch.Tensor | None,
        wo: torch.Tensor,
        bo: torch.Tensor | None,
        w1: torch.Tensor,
        b1: torch.Tensor | None,
        wg: torch.Tensor | None,
        w2: torch.Tensor,
        b2: torch.Tensor | None,
        head_dim: int,
        heads_per_unit: int,
        scaling: float,
        activation: nn.Module,
        activation_name: str,
    ) -> None:
        super().__init__()
        self.norm_attn = norm_attn
        self.norm_ffn = norm_ffn
        self.post_norm = post_norm
        self.wq, self.bq = _param(wq), _param(bq)  # (U, C, r·d), (U, r·d)
        self.wk, self.bk = _param(wk), _param(bk)  # (U, C, d), (U, d)
        self.wv, self.bv = _param(wv), _param(bv)
        self.wo = _param(wo)  # (U, r·d, C)
        self.bo = _param(bo)  # (C,) shared
        self.w1, self.b1 = _param(w1), _param(b1)  # (G, C, m), (G, m)
        self.wg = _param(wg)  # (G, C, m) SwiGLU gate, or None
        self.w2 = _param(w2)  # (G, m, C)
        self.b2 = _param(b2)  # (C,) shared
        self.head_dim = head_dim
        self.heads_per_unit = heads_per_unit
        self.scaling = scaling
        self.activation = activation
        self.activation_name = activation_name  # key of transformers' ACT2FN

    @property
    def num_attn_units(self) -> int:
        assert self.wq is not None
        return int(self.wq.shape[0])

    @property
    def num_ffn_units(self) -> int:
        assert self.w1 is not None
        return int(self.w1.shape[0])

    def attn_contributions(
        self, x: torch.Tensor, ctx: WidthContext, keep: torch.Tensor | None
    ) -> torch.Tensor:
        """Σ_u keep[u]·head_u(x): x (B, T, C) already normed -> (B, T, C), biases excluded."""
        assert self.wq is not None
        assert self.wk is not None
        assert self.wv is not None
        assert self.wo is not None
        B, T, _ = x.shape
        U, r, d = self.num_attn_units, self.heads_per_unit, self.head_dim
        q = torch.einsum("btc,ucd->butd", x, self.wq)  # (B, U, T, r·d)
        k = torch.einsum("btc,ucd->butd", x, self.wk)  # (B, U, T, d)
        v = torch.einsum("btc,ucd->butd", x, self.wv)
        if self.bq is not None:
            q = q + self.bq[None, :, None, :]
        if self.bk is not None:
            k = k + self.bk[None, :, None, :]
        if self.bv is not None:
            v = v + self.bv[None, :, None, :]
        q = q.reshape(B, U, T, r, d).transpose(2, 3)  # (B, U, r, T, d)
        k = k[:, :, None]  # (B, U, 1, T, d)
        v = v[:, :, None]
        if ctx.rope_cos is not None and ctx.rope_sin is not None:
            cos = ctx.rope_cos[:, None, None]  # (B, 1, 1, T, d)
            sin = ctx.rope_sin[:, None, None]
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scaling  # (B, U, r, T, T)
        if ctx.attn_bias is not None:
            scores = scores + ctx.attn_bias
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        heads = torch.matmul(probs, v)  # (B, U, r, T, d)
        heads = heads.transpose(2, 3).reshape(B, U, T, r * d)
        if keep is None:
            return torch.einsum("butk,ukc->btc", heads, self.wo)
        return torch.einsum("butk,ukc,u->btc", heads, self.wo, keep)

    def ffn_contributions(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Σ_g keep[g]·group_g(x): x (B, T, C) already normed -> (B, T, C), b2 excluded."""
        assert self.w1 is not None
        assert self.w2 is not None
        h = torch.einsum("btc,gcm->bgtm", x, self.w1)  # (B, G, T, m)
        if self.b1 is not None:
            h = h + self.b1[None, :, None, :]
        if self.wg is not None:  # SwiGLU: act(gate) * up
            h = self.activation(torch.einsum("btc,gcm->bgtm", x, self.wg)) * h
        else:
            h = self.activation(h)
        if keep is None:
            return torch.einsum("bgtm,gmc->btc", h, self.w2)
        return torch.einsum("bgtm,gmc,g->btc", h, self.w2, keep)

    # The coordinator's side of a block: norms, shared biases and residuals around the sums.
    def attn_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.post_norm else self.norm_attn(x)

    def attn_output(self, x: torch.Tensor, partial_sum: torch.Tensor) -> torch.Tensor:
        y = partial_sum if self.bo is None else partial_sum + self.bo
        return self.norm_attn(y + x) if self.post_norm else x + y

    def ffn_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.post_norm else self.norm_ffn(x)

    def ffn_output(self, x: torch.Tensor, partial_sum: torch.Tensor) -> torch.Tensor:
        y = partial_sum if self.b2 is None else partial_sum + self.b2
        return self.norm_ffn(y + x) if self.post_norm else x + y

    def forward(
        self,
        x: torch.Tensor,
        ctx: WidthContext,
        keep_attn: torch.Tensor | None = None,
        keep_ffn: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.attn_output(x, self.attn_contributions(self.attn_input(x), ctx, keep_attn))
        return self.ffn_output(x, self.ffn_contributions(self.ffn_input(x), keep_ffn))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _gpt2_linear(conv: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT-2 Conv1D stores weight as (in, out); return nn.Linear layout (out, in) and bias."""
    return conv.weight.detach().t(), conv.bias.detach()


class WidthModel(nn.Module):
    """A HF model whose blocks run as sums of width units; `keep` masks any lost-unit set.

    Args:
        hf_model: ViTForImageClassification, BertModel, GPT2LMHeadModel or LlamaForCausalLM
            (transformers 5.23), in eval mode. Embeddings, norms and heads are shared with it.
        num_ffn_groups: neuron groups per FFN (the intermediate size must divide evenly).

    Example:
        >>> wm = WidthModel(hf_model, num_ffn_groups=8)
        >>> keep = torch.ones(wm.num_units); keep[3] = 0   # lose unit 3
        >>> out = wm(inputs, keep)
    """

    def __init__(self, hf_model: nn.Module, num_ffn_groups: int = 8) -> None:
        super().__init__()
        family, blocks = find_block_list(hf_model)
        self.family: Family = family
        self.hf_model = hf_model
        config = hf_model.config
        self.layers = nn.ModuleList(
            [self._convert(block, config, num_ffn_groups) for block in blocks]
        )
        units: list[WidthUnit] = []
        self.layer_offsets: list[tuple[int, int, int]] = []  # (attn start, ffn start, end)
        for i, layer in enumerate(self.layers):
            assert isinstance(layer, WidthLayer)
            start = len(units)
            attn_params = sum(
                int(t[0].numel())
                for t in (layer.wq, layer.bq, layer.wk, layer.bk, layer.wv, layer.bv, layer.wo)
                if t is not None
            )
            attn_flops = 2 * sum(
                int(t[0].numel()) for t in (layer.wq, layer.wk, layer.wv, layer.wo) if t is not None
            )
            for slot in range(layer.num_attn_units):
                units.append(
                    WidthUnit(
                        len(units), i, "attn", slot, attn_params * BYTES_PER_PARAM, attn_flops
                    )
                )
            ffn_start = len(units)
            ffn_params = sum(
                int(t[0].numel()) for t in (layer.w1, layer.b1, layer.wg, layer.w2) if t is not None
            )
            ffn_flops = 2 * sum(
                int(t[0].numel()) for t in (layer.w1, layer.wg, layer.w2) if t is not None
            )
            for slot in range(layer.num_ffn_units):
                units.append(
                    WidthUnit(len(units), i, "ffn", slot, ffn_params * BYTES_PER_PARAM, ffn_flops)
                )
            self.layer_offsets.append((start, ffn_start, len(units)))
        self.units: tuple[WidthUnit, ...] = tuple(units)
        unit_bytes = sum(u.param_bytes for u in units)
        total_bytes = sum(p.numel() for p in hf_model.parameters()) * BYTES_PER_PARAM
        self.unit_bytes = unit_bytes
        # Shared bytes: everything the coordinator keeps (embeddings, norms, biases, head).
        self.shared_bytes = max(0, total_bytes - unit_bytes)

    @property
    def num_units(self) -> int:
        return len(self.units)

    @property
    def hidden_size(self) -> int:
        layer = self.layers[0]
        assert isinstance(layer, WidthLayer)
        assert layer.wq is not None
        return int(layer.wq.shape[1])

    # -- conversion ---------------------------------------------------------------------------

    def _convert(self, block: Any, config: Any, num_groups: int) -> WidthLayer:
        cfg = config
        if self.family == "vit":
            att, mlp = block.attention, block.mlp
            H = cfg.num_attention_heads
            d = att.head_dim
            return WidthLayer(
                norm_attn=block.layernorm_before,
                norm_ffn=block.layernorm_after,
                post_norm=False,
                wq=_split_cols(att.q_proj.weight, H),
                bq=_split_bias(att.q_proj.bias, H),
                wk=_split_cols(att.k_proj.weight, H),
                bk=_split_bias(att.k_proj.bias, H),
                wv=_split_cols(att.v_proj.weight, H),
                bv=_split_bias(att.v_proj.bias, H),
                wo=_split_rows(att.o_proj.weight, H),
                bo=att.o_proj.bias.detach(),
                w1=_split_cols(mlp.fc1.weight, num_groups),
                b1=_split_bias(mlp.fc1.bias, num_groups),
                wg=None,
                w2=_split_rows(mlp.fc2.weight, num_groups),
                b2=mlp.fc2.bias.detach(),
                head_dim=d,
                heads_per_unit=1,
                scaling=att.scaling,
                activation=mlp.activation_fn,
                activation_name=cfg.hidden_act,
            )
        if self.family == "bert":
            sa, so = block.attention.self, block.attention.output
            H = sa.num_attention_heads
            return WidthLayer(
                norm_attn=so.LayerNorm,
                norm_ffn=block.output.LayerNorm,
                post_norm=True,
                wq=_split_cols(sa.query.weight, H),
                bq=_split_bias(sa.query.bias, H),
                wk=_split_cols(sa.key.weight, H),
                bk=_split_bias(sa.key.bias, H),
                wv=_split_cols(sa.value.weight, H),
                bv=_split_bias(sa.value.bias, H),
                wo=_split_rows(so.dense.weight, H),
                bo=so.dense.bias.detach(),
                w1=_split_cols(block.intermediate.dense.weight, num_groups),
                b1=_split_bias(block.intermediate.dense.bias, num_groups),
                wg=None,
                w2=_split_rows(block.output.dense.weight, num_groups),
                b2=block.output.dense.bias.detach(),
                head_dim=sa.attention_head_size,
                heads_per_unit=1,
                scaling=sa.scaling,
                activation=block.intermediate.intermediate_act_fn,
                activation_name=cfg.hidden_act,
            )
        if self.family == "gpt2":
            att, mlp = block.attn, block.mlp
            H = att.num_heads
            w_qkv, b_qkv = _gpt2_linear(att.c_attn)  # (3C, C), (3C,)
            C = w_qkv.shape[1]
            wq, wk, wv = w_qkv[:C], w_qkv[C : 2 * C], w_qkv[2 * C :]
            bq, bk, bv = b_qkv[:C], b_qkv[C : 2 * C], b_qkv[2 * C :]
            w_o, b_o = _gpt2_linear(att.c_proj)
            w_fc, b_fc = _gpt2_linear(mlp.c_fc)
            w_pr, b_pr = _gpt2_linear(mlp.c_proj)
            return WidthLayer(
                norm_attn=block.ln_1,
                norm_ffn=block.ln_2,
                post_norm=False,
                wq=_split_cols(wq, H),
                bq=_split_bias(bq, H),
                wk=_split_cols(wk, H),
                bk=_split_bias(bk, H),
                wv=_split_cols(wv, H),
                bv=_split_bias(bv, H),
                wo=_split_rows(w_o, H),
                bo=b_o,
                w1=_split_cols(w_fc, num_groups),
                b1=_split_bias(b_fc, num_groups),
                wg=None,
                w2=_split_rows(w_pr, num_groups),
                b2=b_pr,
                head_dim=att.head_dim,
                heads_per_unit=1,
                scaling=att.scaling,
                activation=mlp.act,
                activation_name=cfg.activation_function,
            )
        # llama: GQA, a unit is one KV group with the query heads that share it
        att, mlp = block.self_attn, block.mlp
        num_kv = cfg.num_key_value_heads
        num_heads = cfg.num_attention_heads
        return WidthLayer(
            norm_attn=block.input_layernorm,
            norm_ffn=block.post_attention_layernorm,
            post_norm=False,
            wq=_split_cols(att.q_proj.weight, num_kv),
            bq=_split_bias(att.q_proj.bias, num_kv),
            wk=_split_cols(att.k_proj.weight, num_kv),
            bk=_split_bias(att.k_proj.bias, num_kv),
            wv=_split_cols(att.v_proj.weight, num_kv),
            bv=_split_bias(att.v_proj.bias, num_kv),
            wo=_split_rows(att.o_proj.weight, num_kv),
            bo=None if att.o_proj.bias is None else att.o_proj.bias.detach(),
            w1=_split_cols(mlp.up_proj.weight, num_groups),
            b1=_split_bias(mlp.up_proj.bias, num_groups),
            wg=_split_cols(mlp.gate_proj.weight, num_groups),
            w2=_split_rows(mlp.down_proj.weight, num_groups),
            b2=None if mlp.down_proj.bias is None else mlp.down_proj.bias.detach(),
            head_dim=att.head_dim,
            heads_per_unit=num_heads // num_kv,
            scaling=att.scaling,
            activation=mlp.act_fn,
            activation_name=cfg.hidden_act,
        )

    # -- coordinator: shared parts ------------------------------------------------------------

    def embed(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, WidthContext]:
        """Model inputs -> first hidden state (B, T, C) and the context shards need."""
        m: Any = self.hf_model
        if self.family == "vit":
            hidden = m.vit.embeddings(inputs["pixel_values"])
            return hidden, WidthContext(None, None, None)
        if self.family == "bert":
            bert = m if hasattr(m, "embeddings") else m.bert
            ids = inputs["input_ids"]
            hidden = bert.embeddings(input_ids=ids, token_type_ids=inputs.get("token_type_ids"))
            mask = inputs.get("attention_mask")
            bias = None
            if mask is not None:
                neg = torch.finfo(hidden.dtype).min
                bias = (1.0 - mask[:, None, None, None, :].to(hidden.dtype)) * neg
            return hidden, WidthContext(bias, None, None)
        ids = inputs["input_ids"]
        T = ids.shape[1]
        causal = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)[None, None, None]
        if self.family == "gpt2":
            tr = m.transformer
            pos = torch.arange(T)[None]
            hidden = tr.wte(ids) + tr.wpe(pos)
            return hidden, WidthContext(causal, None, None)
        model = m.model
        hidden = model.embed_tokens(ids)
        pos = torch.arange(T)[None].expand(ids.shape[0], T)
        cos, sin = model.rotary_emb(hidden, pos)  # (B, T, d)
        return hidden, WidthContext(causal, cos, sin)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Last hidden state -> output: ViT logits, BERT last hidden state, LM logits."""
        m: Any = self.hf_model
        if self.family == "vit":
            return m.classifier(m.vit.layernorm(hidden)[:, 0, :])
        if self.family == "bert":
            return hidden
        if self.family == "gpt2":
            return m.lm_head(m.transformer.ln_f(hidden))
        return m.lm_head(m.model.norm(hidden))

    # -- masked evaluation --------------------------------------------------------------------

    def keep_from_lost(self, lost: set[int] | list[int] | tuple[int, ...]) -> torch.Tensor:
        keep = torch.ones(self.num_units)
        if lost:
            keep[torch.as_tensor(sorted(lost), dtype=torch.long)] = 0.0
        return keep

    def forward(
        self, inputs: dict[str, torch.Tensor], keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Masked single-process evaluation: unit u contributes keep[u]·(its term)."""
        hidden, ctx = self.embed(inputs)
        for layer, (a, f, e) in zip(self.layers, self.layer_offsets, strict=True):
            ka = None if keep is None else keep[a:f]
            kf = None if keep is None else keep[f:e]
            hidden = layer(hidden, ctx, ka, kf)
        return self.head(hidden)

    def shard(self, unit_indices: Sequence[int]) -> WidthShard:
        """The weights of `unit_indices` only, as a device would hold them."""
        return WidthShard.from_model(self, unit_indices)


class WidthShard(nn.Module):
    """One device's units: per (layer, kind) the sliced weights; returns partial sums.

    Holds no embeddings, norms or shared biases (those stay on the coordinator). Crosses a
    process boundary as plain data: `to_arrays()` -> (meta dict, name -> numpy array).
    """

    def __init__(self, parts: dict[tuple[int, str], tuple[list[int], WidthLayer]]) -> None:
        super().__init__()
        self.slots: dict[tuple[int, str], list[int]] = {}
        self.parts = nn.ModuleDict()
        for (layer_index, kind), (slots, layer) in sorted(parts.items()):
            self.slots[(layer_index, kind)] = list(slots)
            self.parts[f"{layer_index}_{kind}"] = layer
        self.param_bytes = sum(p.numel() for p in self.parameters()) * BYTES_PER_PARAM

    @classmethod
    def from_model(cls, model: WidthModel, unit_indices: Sequence[int]) -> WidthShard:
        wanted = set(unit_indices)
        parts: dict[tuple[int, str], tuple[list[int], WidthLayer]] = {}
        for layer_index, (layer, (a, f, e)) in enumerate(
            zip(model.layers, model.layer_offsets, strict=True)
        ):
            assert isinstance(layer, WidthLayer)
            for kind, lo, hi in (("attn", a, f), ("ffn", f, e)):
                slots = [u - lo for u in range(lo, hi) if u in wanted]
                if slots:
                    parts[(layer_index, kind)] = (slots, _slice_layer(layer, kind, slots))
        return cls(parts)

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, arrays): plain data a shard actor rebuilds itself from (`from_arrays`)."""
        meta: dict[str, Any] = {"parts": []}
        arrays: dict[str, np.ndarray] = {}
        for (layer_index, kind), slots in self.slots.items():
            part = self.parts[f"{layer_index}_{kind}"]
            assert isinstance(part, WidthLayer)
            meta["parts"].append(
                {
                    "layer_index": layer_index,
                    "kind": kind,
                    "slots": slots,
                    "head_dim": part.head_dim,
                    "heads_per_unit": part.heads_per_unit,
                    "scaling": part.scaling,
                    "activation": part.activation_name,
                }
            )
            for name in _TENSOR_NAMES:
                t = getattr(part, name)
                if t is not None:
                    arrays[f"{layer_index}_{kind}.{name}"] = t.detach().numpy().copy()
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> WidthShard:
        parts: dict[tuple[int, str], tuple[list[int], WidthLayer]] = {}
        for info in meta["parts"]:
            key = f"{info['layer_index']}_{info['kind']}"

            def get(name: str, key: str = key) -> torch.Tensor | None:
                value = arrays.get(f"{key}.{name}")
                return None if value is None else torch.from_numpy(np.asarray(value).copy())

            def need(name: str, key: str = key) -> torch.Tensor:
                value = get(name, key)
                assert value is not None, f"shard arrays lack {key}.{name}"
                return value

            layer = WidthLayer(
                norm_attn=nn.Identity(),
                norm_ffn=nn.Identity(),
                post_norm=False,
                wq=need("wq"),
                bq=get("bq"),
                wk=need("wk"),
                bk=get("bk"),
                wv=need("wv"),
                bv=get("bv"),
                wo=need("wo"),
                bo=None,
                w1=need("w1"),
                b1=get("b1"),
                wg=get("wg"),
                w2=need("w2"),
                b2=None,
                head_dim=int(info["head_dim"]),
                heads_per_unit=int(info["heads_per_unit"]),
                scaling=float(info["scaling"]),
                activation=ACT2FN[info["activation"]],
                activation_name=str(info["activation"]),
            )
            parts[(int(info["layer_index"]), str(info["kind"]))] = (list(info["slots"]), layer)
        return cls(parts)

    def holds(self, layer_index: int, kind: str) -> list[int]:
        """Slots (within the layer part) this shard holds."""
        return self.slots.get((layer_index, kind), [])

    @torch.no_grad()
    def partial(
        self,
        layer_index: int,
        kind: UnitKind,
        x: torch.Tensor,
        ctx: WidthContext,
        slots: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Σ over `slots` (default: all held) of this layer part's unit terms; x (B, T, C)."""
        held = self.slots.get((layer_index, kind), [])
        wanted = set(held if slots is None else slots)
        missing = sorted(wanted - set(held))
        if missing:
            raise KeyError(f"shard does not hold layer {layer_index} {kind} slots {missing}")
        keep = torch.tensor([1.0 if s in wanted else 0.0 for s in held])
        part = self.parts[f"{layer_index}_{kind}"]
        assert isinstance(part, WidthLayer)
        if kind == "attn":
            return part.attn_contributions(x, ctx, keep)
        return part.ffn_contributions(x, keep)


_TENSOR_NAMES = ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "w1", "b1", "wg", "w2")


def _slice_layer(layer: WidthLayer, kind: str, slots: list[int]) -> WidthLayer:
    """A WidthLayer holding only `slots` of one part (the other part empty), no shared parts."""
    idx = torch.as_tensor(slots, dtype=torch.long)

    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach()[idx]

    def empty(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach()[:0]

    use = pick if kind == "attn" else empty
    use_f = pick if kind == "ffn" else empty
    wq, wk, wv, wo = use(layer.wq), use(layer.wk), use(layer.wv), use(layer.wo)
    w1, w2 = use_f(layer.w1), use_f(layer.w2)
    assert wq is not None
    assert wk is not None
    assert wv is not None
    assert wo is not None
    assert w1 is not None
    assert w2 is not None
    return WidthLayer(
        norm_attn=nn.Identity(),
        norm_ffn=nn.Identity(),
        post_norm=layer.post_norm,
        wq=wq,
        bq=use(layer.bq),
        wk=wk,
        bk=use(layer.bk),
        wv=wv,
        bv=use(layer.bv),
        wo=wo,
        bo=None,
        w1=w1,
        b1=use_f(layer.b1),
        wg=use_f(layer.wg),
        w2=w2,
        b2=None,
        head_dim=layer.head_dim,
        heads_per_unit=layer.heads_per_unit,
        scaling=layer.scaling,
        activation=layer.activation,
        activation_name=layer.activation_name,
    )
