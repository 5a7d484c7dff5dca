"""Ray Serve replicas vs the plain uvicorn edge server, measured side by side in one run.

Targets, all up at the same time on 127.0.0.1 and serving the trained pipeline (bundled
weights, one torch thread per process):
  * uvicorn     — `python -m edgesplit.offload.server` in a subprocess (the default server)
  * serve-1     — Ray Serve, 1 replica (consistent-hash router)
  * serve-2     — Ray Serve, 2 replicas, consistent-hash router on x-session-id (affinity)
  * serve-2-p2c — Ray Serve, 2 replicas, Ray's default power-of-two-choices router
Throughput and p50/p95 client latency with a fixed number of concurrent clients (threads of
this process, one OffloadClient each, one-round requests: 16 patches, raw codec, so client CPU
stays small). Blocks of requests alternate between targets, repeated, so that load from other
processes on this shared machine hits every target alike; compare ratios, not absolutes.
A second phase sends two-round requests (16 + 8 server-requested patches) to serve-2 with and
without the session header and to uvicorn, and counts round-2 409s (client falls back to one
full round) and reused round 1s.

    python benchmarks/offload_serve.py            # ~3-4 min on 2 shared cores
    python benchmarks/offload_serve.py --replot   # redraw docs/offload_serve.png from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from common import DOCS, RESULTS, ROOT, write_result
from edgesplit.errors import TransportError
from edgesplit.offload.client import OffloadClient, RetryConfig
from edgesplit.offload.data import load_fashion_mnist, upscale
from edgesplit.offload.serve_ray import (
    REPLICA_HEADER,
    RayServeConfig,
    SessionAffinityTransport,
    deploy,
    running,
)
from edgesplit.offload.server import ServerConfig

NAME = "offload_serve"
PLOT = DOCS / "offload_serve.png"
TARGETS = ("uvicorn", "serve-1", "serve-2", "serve-2-p2c")
RETRY = RetryConfig(max_attempts=5, base_backoff_s=0.05, max_backoff_s=0.5, timeout_s=60)
K1, K2 = 16, 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], bool], timeout_s: float) -> None:
    pause = threading.Event()
    for _ in range(int(timeout_s / 0.2)):
        if predicate():
            return
        pause.wait(0.2)
    raise TimeoutError(f"not ready within {timeout_s} s")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class ReplicaTally(httpx.BaseTransport):
    """Counts which replica answered (REPLICA_HEADER) and 409s, passing requests on."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self._inner = inner or httpx.HTTPTransport()
        self.replicas: dict[str, int] = {}
        self.conflicts = 0
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        with self._lock:
            tag = response.headers.get(REPLICA_HEADER, "-")
            self.replicas[tag] = self.replicas.get(tag, 0) + 1
            self.conflicts += response.status_code == 409
        return response


def _one_round(client: OffloadClient, image: np.ndarray, order: list[int]) -> None:
    client.send_round(image, order[:K1], codec="raw")


def _two_rounds(client: OffloadClient, image: np.ndarray, order: list[int]) -> tuple[bool, bool]:
    """Round 1 + round 2 as OffloadClient.classify does it; (fell back, reused round 1)."""
    first, _ = client.send_round(image, order[:K1], codec="raw", extra_k=K2)
    extra = first.requested_indices[:K2]
    try:
        second, _ = client.send_round(
            image,
            extra,
            codec="raw",
            request_id=first.request_id,
            round_index=2,
            session_id=first.session_id,
        )
    except TransportError as e:
        if "unknown_session" not in str(e):
            raise
        client.send_round(image, [*order[:K1], *extra], codec="raw")
        return True, False
    return False, second.reused_round1


