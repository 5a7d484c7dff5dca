"""Lean hops: the runtime's per-hop overhead next to a raw loopback send of the same bytes.

Method (issue 15, item 7): zero-compute emulated stages (real actors in their own processes, real
sockets on 127.0.0.1, the authenticated channel), unshaped links, one 0.6 MB micro-batch in the
whole pipeline at a time (the next enters when the previous has been answered). per-hop =
(p50 latency through 4 stages - p50 through 1 stage) / 3: the cost of one more stage, i.e. one
more receive + compute call + send + ack. raw = p50 time to push the same bytes through one
loopback TCP connection to a thread that reads them all and answers 1 byte. Rounds interleave
(ours 1 stage, ours 4 stages, raw) so the machine's load hits all three alike; the figure is the
median of the per-round ratios, with their spread (min, quartiles, max) and the load average.

    .venv/bin/python benchmarks/runtime_hops.py [--rounds 9] [--requests 100]

Writes benchmarks/results/runtime_hops.json and docs/runtime_hops.png.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DOCS, write_result
from edgesplit.core.cluster import Cluster, DeviceSpec
from edgesplit.core.cost import CostModel
from edgesplit.core.plan import Plan, PlannerInfo, StagePlacement
from edgesplit.core.profile import ModelProfile, UnitProfile
from edgesplit.runtime import RuntimeConfig, run_plan
from edgesplit.runtime.cluster import RaySession

ACTIVATION_BYTES = 600_000
DEVICES = ("h0", "h1", "h2", "h3")


def raw_loopback_s(num_bytes: int, repeats: int) -> float:
    """Median time to push `num_bytes` through a loopback TCP socket and get a 1-byte ack."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    payload = bytes(num_bytes)

    def serve() -> None:
        conn, _ = server.accept()
        buffer = bytearray(num_bytes)
        for _ in range(repeats):
            view, got = memoryview(buffer), 0
            while got < num_bytes:
                got += conn.recv_into(view[got:])
            conn.sendall(b"k")
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = socket.create_connection(server.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        client.sendall(payload)
        client.recv(1)
        times.append(time.perf_counter() - started)
    client.close()
    thread.join()
    server.close()
    return statistics.median(times)


def _profile_and_cluster(num_bytes: int) -> tuple[ModelProfile, Cluster]:
    units = tuple(
        UnitProfile(name=f"u{i}", param_bytes=1.0, output_bytes=num_bytes, time_s={"k": 0.0})
        for i in range(len(DEVICES))
    )
    profile = ModelProfile(model="hop", batch_size=1, input_bytes=num_bytes, units=units)
    cluster = Cluster(
        source=DEVICES[0],
        devices=tuple(DeviceSpec(name=n, kind="k", memory_mb=1000) for n in DEVICES),
    )
    return profile, cluster


def chain_latency_s(num_stages: int, requests: int, num_bytes: int = ACTIVATION_BYTES) -> float:
    """p50 latency of one micro-batch through `num_stages` zero-compute stages."""
    profile, cluster = _profile_and_cluster(num_bytes)
    n = len(DEVICES)
    cuts = [round(i * n / num_stages) for i in range(num_stages + 1)]
    stages = tuple(
        StagePlacement(device=DEVICES[i], start=cuts[i], end=cuts[i + 1]) for i in range(num_stages)
    )
    plan = Plan(
        model=profile.model,
        profile_hash=profile.digest(),
        cluster_hash=cluster.digest(),
        batch_size=1,
        objective="throughput",
        planner=PlannerInfo(name="manual"),
        stages=stages,
        predicted=CostModel(profile, cluster).predict(stages),
    )
    config = RuntimeConfig(placement="local", link_shaping="off", max_in_flight=1)
    answered = threading.Event()
    payload = np.zeros(num_bytes, dtype=np.uint8)

    def one_at_a_time() -> Iterator[dict[str, np.ndarray]]:
        # The source pulls lazily: the next micro-batch enters only when the previous one has
        # left the pipeline, so a latency is one item's trip alone (no queueing behind another).
        for index in range(requests):
            if index and not answered.wait(60.0):
                return
            answered.clear()
            yield {"input": payload}

    report = run_plan(
        plan,
        cluster,
        profile,
        config=config,
        requests=one_at_a_time(),
        on_result=lambda rid, out: answered.set(),
    )
    assert report.requests.lost == 0
    return report.measured.latency_s.p50


def hop_overhead(rounds: int, requests: int) -> dict[str, Any]:
    rows = []
    for index in range(rounds):
        one = chain_latency_s(1, requests)
        four = chain_latency_s(4, requests)
        raw = raw_loopback_s(ACTIVATION_BYTES, 200)
        per_hop = (four - one) / 3
        rows.append(
            {
                "round": index,
                "latency_p50_1_stage_s": one,
                "latency_p50_4_stages_s": four,
                "per_hop_s": per_hop,
                "raw_loopback_s": raw,
                "ratio": per_hop / raw,
            }
        )
        print(
            f"round {index}: per hop {per_hop * 1e3:.3f} ms, raw {raw * 1e3:.3f} ms, "
            f"ratio {per_hop / raw:.2f}",
            flush=True,
        )
    per_hop = statistics.median(r["per_hop_s"] for r in rows)
    raw = statistics.median(r["raw_loopback_s"] for r in rows)
    ratios = sorted(r["ratio"] for r in rows)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {
        "activation_bytes": ACTIVATION_BYTES,
        "requests_per_point": requests,
        "rounds": rows,
        "per_hop_overhead_s": per_hop,
        "raw_loopback_socket_s": raw,
        "per_hop_over_raw": per_hop / raw,  # ratio of the medians
        "median_round_ratio": statistics.median(ratios),  # the headline figure
        "round_ratio_spread": {
            "min": ratios[0],
            "q1": quartiles[0],
            "q3": quartiles[2],
            "max": ratios[-1],
        },
        "rounds_at_most_3x": sum(r <= 3.0 for r in ratios),
    }


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rounds"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["per_hop_s"] * 1e3 for r in rows], 0.4, label="one more hop")
    ax.bar([i + 0.2 for i in x], [r["raw_loopback_s"] * 1e3 for r in rows], 0.4, label="raw send")
    for i, r in enumerate(rows):
        ax.text(i - 0.2, r["per_hop_s"] * 1e3, f"{r['ratio']:.1f}x", ha="center", va="bottom")
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"round {r['round']}" for r in rows])
    ax.set_ylabel("ms (p50)")
    ax.set_title(f"per-hop overhead vs raw loopback send, {ACTIVATION_BYTES / 1e6:.1f} MB")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    session = RaySession.open(RuntimeConfig(), [])
    result = hop_overhead(args.rounds, args.requests)
    _plot(result, DOCS / "runtime_hops.png")
    path = write_result(
        "runtime_hops",
        {"method": __doc__, **result, "plot": "docs/runtime_hops.png"},
        f"python benchmarks/runtime_hops.py --rounds {args.rounds} --requests {args.requests}",
    )
    spread = result["round_ratio_spread"]
    print(
        f"wrote {path}: per hop / raw = {result['median_round_ratio']:.2f} (median of "
        f"{args.rounds} rounds; min {spread['min']:.2f}, quartiles {spread['q1']:.2f}-"
        f"{spread['q3']:.2f}, max {spread['max']:.2f}; ratio of medians "
        f"{result['per_hop_over_raw']:.2f})"
    )
    session.close()


if __name__ == "__main__":
    main()
