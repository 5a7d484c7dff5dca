"""Generation across devices (issue 7): correctness, kill -9 recovery, emulated Wi-Fi/Ethernet.

Sections (all by default; `--sections a,b` reruns some and keeps the others from the last JSON):
- correctness: greedy (and seeded sampling) tokens from 2-, 3- and 4-stage real-compute pipelines
  of stage processes vs the unsplit model in one process: SmolLM2-135M (real weights, when
  `make models` built it), GPT-2 tiny (seeded) and the KJV byte-level GPT-2 (when built).
- failures: kill -9 of a stage actor's process mid-generation (first, middle, last stage; >= 3 trials),
  warm standby takes over and replays the driver's tokens; detection, recovery, replayed tokens.
- emulated: GPT-2 (124M shape) decode/prefill unit times measured here, then emulated devices
  (sleep the profiled time, real-size hidden states over shaped links): Wi-Fi-like 50 Mbps / 3 ms
  and Ethernet-like 1 Gbps / 0.2 ms; time per token and tokens/s vs devices (1-4) and concurrent
  sequences (1-8), against the planner's prediction; the planner's own pick per setting.
- decode_speed (on demand): SmolLM2-135M ms/token through the pipeline on 1 and 2 stages vs the
  unsplit model, with the host's one-row kernel (models/one_row.py) and with torch's plain one
  forced (the runtime's cost alone), and with --baseline REV vs REV's pipeline, interleaved
  round by round.
- recovery (on demand): a hang of the middle stage (`--fault stop:b@2`) through the CLI,
  SmolLM2-135M on 3 stages, with a warm standby and without (restart on the same device), each
  run a fresh process; with --baseline REV, REV's CLI alternated run by run.

    .venv/bin/python benchmarks/generation.py [--sections correctness,failures,emulated]
    .venv/bin/python benchmarks/generation.py --sections decode_speed --rounds 6 --baseline 6c527b0
    .venv/bin/python benchmarks/generation.py --sections recovery --rounds 3 --baseline bce48ba

Writes benchmarks/results/generation.json and docs/generation_decode.png. One torch thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, RESULTS, ROOT, write_result
from edgesplit.api.generation import measure_generation_profile
from edgesplit.core.cluster import Cluster, DeviceSpec, LinkDefaults
from edgesplit.core.plan import StagePlacement
from edgesplit.models import build_model, model_spec_from_name, unit_names
from edgesplit.models.kv_stage import Sampling, generate_unsplit
from edgesplit.models.smollm2 import find_smollm2_checkpoint
from edgesplit.planners.generation import (
    GenerationProfile,
    plan_generation,
    predict_generation,
)
from edgesplit.runtime.config import RuntimeConfig
from edgesplit.runtime.generation import (
    GenerationConfig,
    GenerationPipeline,
    GenerationRequest,
    StageTiming,
)

COMMAND = "python benchmarks/generation.py"
NEW_TOKENS = 64
LINKS = {"wifi": (50.0, 3.0), "ethernet": (1000.0, 0.2)}  # Mbps, ms
DEVICE_COUNTS = (1, 2, 3, 4)
SEQUENCES = (1, 2, 4, 8)
EMULATED_NEW_TOKENS = 24
EMULATED_PROMPT = 16


def _cuts(num_units: int, num_stages: int) -> list[int]:
    return [round(i * num_units / num_stages) for i in range(num_stages + 1)]


# -- correctness ---------------------------------------------------------------------------------
def _correctness_model(name: str, label: str, prompt: list[int], sampled: bool) -> dict[str, Any]:
    spec = model_spec_from_name(name)
    n = len(unit_names(spec))
    requests = [GenerationRequest(prompt_ids=prompt, max_new_tokens=NEW_TOKENS)]
    if sampled:
        requests.append(
            GenerationRequest(prompt_ids=prompt, max_new_tokens=NEW_TOKENS, temperature=0.8, seed=3)
        )
    model = build_model(spec)
    began = time.perf_counter()
    references = [
        generate_unsplit(
            model, r.prompt_ids, NEW_TOKENS, Sampling(r.temperature, r.top_k, r.seed), i
        )
        for i, r in enumerate(requests)
    ]
    unsplit_s = (time.perf_counter() - began) / len(requests)
    del model
    rows = []
    devices = ["a", "b", "c", "d"]
    with GenerationPipeline(
        spec, [("a", 0, n)], GenerationConfig(max_concurrent=2), num_units=n
    ) as pipe:
        for stages in (2, 3, 4):
            cuts = _cuts(n, stages)
            pipe.restage([(devices[i], cuts[i], cuts[i + 1]) for i in range(stages)])
            report = pipe.generate(requests)
            rows.append(
                {
                    "num_stages": stages,
                    "cuts": cuts,
                    "greedy_equal": report.sequences[0].new_ids == references[0],
                    "sampled_equal": (report.sequences[1].new_ids == references[1])
                    if sampled
                    else None,
                    "new_tokens_per_sequence": len(report.sequences[0].new_ids),
                    "time_per_token_s": report.time_per_token_s,
                    "tokens_per_s": report.tokens_per_s,
                }
            )
            print(label, rows[-1], flush=True)
    return {
        "model": label,
        "source": name,
        "num_units": n,
        "prompt_ids": prompt,
        "greedy_reference_head": references[0][:16],
        "distinct_greedy_tokens": len(set(references[0])),
        "unsplit_generate_s_per_sequence": unsplit_s,
        "pipelines": rows,
    }


def correctness() -> dict[str, Any]:
    results = []
    smollm2 = find_smollm2_checkpoint([ROOT / "checkpoints" / "smollm2-135m"])
    if smollm2 is not None:
        from edgesplit.api.generation import tokenizer_for

        prompt = tokenizer_for(str(smollm2)).encode("The capital of France is")
        results.append(_correctness_model(str(smollm2), "smollm2-135m", prompt, sampled=False))
    results.append(_correctness_model("gpt2-tiny", "gpt2-tiny", [5, 6, 7], sampled=True))
    kjv = ROOT / "checkpoints" / "gpt2-kjv"
    if (kjv / "model.safetensors").is_file():
        prompt = list(b"And God said, ")
        results.append(_correctness_model(str(kjv), "gpt2-kjv", prompt, sampled=True))
    return {"models": results, "skipped": [] if smollm2 else ["smollm2-135m (run make models)"]}


# -- failures ------------------------------------------------------------------------------------
def failures() -> dict[str, Any]:
    kjv = ROOT / "checkpoints" / "gpt2-kjv"
    name = str(kjv) if (kjv / "model.safetensors").is_file() else "gpt2-tiny"
    prompt = list(b"And God said, ") if name != "gpt2-tiny" else [5, 6, 7]
    out = _failures(name, "gpt2-kjv" if name != "gpt2-tiny" else "gpt2-tiny", prompt)
    smollm2 = find_smollm2_checkpoint([ROOT / "checkpoints" / "smollm2-135m"])
    if smollm2 is not None:
        from edgesplit.api.generation import tokenizer_for

        smol_prompt = tokenizer_for(str(smollm2)).encode("The capital of France is")
        out["smollm2"] = _failures(str(smollm2), "smollm2-135m", smol_prompt)
    return out


def _failures(name: str, label: str, prompt: list[int], trials: int = 3) -> dict[str, Any]:
    spec = model_spec_from_name(name)
    n = len(unit_names(spec))
    requests = [
        GenerationRequest(prompt_ids=prompt, max_new_tokens=NEW_TOKENS),
        GenerationRequest(prompt_ids=prompt, max_new_tokens=NEW_TOKENS, temperature=0.8, seed=3),
    ]
    model = build_model(spec)
    references = [
        generate_unsplit(
            model, r.prompt_ids, NEW_TOKENS, Sampling(r.temperature, r.top_k, r.seed), i
        )
        for i, r in enumerate(requests)
    ]
    cuts = _cuts(n, 3)
    stages = [(f"d{i}", cuts[i], cuts[i + 1]) for i in range(3)]
    standbys = tuple(f"s{i}" for i in range(trials))
    config = GenerationConfig(
        max_concurrent=2, runtime=RuntimeConfig(compute="real", standby_devices=standbys)
    )
    rows = []
    with GenerationPipeline(spec, stages, config, num_units=n) as pipe:
        uninterrupted = pipe.generate(requests)
        for trial in range(trials):
            victim = pipe.stages[trial % 3][0]
            killed = threading.Event()
            counts = [0]

            def on_token(
                sequence_id: int,
                _: int,
                victim: str = victim,
                killed: threading.Event = killed,
                counts: list[int] = counts,
            ) -> None:
                counts[0] += sequence_id == 0
                if not killed.is_set() and counts[0] == 24:
                    killed.set()
                    pipe.fault(victim, "kill")

            report = pipe.generate(requests, on_token=on_token)
            (failure,) = report.failures
            rows.append(
                {
                    "trial": trial,
                    "killed_stage": trial % 3,
                    "device": victim,
                    "replacement": failure.new_stages[trial % 3].device,
                    "cause": failure.cause,
                    "same_output": [s.new_ids for s in report.sequences] == references,
                    "detected_after_s": failure.detected_after_s,
                    "recovered_after_s": failure.recovered_after_s,
                    "replayed_tokens": failure.replayed,
                    "elapsed_s": report.elapsed_s,
                }
            )
            print("failure", rows[-1], flush=True)
    recovery = [r["recovered_after_s"] for r in rows]
    return {
        "model": label,
        "stages": 3,
        "sequences": len(requests),
        "new_tokens_per_sequence": NEW_TOKENS,
        "kill_after_tokens_of_sequence_0": 24,
        "uninterrupted_equal": [s.new_ids for s in uninterrupted.sequences] == references,
        "uninterrupted_elapsed_s": uninterrupted.elapsed_s,
        "trials": rows,
        "recovered_after_s": {"mean": float(np.mean(recovery)), "max": float(np.max(recovery))},
        "all_same_output": all(r["same_output"] for r in rows),
    }


# -- emulated clusters ---------------------------------------------------------------------------
def _cluster(kind: str, num_devices: int) -> Cluster:
    mbps, ms = LINKS[kind]
    return Cluster(
        source="d0",
        defaults=LinkDefaults(bandwidth_mbps=mbps, latency_ms=ms),
        devices=tuple(
            DeviceSpec(name=f"d{i}", kind="host", memory_mb=4000) for i in range(num_devices)
        ),
    )


def _balanced(profile: GenerationProfile, num_devices: int) -> list[StagePlacement]:
    """Cuts with about equal decode compute per device (the bottleneck-minimizing shape)."""
    times = np.asarray(profile.decode.times_for("host"))
    prefix = np.concatenate([[0.0], np.cumsum(times)])
    n = len(times)
    cuts = [0]
    for j in range(1, num_devices):
        target = prefix[-1] * j / num_devices
        cut = int(np.argmin(np.abs(prefix[1:n] - target))) + 1
        cuts.append(max(cut, cuts[-1] + 1))
    cuts.append(n)
    return [
        StagePlacement(device=f"d{i}", start=cuts[i], end=cuts[i + 1]) for i in range(num_devices)
    ]


def emulated() -> dict[str, Any]:
    began = time.perf_counter()
    profile = measure_generation_profile(
        "gpt2", prompt_length=EMULATED_PROMPT, cache_length=128, repeats=5
    )
    profile_s = time.perf_counter() - began

    def emulation(_: str, start: int, end: int) -> StageTiming:
        # One-row step, prefill per token and the measured batch ratios (the planner's model).
        return StageTiming(*profile.stage_times("host", start, end))

    spec = model_spec_from_name("gpt2")
    n = profile.decode.num_units
    rows = []
    planner_picks = []
    config = GenerationConfig(
        max_concurrent=max(SEQUENCES), runtime=RuntimeConfig(compute="emulated")
    )
    first = _cluster("wifi", 1)
    with GenerationPipeline(
        spec,
        [("d0", 0, n)],
        config,
        num_units=n,
        cluster=first,
        emulation=emulation,
        hidden_size=768,
        vocab_size=50257,
    ) as pipe:
        for link_kind in LINKS:
            for num_devices in DEVICE_COUNTS:
                cluster = _cluster(link_kind, num_devices)
                stages = _balanced(profile, num_devices)
                pipe.restage([(s.device, s.start, s.end) for s in stages], cluster=cluster)
                for sequences in SEQUENCES:
                    predicted = predict_generation(
                        profile, cluster, stages, num_sequences=sequences, max_context=256
                    )
                    requests = [
                        GenerationRequest(
                            prompt_ids=list(range(1 + i, 1 + i + EMULATED_PROMPT)),
                            max_new_tokens=EMULATED_NEW_TOKENS,
                        )
                        for i in range(sequences)
                    ]
                    report = pipe.generate(requests)
                    per_token = [s.time_per_token_s for s in report.sequences]
                    decode_tokens_per_s = float(sum(1.0 / t for t in per_token if t > 0))
                    rows.append(
                        {
                            "link": link_kind,
                            "num_devices": num_devices,
                            "num_sequences": sequences,
                            "cuts": [s.start for s in stages] + [n],
                            "measured_time_per_token_s": float(np.mean(per_token)),
                            "measured_decode_tokens_per_s": decode_tokens_per_s,
                            "measured_tokens_per_s_with_prefill": report.tokens_per_s,
                            "predicted_time_per_token_s": max(
                                predicted.time_per_token_s, sequences * predicted.bottleneck_s
                            ),
                            "predicted_tokens_per_s": predicted.tokens_per_s,
                            "predicted_single_sequence_time_per_token_s": (
                                predicted.time_per_token_s
                            ),
                            "predicted_bottleneck_s": predicted.bottleneck_s,
                        }
                    )
                    row = rows[-1]
                    row["tokens_per_s_ratio_measured_over_predicted"] = (
                        row["measured_decode_tokens_per_s"] / row["predicted_tokens_per_s"]
                    )
                    print("emulated", json.dumps(row), flush=True)
            full = _cluster(link_kind, max(DEVICE_COUNTS))
            for sequences in SEQUENCES:
                for objective in ("tokens_per_s", "time_per_token"):
                    plan = plan_generation(
                        profile,
                        full,
                        objective=objective,  # type: ignore[arg-type]
                        num_sequences=sequences,
                        max_context=256,
                    )
                    planner_picks.append(
                        {
                            "link": link_kind,
                            "num_sequences": sequences,
                            "objective": objective,
                            "devices": [s.device for s in plan.plan.stages],
                            "cuts": [s.start for s in plan.plan.stages] + [n],
                            "predicted_tokens_per_s": plan.generation.tokens_per_s,
                            "predicted_time_per_token_s": plan.generation.time_per_token_s,
                            "optimal": plan.generation.optimal,
                            "planning_s": plan.plan.planner.elapsed_s,
                        }
                    )
    single = {r["link"]: r for r in rows if r["num_devices"] == 1 and r["num_sequences"] == 1}
    findings = []
    for link_kind in LINKS:
        base = single[link_kind]["measured_time_per_token_s"]
        for num_devices in DEVICE_COUNTS[1:]:
            row = next(
                r
                for r in rows
                if r["link"] == link_kind
                and r["num_devices"] == num_devices
                and r["num_sequences"] == 1
            )
            findings.append(
                {
                    "link": link_kind,
                    "num_devices": num_devices,
                    "single_sequence_slowdown_vs_one_device": row["measured_time_per_token_s"]
                    / base,
                    "best_tokens_per_s_over_sequences": max(
                        r["measured_decode_tokens_per_s"]
                        for r in rows
                        if r["link"] == link_kind and r["num_devices"] == num_devices
                    ),
                    "one_device_tokens_per_s": 1.0 / base,
                }
            )
    _plot(rows)
    return {
        "model": "gpt2 (124M shape, seeded weights; emulated compute)",
        "profile": {
            "decode_s_per_token_one_device": float(sum(profile.decode.times_for("host"))),
            "prefill_s_per_prompt": float(sum(profile.prefill.times_for("host"))),
            "decode_batch_ratio_whole_model": [
                [b, r] for b, r in profile.stage_times("host", 0, profile.decode.num_units)[2]
            ],
            "prompt_length": EMULATED_PROMPT,
            "cache_length": 128,
            "measure_s": profile_s,
            "kv_bytes_per_token_all_layers": float(sum(profile.kv_bytes_per_token)),
        },
        "links": {k: {"bandwidth_mbps": v[0], "latency_ms": v[1]} for k, v in LINKS.items()},
        "new_tokens_per_sequence": EMULATED_NEW_TOKENS,
        "rows": rows,
        "planner_picks": planner_picks,
        "findings": findings,
    }


def _plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for column, link_kind in enumerate(LINKS):
        for sequences in SEQUENCES:
            data = [r for r in rows if r["link"] == link_kind and r["num_sequences"] == sequences]
            devices = [r["num_devices"] for r in data]
            top, bottom = axes[0][column], axes[1][column]
            line = top.plot(
                devices,
                [r["measured_decode_tokens_per_s"] for r in data],
                "o-",
                label=f"S={sequences}",
            )[0]
            top.plot(
                devices, [r["predicted_tokens_per_s"] for r in data], "--", color=line.get_color()
            )
            bottom.plot(
                devices,
                [r["measured_time_per_token_s"] * 1e3 for r in data],
                "o-",
                color=line.get_color(),
                label=f"S={sequences}",
            )
            bottom.plot(
                devices,
                [r["predicted_time_per_token_s"] * 1e3 for r in data],
                "--",
                color=line.get_color(),
            )
        mbps, ms = LINKS[link_kind]
        axes[0][column].set_title(f"{link_kind}: {mbps:g} Mbps / {ms:g} ms (dashed: predicted)")
        axes[0][column].set_ylabel("decode tokens/s (all sequences)")
        axes[1][column].set_ylabel("time per token per sequence (ms)")
        axes[1][column].set_xlabel("devices (pipeline stages)")
        axes[0][column].legend()
        axes[0][column].grid(alpha=0.3)
        axes[1][column].grid(alpha=0.3)
    fig.suptitle("GPT-2 (124M) decode on emulated devices: measured vs planner prediction")
    fig.tight_layout()
    DOCS.mkdir(exist_ok=True)
    fig.savefig(DOCS / "generation_decode.png", dpi=110)
    plt.close(fig)


# One pipeline run of SmolLM2 on 1 and 2 stages, in a fresh process, with the code under
# `sys.argv[1]/src` (this tree, or a worktree of the baseline revision): prints ms/token as JSON.
_PIPELINE_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1] + "/src")
try:
    from edgesplit.api import generation as gen
    kw = {}
except ImportError:  # before the one runtime: api_generation with its own Ray engine
    from edgesplit import api_generation as gen
    kw = {"engine": "ray"}
model, prompt, new_tokens = sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
out = {}
for devices in (["a"], ["a", "b"]):
    report = gen.generate(
        model, gen.even_stages(model, devices), [prompt], new_tokens, stop_at_eos=False, **kw
    )
    out[len(devices)] = report.time_per_token_s * 1e3
print("MS_PER_TOKEN " + json.dumps(out))
"""