def run_block(
    url: str,
    images: np.ndarray,
    order: list[int],
    concurrency: int,
    num_requests: int,
    *,
    two_rounds: bool = False,
    affinity: bool = True,
) -> dict[str, Any]:
    """`num_requests` requests from `concurrency` client threads; latencies and wall time."""
    latencies: list[float] = []
    fallbacks: list[bool] = []
    reused: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    counter = iter(range(num_requests))
    tallies = [ReplicaTally() for _ in range(concurrency)]

    def worker(tally: ReplicaTally) -> None:
        transport: httpx.BaseTransport = SessionAffinityTransport(tally) if affinity else tally
        try:
            with OffloadClient(url, retry=RETRY, transport=transport) as client:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    image = images[i % len(images)]
                    start = time.perf_counter()
                    if two_rounds:
                        fell_back, was_reused = _two_rounds(client, image, order)
                    else:
                        _one_round(client, image, order)
                    elapsed = time.perf_counter() - start
                    with lock:
                        latencies.append(elapsed)
                        if two_rounds:
                            fallbacks.append(fell_back)
                            reused.append(was_reused)
        except BaseException as e:  # re-raised in the caller
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in tallies]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    replicas: dict[str, int] = {}
    for tally in tallies:
        for tag, count in tally.replicas.items():
            replicas[tag] = replicas.get(tag, 0) + count
    result: dict[str, Any] = {
        "requests": num_requests,
        "wall_s": wall,
        "throughput_per_s": num_requests / wall,
        "latency_ms": [1000 * x for x in latencies],
        "answers_per_replica": sorted(replicas.values(), reverse=True),
    }
    if two_rounds:
        result["round2_409_fraction"] = float(np.mean(fallbacks))
        result["round1_reused_fraction"] = float(np.mean(reused))
        result["http_409s"] = sum(t.conflicts for t in tallies)
    return result


def _replica_rss_mb() -> list[float]:
    """Resident memory of this machine's Serve replica processes (from /proc)."""
    sizes = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"ServeReplica" not in cmdline:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return sorted(sizes)


