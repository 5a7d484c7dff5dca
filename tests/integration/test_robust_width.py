"""Width-sharded execution (models/width.py) and the robust coordinator (runtime/robust.py).

In-process: equality with the intact HF model for every family, a lost unit = a zeroed
contribution (checked against HF with that head's W_O rows zeroed), every strategy's no-failure
output equals the intact model, and a silent device's units fail over to the next replica.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    ViTConfig,
    ViTForImageClassification,
)

from edgesplit.api.robust import drill_problem
from edgesplit.models.importance import ablation_importance, finetune, gradient_importance
from edgesplit.models.robust_tasks import RobustTask
from edgesplit.models.width import WidthModel, WidthShard, find_block_list
from edgesplit.planners.robust import (
    RobustProblem,
    StrategySpec,
    place,
)
from edgesplit.planners.robust_objective import SurrogateCalibration
from edgesplit.runtime.executors import ShardExecutor
from edgesplit.runtime.robust import LocalShardBackend, RobustCoordinator, shard_payloads

FAMILIES = ["vit", "bert", "gpt2", "llama"]


def tiny_model(family: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if family == "vit":
        cfg = ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=8,
            patch_size=4,
            num_channels=1,
            num_labels=10,
        )
        return ViTForImageClassification(cfg).eval(), {
            "pixel_values": torch.randn(3, 1, 8, 8, generator=gen)
        }
    if family == "bert":
        cfg = BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=100,
        )
        mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
        return BertModel(cfg).eval(), {
            "input_ids": torch.randint(0, 100, (3, 7), generator=gen),
            "attention_mask": mask,
        }
    if family == "gpt2":
        cfg = GPT2Config(
            n_embd=32, n_layer=2, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0
        )
        return GPT2LMHeadModel(cfg).eval(), {
            "input_ids": torch.randint(0, 100, (3, 7), generator=gen)
        }
    cfg = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    return LlamaForCausalLM(cfg).eval(), {"input_ids": torch.randint(0, 100, (3, 7), generator=gen)}


def reference(model: torch.nn.Module, family: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.last_hidden_state if family == "bert" else out.logits


def valid(family: str, inputs: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    """BERT outputs at padded positions are irrelevant (masked out downstream)."""
    return t[inputs["attention_mask"].bool()] if family == "bert" else t


def synthetic_problem(wm: WidthModel, seed: int = 0) -> RobustProblem:
    """The drill problem with random (seeded) importance, so that tiers differ."""
    rng = np.random.default_rng(seed)
    base = drill_problem(wm, tokens_per_request=7, name="tiny")
    units = tuple(u.model_copy(update={"importance": float(rng.exponential())}) for u in base.units)
    cal = SurrogateCalibration(
        metric_name="accuracy",
        higher_is_better=True,
        intact_metric=1.0,
        chance_metric=0.1,
        lost_importance=(1.0, 5.0),
        measured_metric=(0.8, 0.2),
    )
    return base.model_copy(update={"units": units, "calibration": cal, "hidden_bytes": 1024})


@pytest.mark.parametrize("family", FAMILIES)
def test_width_model_equals_intact_model(family: str) -> None:
    model, inputs = tiny_model(family)
    wm = WidthModel(model, num_ffn_groups=4)
    with torch.no_grad():
        out = wm(inputs)
    ref = reference(model, family, inputs)
    torch.testing.assert_close(
        valid(family, inputs, out), valid(family, inputs, ref), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_lost_head_equals_zeroed_output_rows(family: str) -> None:
    """keep[u] = 0 for attention unit 1 of layer 0 == HF model with those W_O rows zeroed."""
    model, inputs = tiny_model(family)
    wm = WidthModel(model, num_ffn_groups=4)
    unit = next(u for u in wm.units if u.layer_index == 0 and u.kind == "attn" and u.slot == 1)
    with torch.no_grad():
        masked = wm(inputs, wm.keep_from_lost([unit.index]))
        _, blocks = find_block_list(model)
        block = blocks[0]
        width = unit.slot
        if family == "gpt2":
            d = block.attn.head_dim
            block.attn.c_proj.weight[width * d : (width + 1) * d, :] = 0  # Conv1D: (in, out)
        else:
            proj = {
                "vit": lambda b: b.attention.o_proj,
                "bert": lambda b: b.attention.output.dense,
                "llama": lambda b: b.self_attn.o_proj,
            }[family](block)
            cols = proj.weight.shape[1] // wm.layers[0].num_attn_units
            proj.weight[:, width * cols : (width + 1) * cols] = 0
    ref = reference(model, family, inputs)
    torch.testing.assert_close(
        valid(family, inputs, masked), valid(family, inputs, ref), atol=1e-5, rtol=0
    )
    # The lost head must matter, on every family (at valid positions: BERT's padding is ignored).
    change = (valid(family, inputs, masked) - valid(family, inputs, wm(inputs))).abs().max()
    assert change > 1e-4, f"losing a head changed {family}'s output by only {change}"


@pytest.mark.parametrize("family", FAMILIES)
def test_lost_ffn_group_equals_zeroed_down_rows(family: str) -> None:
    model, inputs = tiny_model(family)
    wm = WidthModel(model, num_ffn_groups=4)
    unit = next(u for u in wm.units if u.layer_index == 1 and u.kind == "ffn" and u.slot == 2)
    with torch.no_grad():
        masked = wm(inputs, wm.keep_from_lost([unit.index]))
        _, blocks = find_block_list(model)
        block = blocks[1]
        if family == "gpt2":
            m = block.mlp.c_proj.weight.shape[0] // 4
            block.mlp.c_proj.weight[2 * m : 3 * m, :] = 0
        else:
            proj = {
                "vit": lambda b: b.mlp.fc2,
                "bert": lambda b: b.output.dense,
                "llama": lambda b: b.mlp.down_proj,
            }[family](block)
            m = proj.weight.shape[1] // 4
            proj.weight[:, 2 * m : 3 * m] = 0
    ref = reference(model, family, inputs)
    torch.testing.assert_close(
        valid(family, inputs, masked), valid(family, inputs, ref), atol=1e-5, rtol=0
    )


def test_block_lists_found_by_structure() -> None:
    """transformers 5.x layout (docs/architecture.md §8); fails loudly if an upgrade moves them."""
    for family in FAMILIES:
        model, _ = tiny_model(family)
        found, blocks = find_block_list(model)
        assert found == family
        assert len(blocks) == 2


def test_units_and_bytes_account_for_every_parameter() -> None:
    model, _ = tiny_model("llama")
    wm = WidthModel(model, num_ffn_groups=4)
    # GQA: 2 KV groups per layer are the attention units, 4 FFN groups
    assert [u.kind for u in wm.units[:6]] == ["attn"] * 2 + ["ffn"] * 4
    total = sum(p.numel() for p in model.parameters()) * 4
    assert wm.unit_bytes + wm.shared_bytes == total


SPECS = [
    StrategySpec(name="split"),
    StrategySpec(name="uniform", replication=2),
    StrategySpec(name="tiered", vital_fraction=0.25),
    StrategySpec(name="greedy", memory_copies=0.5),
    StrategySpec(name="ksafe", k=1, memory_copies=0.5),
    StrategySpec(name="full"),
    StrategySpec(name="pipeline", standby=1),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_no_failure_output_of_every_strategy_equals_intact(family: str) -> None:
    model, inputs = tiny_model(family)
    wm = WidthModel(model, num_ffn_groups=4)
    problem = synthetic_problem(wm)
    ref = reference(model, family, inputs)
    devices = [f"dev{i}" for i in range(4)]
    for spec in SPECS:
        replicas = place(spec, problem, 4, [0.1] * 4)
        payloads = shard_payloads(wm, replicas, 4)
        shards = {d: WidthShard.from_arrays(*payloads[i]) for i, d in enumerate(devices)}
        coordinator = RobustCoordinator(wm, devices, replicas, LocalShardBackend(shards))
        out, report = coordinator.forward(inputs)
        assert not report.failed_devices
        torch.testing.assert_close(
            valid(family, inputs, out),
            valid(family, inputs, ref),
            atol=1e-5,
            rtol=0,
            msg=lambda m, s=spec: f"{s.label}: {m}",
        )


@pytest.mark.parametrize("family", ["vit", "llama"])
def test_silent_device_fails_over_and_equals_masked_evaluation(family: str) -> None:
    model, inputs = tiny_model(family)
    wm = WidthModel(model, num_ffn_groups=4)
    replicas = place(
        StrategySpec(name="tiered", vital_fraction=0.5), synthetic_problem(wm), 4, [0.1] * 4
    )
    devices = [f"dev{i}" for i in range(4)]
    payloads = shard_payloads(wm, replicas, 4)
    shards = {d: WidthShard.from_arrays(*payloads[i]) for i, d in enumerate(devices)}
    backend = LocalShardBackend(shards, silent=["dev1", "dev3"])
    coordinator = RobustCoordinator(wm, devices, replicas, backend, deadline_s=0.01)
    out, report = coordinator.forward(inputs)
    lost = {u for u, r in enumerate(replicas) if set(r) <= {1, 3}}
    assert report.lost_units == lost
    assert set(report.failed_devices) == {"dev1", "dev3"}
    assert report.failovers > 0  # vital units on dev1/dev3 moved to their next replica
    with torch.no_grad():
        masked = wm(inputs, wm.keep_from_lost(lost))
    torch.testing.assert_close(out, masked, atol=1e-5, rtol=0)
    assert not torch.allclose(out, reference(model, family, inputs), atol=1e-5)


def test_shard_holds_only_its_units() -> None:
    model, _ = tiny_model("gpt2")
    wm = WidthModel(model, num_ffn_groups=4)
    shard = wm.shard([0, 5])
    assert shard.param_bytes == wm.units[0].param_bytes + wm.units[5].param_bytes
    executor = ShardExecutor(WidthShard.from_arrays(*shard.to_arrays()))
    meta = {"layer": 0, "kind": "attn", "slots": [1]}
    with pytest.raises(KeyError, match="does not hold"):
        executor.run(0, {"hidden": np.zeros((1, 7, 32), np.float32)}, meta)


def tiny_task() -> RobustTask:
    model, _inputs = tiny_model("vit")
    wm = WidthModel(model, num_ffn_groups=4)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(24, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (24,), generator=gen)
    batches = [({"pixel_values": x[i : i + 8]}, y[i : i + 8]) for i in range(0, 24, 8)]
    return RobustTask("tiny", wm, "accuracy", True, batches, batches, batches)


def test_importance_of_a_silent_unit_is_zero() -> None:
    task = tiny_task()
    layer = task.model.layers[0]
    with torch.no_grad():
        layer.wo[1].zero_()  # attention unit 1 of layer 0 now contributes nothing
    d_loss, d_metric = ablation_importance(task)
    grad = gradient_importance(task)
    assert d_loss.shape == grad.shape == (task.model.num_units,)
    assert d_loss[1] == 0.0
    assert d_metric[1] == 0.0
    assert grad[1] == 0.0
    assert np.abs(d_loss).sum() > 0


def test_failout_and_control_train_the_same_steps_differently() -> None:
    task = tiny_task()
    before = [p.detach().clone() for p in task.model.parameters()]
    keep = np.ones(task.model.num_units, dtype=np.float32)
    keep[:4] = 0.0
    failout = finetune(task, steps=4, keep_sampler=lambda rng: keep, seed=0)
    control = finetune(task, steps=4, keep_sampler=None, seed=0)
    # the task's own model is untouched (fine-tuning works on copies)
    assert all(torch.equal(a, b) for a, b in zip(before, task.model.parameters(), strict=True))
    a = failout.task.model.layers[0].wo
    b = control.task.model.layers[0].wo
    assert not torch.allclose(a, b)
    # failout never updates the masked units' output rows (their gradient is zero)
    torch.testing.assert_close(a[:4], task.model.layers[0].wo[:4])
    assert failout.masked
    assert not control.masked