def _pipeline_ms(
    tree: Path, model: str, prompt: list[int], new_tokens: int, kernel: str | None = None
) -> dict[int, float]:
    """ms/token of the pipeline on 1 and 2 stages with the code of `tree` (a fresh process);
    `kernel` forces the one-row matmul kernel (models/one_row.py) of the stages it starts."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _PIPELINE_SCRIPT,
            str(tree),
            model,
            json.dumps(prompt),
            str(new_tokens),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={
            **os.environ,
            "PYTHONPATH": str(tree / "src"),
            **({"EDGESPLIT_ONE_ROW_KERNEL": kernel} if kernel else {}),
        },
    )
    lines = [x for x in result.stdout.splitlines() if x.startswith("MS_PER_TOKEN ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"pipeline run with {tree} failed: {result.stderr[-2000:]}")
    return {int(k): float(v) for k, v in json.loads(lines[-1].split(" ", 1)[1]).items()}


@contextlib.contextmanager
def _worktree(revision: str) -> Iterator[Path]:
    """A detached checkout of `revision` in a temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="edgesplit-baseline-")) / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), revision],
        check=True,
        capture_output=True,
    )
    try:
        yield folder
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(folder.parent, ignore_errors=True)


def decode_speed(
    rounds: int = 3, new_tokens: int = 64, baseline: str | None = None
) -> dict[str, Any]:
    """SmolLM2-135M (real weights, float32) ms/token: the pipeline on 1 and 2 stages vs unsplit,
    and vs the pipeline of a `baseline` revision (e.g. the commit before the one runtime).

    Interleaved rounds, the same prompt, greedy; the unsplit model decoding in this process with
    its own cache is the side-by-side reference (the issue's "40-41 ms" was both on a quiet box).
    Both pipelines run in fresh processes (embedded Ray each), one after the other each round.
    """
    model = str(find_smollm2_checkpoint() or "")
    if not model:
        return {"skipped": "SmolLM2 checkpoint missing (make models)"}
    from edgesplit.models.kv_batch import KvBatch

    prompt = [504, 3575, 282, 4649, 314]
    spec = model_spec_from_name(model)
    unsplit = build_model(spec).eval()
    # The stage code itself (what a 1-stage pipeline's process runs), here in this process:
    # the pipeline's gap to it is the runtime's (hops, threads, process), the rest is compute.
    whole = KvBatch.build(spec, 0, len(unit_names(spec)))
    rows: dict[str, list[float]] = {
        "unsplit": [],
        "stage code in process": [],
        "1 stage": [],
        "2 stages": [],
        # The same runtime with torch's own 1-row matmul: the runtime's cost alone, comparable
        # with a baseline that predates models/one_row.py.
        "plain kernel: 1 stage": [],
        "plain kernel: 2 stages": [],
    }
    if baseline:
        rows.update({f"{baseline}: 1 stage": [], f"{baseline}: 2 stages": []})
    with contextlib.ExitStack() as stack:
        base_tree = stack.enter_context(_worktree(baseline)) if baseline else None
        for round_index in range(rounds):
            print(f"decode_speed round {round_index + 1}/{rounds}", flush=True)
            began = time.perf_counter()
            with torch.no_grad():
                generate_unsplit(unsplit, prompt, new_tokens)
            rows["unsplit"].append((time.perf_counter() - began) / new_tokens * 1e3)
            began = time.perf_counter()
            with torch.inference_mode():
                ids, fed = list(prompt), 0
                while len(ids) - len(prompt) < new_tokens:
                    step = torch.tensor([ids[fed:]])
                    out = whole.step([round_index], {"input_ids": step}, [fed])
                    fed = len(ids)
                    ids.append(int(out["logits"][0].argmax()))
            whole.drop(round_index)
            rows["stage code in process"].append((time.perf_counter() - began) / new_tokens * 1e3)
            trees = [("", ROOT, None), ("plain kernel: ", ROOT, "plain")]
            trees += [(f"{baseline}: ", base_tree, None)] if base_tree else []
            for prefix, tree, kernel in trees:
                ms = _pipeline_ms(tree, model, prompt, new_tokens, kernel)
                rows[f"{prefix}1 stage"].append(ms[1])
                rows[f"{prefix}2 stages"].append(ms[2])
    medians = {k: float(np.median(v)) for k, v in rows.items()}
    result: dict[str, Any] = {
        "model": "smollm2-135m (float32, one torch thread per process)",
        "new_tokens": new_tokens,
        "ms_per_token_rounds": rows,
        "ms_per_token_median": medians,
        "ratio_to_unsplit": {k: medians[k] / medians["unsplit"] for k in rows if k != "unsplit"},
        "load_average_1m": os.getloadavg()[0],
    }
    if baseline:
        result["baseline"] = baseline
        result["ratio_to_baseline_per_round_median"] = {
            f"{kernel}{label}": float(
                np.median(
                    np.array(rows[f"{kernel}{label}"]) / np.array(rows[f"{baseline}: {label}"])
                )
            )
            for kernel in ("", "plain kernel: ")
            for label in ("1 stage", "2 stages")
        }
    return result