def _cpu_s(match: bytes | None = None, pid: int | None = None) -> float:
    """User + system CPU seconds of the processes whose command line contains `match` (or pid)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    entries = [Path(f"/proc/{pid}")] if pid is not None else list(Path("/proc").iterdir())
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if match is not None and match not in (entry / "cmdline").read_bytes():
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total


def _cpu_snapshot(uvicorn_pid: int) -> dict[str, float]:
    return {
        "uvicorn": _cpu_s(pid=uvicorn_pid),
        "serve-1": _cpu_s(b"ServeReplica:one:"),
        "serve-2": _cpu_s(b"ServeReplica:edgesplit-offload:"),
        "serve-2-p2c": _cpu_s(b"ServeReplica:p2c:"),
        "proxy": _cpu_s(b"ProxyActor"),
    }


def _summary(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = np.concatenate([b["latency_ms"] for b in blocks])
    throughputs = [b["throughput_per_s"] for b in blocks]
    return {
        "blocks": len(blocks),
        "requests": int(sum(b["requests"] for b in blocks)),
        "throughput_per_s_mean": float(np.mean(throughputs)),
        "throughput_per_s_min": float(np.min(throughputs)),
        "throughput_per_s_max": float(np.max(throughputs)),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "answers_per_replica": [
            int(x) for x in np.sum([b["answers_per_replica"] for b in blocks], axis=0)
        ]
        if len({len(b["answers_per_replica"]) for b in blocks}) == 1
        else None,
    }


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    images_28, _ = load_fashion_mnist("test")
    images = upscale(images_28[:200], 64)
    weights = ["--weights", str(args.weights)] if args.weights else []
    port = _free_port()
    uvicorn_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen(
        [sys.executable, "-m", "edgesplit.offload.server", "--port", str(port), *weights],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    load_start = _load_average()
    cpu_start = time.process_time()
    started = time.perf_counter()
    try:
        _wait(lambda: _healthy(uvicorn_url), 120)
        serve_port = _free_port()
        server_config = ServerConfig(port=serve_port)
        # 0.4 logical CPU per replica: the 5 replicas fit Ray's 2 CPUs (no pinning anyway).
        two = RayServeConfig(replicas=2, num_cpus=0.4)
        with running(two, server_config, args.weights) as serve2_url:
            serve1_url = deploy(
                RayServeConfig(replicas=1, num_cpus=0.4),
                server_config,
                args.weights,
                name="one",
                route_prefix="/one",
            )
            p2c_url = deploy(
                RayServeConfig(replicas=2, num_cpus=0.4, affinity=False),
                server_config,
                args.weights,
                name="p2c",
                route_prefix="/p2c",
            )
            startup_s = time.perf_counter() - started
            urls = dict(zip(TARGETS, (uvicorn_url, serve1_url, serve2_url, p2c_url), strict=True))
            with OffloadClient(uvicorn_url) as client:
                order = list(client.info().patch_order)
            rss = _replica_rss_mb()
            for url in urls.values():  # warm-up: first requests load lazily
                run_block(url, images, order, 2, 20)
            throughput: dict[str, dict[str, list[dict[str, Any]]]] = {
                str(c): {t: [] for t in TARGETS} for c in args.concurrency
            }
            idle_start = _cpu_snapshot(server.pid)
            threading.Event().wait(args.idle_s)  # nothing sent: background CPU of each target
            idle_end = _cpu_snapshot(server.pid)
            idle_percent = {
                k: round(100 * (idle_end[k] - idle_start[k]) / args.idle_s, 2) for k in idle_end
            }
            cpu_before = _cpu_snapshot(server.pid)
            for rep in range(args.reps):
                for concurrency in args.concurrency:
                    targets = TARGETS[rep % len(TARGETS) :] + TARGETS[: rep % len(TARGETS)]
                    for target in targets:
                        n = args.requests if concurrency > 1 else args.requests // 2
                        block = run_block(urls[target], images, order, concurrency, n)
                        throughput[str(concurrency)][target].append(block)
                        print(
                            f"rep {rep} c={concurrency} {target:12s} "
                            f"{block['throughput_per_s']:6.1f} req/s "
                            f"p50 {np.percentile(block['latency_ms'], 50):6.1f} ms "
                            f"replicas {block['answers_per_replica']}",
                            flush=True,
                        )
            cpu_after = _cpu_snapshot(server.pid)
            served = {
                t: sum(b["requests"] for per in throughput.values() for b in per[t])
                for t in TARGETS
            }
            serve_requests = sum(served[t] for t in TARGETS if t != "uvicorn")
            proxy_ms = 1000 * (cpu_after["proxy"] - cpu_before["proxy"]) / serve_requests
            server_cpu_ms = {
                t: 1000 * (cpu_after[t] - cpu_before[t]) / served[t]
                + (proxy_ms if t != "uvicorn" else 0.0)
                for t in TARGETS
            }
            server_cpu_ms["serve proxy share"] = proxy_ms
            two_round_cases = {
                "uvicorn": (uvicorn_url, True),
                "serve-2, session header": (serve2_url, True),
                "serve-2, no header": (serve2_url, False),
                "serve-2-p2c": (p2c_url, True),
            }
            two_round: dict[str, list[dict[str, Any]]] = {k: [] for k in two_round_cases}
            concurrency = max(args.concurrency)
            for rep in range(args.reps):
                for case, (url, affinity) in two_round_cases.items():
                    block = run_block(
                        url,
                        images,
                        order,
                        concurrency,
                        args.two_round_requests,
                        two_rounds=True,
                        affinity=affinity,
                    )
                    two_round[case].append(block)
                    print(
                        f"rep {rep} two rounds {case:24s} "
                        f"409 {block['round2_409_fraction']:.2f} "
                        f"reused {block['round1_reused_fraction']:.2f} "
                        f"p50 {np.percentile(block['latency_ms'], 50):6.1f} ms",
                        flush=True,
                    )
    finally:
        server.terminate()
        server.wait(timeout=20)
    return {
        "startup_s_three_serve_apps": round(startup_s, 1),
        "replica_rss_mb": [round(x) for x in rss],
        "load_average_start_end": [load_start, _load_average()],
        "driver_cpu_s": round(time.process_time() - cpu_start, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "idle_cpu_percent": idle_percent,
        "server_cpu_ms_per_request": {k: round(v, 2) for k, v in server_cpu_ms.items()},
        "throughput": {
            c: {t: _summary(blocks) for t, blocks in per.items()} for c, per in throughput.items()
        },
        "throughput_ratio_to_uvicorn": {
            c: {
                t: float(
                    np.median(
                        [
                            b["throughput_per_s"] / u["throughput_per_s"]
                            for b, u in zip(per[t], per["uvicorn"], strict=True)
                        ]
                    )
                )
                for t in TARGETS
            }
            for c, per in throughput.items()
        },
        "two_round": {
            case: {
                **_summary(blocks),
                "round2_409_fraction": float(np.mean([b["round2_409_fraction"] for b in blocks])),
                "round1_reused_fraction": float(
                    np.mean([b["round1_reused_fraction"] for b in blocks])
                ),
            }
            for case, blocks in two_round.items()
        },
    }


def plot(results: dict[str, Any]) -> None:
    concurrencies = sorted(results["throughput"], key=int)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    width = 0.8 / len(TARGETS)
    colours = ("#777777", "#4c72b0", "#55a868", "#c44e52")
    for j, target in enumerate(TARGETS):
        xs = np.arange(len(concurrencies)) + (j - (len(TARGETS) - 1) / 2) * width
        rows = [results["throughput"][c][target] for c in concurrencies]
        mean = [r["throughput_per_s_mean"] for r in rows]
        low = [r["throughput_per_s_mean"] - r["throughput_per_s_min"] for r in rows]
        high = [r["throughput_per_s_max"] - r["throughput_per_s_mean"] for r in rows]
        axes[0].bar(xs, mean, width, yerr=[low, high], label=target, color=colours[j])
        axes[1].bar(xs, [r["p95_ms"] for r in rows], width, color=colours[j], alpha=0.35)
        axes[1].bar(xs, [r["p50_ms"] for r in rows], width, color=colours[j])
    titles = ("throughput (req/s; bars: min-max of blocks)", "latency p50 (dark), p95 (light)")
    for ax, title in zip(axes[:2], titles, strict=True):
        ax.set_xticks(
            range(len(concurrencies)),
            [f"{c} client{'s' if int(c) > 1 else ''}" for c in concurrencies],
        )
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    axes[1].set_ylabel("ms")
    cases = list(results["two_round"])
    conflict = [100 * results["two_round"][c]["round2_409_fraction"] for c in cases]
    reused = [100 * results["two_round"][c]["round1_reused_fraction"] for c in cases]
    ys = np.arange(len(cases))
    axes[2].barh(ys - 0.2, conflict, 0.4, label="round 2 got 409 (full resend)", color="#c44e52")
    axes[2].barh(ys + 0.2, reused, 0.4, label="round 1 reused", color="#55a868")
    for y, case in zip(ys, cases, strict=True):
        p50 = results["two_round"][case]["p50_ms"]
        axes[2].text(2, y + 0.2, f"p50 {p50:.0f} ms", va="center", fontsize=7, color="white")
    labels = [c.replace("serve-2-p2c", "serve-2-p2c\n(ignores header)") for c in cases]
    axes[2].set_yticks(ys, labels, fontsize=8)
    axes[2].set_xlabel("% of two-round requests")
    axes[2].set_title("two rounds: where round 2 lands", fontsize=10)
    axes[2].set_xlim(0, 175)
    axes[2].set_xticks([0, 25, 50, 75, 100])
    axes[2].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        "edge server: Ray Serve replicas vs one uvicorn process (2 shared cores; compare ratios)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests", type=int, default=160, help="per block (half at 1 client)")
    parser.add_argument("--two-round-requests", type=int, default=80, help="images per block")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle CPU measurement")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--replot", action="store_true", help="redraw the plot from the JSON")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads((RESULTS / f"{NAME}.json").read_text())["results"])
        return
    results = measure(args)
    command = "python benchmarks/offload_serve.py " + " ".join(sys.argv[1:])
    method = {
        "targets": {
            "uvicorn": "python -m edgesplit.offload.server (one process, one inference at a time)",
            "serve-1": "Ray Serve, 1 replica, consistent-hash router",
            "serve-2": "Ray Serve, 2 replicas, consistent-hash router on x-session-id",
            "serve-2-p2c": "Ray Serve, 2 replicas, default power-of-two-choices router",
        },
        "workload": f"one-round requests: {K1} server-order patches, raw codec, trained MAE + "
        "ViT (bundled weights), Fashion-MNIST test images 0-199 upscaled to 64x64",
        "two_round_workload": f"{K1} + {K2} server-requested patches, raw; 409 -> resend all "
        f"{K1 + K2} as one round (as OffloadClient.classify); "
        f"{max(args.concurrency)} clients",
        "clients": "threads of the benchmark process, one OffloadClient (httpx) each; latency "
        "= client wall time per request (or per two-round image)",
        "schedule": f"{args.reps} repetitions; in each, one block of {args.requests} requests "
        f"({args.requests // 2} at 1 client) per target and concurrency, target order rotated "
        "per repetition; warm-up of 20 requests per target first",
        "replicas": "num_cpus=0.4 each (logical; Ray does not pin), one torch thread, "
        "max_ongoing_requests=4; all apps share one Serve proxy and one embedded Ray",
        "server_cpu": "user+system CPU of each target's server processes (/proc) during the "
        "one-round phase per request served; Serve targets include their share of the one "
        "shared proxy actor's CPU (idle background CPU included; idle_cpu_percent measures it "
        "over --idle-s seconds with no requests, before the phase)",
        "machine": "2 cores shared with other agents' processes: absolute req/s depend on "
        "their load; compare targets within this run (ratios)",
    }
    write_result(NAME, {"method": method, "results": results}, command)
    plot(results)
    print(f"wrote {RESULTS / (NAME + '.json')} and {PLOT}")


if __name__ == "__main__":
    main()