def _cli_recovery(tree: Path, model: str, standby: bool, report: Path) -> dict[str, Any]:
    """One `edgesplit generate ... --fault stop:b@2` run with the code of `tree` (a fresh
    process, embedded Ray): the failure record and the sequences' new ids."""
    command = [
        sys.executable,
        "-c",
        "import sys; from edgesplit.cli.main import main; sys.exit(main())",
        "generate",
        "--model",
        model,
        "--devices",
        "a,b,c",
        *(["--standby", "d"] if standby else []),
        "--prompt",
        "In the beginning",
        "--prompt",
        "And God said",
        "--max-new-tokens",
        "48",
        "--fault",
        "stop:b@2",
        "--report",
        str(report),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, env=env, cwd=ROOT
    )
    if result.returncode != 0 or not report.is_file():
        raise RuntimeError(f"generate with {tree} failed: {result.stderr[-2000:]}")
    data = json.loads(report.read_text())
    (failure,) = data["failures"]
    return {
        "action": failure["action"],
        "detected_after_s": failure["detected_after_s"],
        "recovered_after_s": failure["recovered_after_s"],
        "new_ids": [s["new_ids"] for s in data["sequences"]],
    }


def recovery(rounds: int = 3, baseline: str | None = None) -> dict[str, Any]:
    """A hang of the middle stage (`--fault stop:b@2`) through the CLI, SmolLM2-135M on 3
    stages, with a warm standby and without one (the stage restarts on its device); each run
    a fresh process; with `baseline`, that revision's CLI alternated run by run."""
    model = find_smollm2_checkpoint()
    if model is None:
        return {"skipped": "SmolLM2 checkpoint missing (make models)"}
    trees: list[tuple[str, Path]] = [("this tree", ROOT)]
    rows: dict[str, list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as scratch:
        if baseline:
            trees.append((baseline, stack.enter_context(_worktree(baseline))))
        for round_index in range(rounds):
            for standby in (True, False):
                for label, tree in trees:
                    key = f"{label}: {'standby' if standby else 'restart'}"
                    print(f"recovery round {round_index + 1}/{rounds}: {key}", flush=True)
                    report = Path(scratch) / f"{round_index}-{len(rows.get(key, []))}.json"
                    rows.setdefault(key, []).append(
                        _cli_recovery(tree, str(model), standby, report)
                    )
    reference = rows["this tree: standby"][0]["new_ids"]
    result: dict[str, Any] = {
        "model": "smollm2-135m (float32)",
        "fault": "stop:b@2 (SIGSTOP of the middle stage's process, 2 s into generation)",
        "runs": {
            k: [{x: v for x, v in r.items() if x != "new_ids"} for r in v] for k, v in rows.items()
        },
        "recovered_after_s_median": {
            k: float(np.median([r["recovered_after_s"] for r in v])) for k, v in rows.items()
        },
        "same_output": all(r["new_ids"] == reference for v in rows.values() for r in v),
        "load_average_1m": os.getloadavg()[0],
    }
    if baseline:
        result["baseline"] = baseline
        result["per_round_difference_s_median"] = {
            how: float(
                np.median(
                    [
                        a["recovered_after_s"] - b["recovered_after_s"]
                        for a, b in zip(
                            rows[f"this tree: {how}"], rows[f"{baseline}: {how}"], strict=True
                        )
                    ]
                )
            )
            for how in ("standby", "restart")
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sections", default="correctness,failures,emulated")
    parser.add_argument(
        "--rounds", type=int, default=3, help="decode_speed, recovery: interleaved rounds"
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="decode_speed, recovery: also run this git revision (a temporary worktree), "
        "e.g. 6c527b0, the commit before the one runtime",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    previous: dict[str, Any] = {}
    path = RESULTS / "generation.json"
    if path.is_file():
        previous = json.loads(path.read_text()).get("sections", {})
    runners = {
        "correctness": correctness,
        "failures": failures,
        "emulated": emulated,
        "decode_speed": lambda: decode_speed(args.rounds, baseline=args.baseline),
        "recovery": lambda: recovery(args.rounds, baseline=args.baseline),
    }
    results = dict(previous)
    for section in sections:
        began = time.perf_counter()
        results[section] = runners[section]()
        results[section]["wall_s"] = time.perf_counter() - began
        results[section]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    method = (
        "Real compute: one OS process per stage on this 2-core machine (shared with other jobs), "
        "one torch thread each, loopback TCP, unshaped; greedy/sampled tokens compared exactly "
        "with single-process generation of the unsplit model (same attention implementation). "
        "Failures: SIGKILL of a stage process when sequence 0 has 24 new tokens; a warm standby "
        "process takes the stage, every live sequence is replayed from position 0 (the driver "
        "keeps the tokens). Emulated: each stage sleeps its profiled decode (or prefill) time "
        "measured here for GPT-2 124M (a frame of B decode rows: the one-row time x the "
        "measured batch ratio of the stage's units, GenerationProfile.stage_times), sends a zero hidden state of the real size over links "
        "shaped at the sender (token bucket + latency); decode tokens/s = sum over sequences of "
        "1 / mean gap between their tokens; prediction = planners.generation cost model. "
        "decode_speed: SmolLM2-135M real weights, float32, greedy, same prompt, 64 new tokens; "
        "the one-runtime pipeline on 1 and 2 stages (real compute, embedded Ray, a fresh process "
        "per run) interleaved round by round with the unsplit model decoding in this process, "
        "with the stage code (KvBatch, one row, the whole model) in this process and, with "
        "--baseline REV, with REV's pipeline (a temporary git worktree, its own API); medians "
        "of the rounds and the median of per-round ratios to the baseline. "
        "recovery: `edgesplit generate --model SmolLM2 --devices a,b,c [--standby d] --prompt x2 "
        "--max-new-tokens 48 --fault stop:b@2 --report`, each run a fresh process (embedded Ray); "
        "recovered_after_s counts from the SIGSTOP to the first token after the replay; with "
        "--baseline REV, REV's CLI (a temporary worktree) right after this tree's, run by run, "
        "and the median of the per-round differences (this tree - REV)."
    )
    extra = f" --rounds {args.rounds}" + (f" --baseline {args.baseline}" if args.baseline else "")
    on_demand = {"decode_speed", "recovery"}
    out = write_result(
        "generation",
        {"sections": results, "method": method},
        f"{COMMAND} --sections {','.join(sections)}" + (extra if on_demand & set(sections) else ""),
    )
    print(out)


if __name__ == "__main__":
    main()
