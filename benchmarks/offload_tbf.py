"""Kernel shaping check of the offload link emulation (issue 5, item 6, optional part).

Usage: .venv/bin/python benchmarks/offload_tbf.py [--quick]
Writes benchmarks/results/offload_tbf.json and docs/offload_tbf.png. About 3 minutes. Needs root
(or CAP_SYS_ADMIN) for `unshare -n` and `tc`; otherwise it says so and writes nothing.

How it measures (see docs/offload.md, "Kernel shaping check"):
- The script re-runs itself inside a fresh network namespace (`unshare -n ... --in-netns`), so
  the shaping never touches the host's network. There it brings `lo` up at MTU 1500 and installs
  a kernel token bucket (`tbf`) on it; the offload server (committed weights, uvicorn in a
  thread) and the client (`OffloadClient` WITHOUT a LinkEmulator) talk over real sockets.
- Link configurations: `uplink` (htb root; a u32 filter sends packets to the server's port, i.e.
  the device's uplink, through the tbf class, everything else bypasses it) and `both` (tbf at the
  root of lo: request, response and ACKs share one bucket, as tbf on loopback does). `netem` is
  not built into this kernel (CONFIG_NET_SCH_NETEM unset), so the round trip (40 ms) is added at
  application level: an ASGI wrapper delays each response start by `--rtt-ms`.
- One-shot settings (`send_round`, frames every 0.5 s): per request the measured round time is
  compared with the app-level model `policy.predicted_round_s(body, server compute of that
  request, rate, rtt)` (body + 300 B HTTP overhead at the rate) and with a replay of the
  application's `TokenBucket` (steady trace at the rate, the kernel's burst, the bytes the
  request's sockets really sent once, from `ss -ti`, at the request's real start time).
- Progressive round 1 on the real link. Client variants: `kernel-acked` (the default client:
  before each later segment it waits for the kernel's acknowledgements, SIOCOUTQ on the
  connection's socket, and decides at the delivery rate; edgesplit.offload.tcp_progress),
  `kernel-wallclock` (delivery_pacing=False: decides on the wall clock of the socket writes, the
  client before the pacing), `kernel-notsent-lowat` (the same with TCP_NOTSENT_LOWAT=128 on the
  sockets, so a write returns only once the kernel has sent most earlier bytes) and
  `app-emulator` (the app-level LinkEmulator, no kernel shaping) for reference.
  (1) cut probe: the one-round progressive option sent with an estimate of 1.6x the rate over a
  link at 0.4x, at the tight SLO (150 ms; every variant) and a loose one (500 ms; kernel-acked
  and kernel-wallclock); (2) adaptive `classify` (committed tables, SLO 250/150 ms, frames every
  0.5 s) while a second thread toggles the tbf rate 1.6x / 0.4x of 100 kbit/s every 4 s
  (`tc qdisc change`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

NAME = "offload_tbf"
RATE_BYTES_PER_S = 12_500.0  # 100 kbit/s, as benchmarks/offload.py
RTT_S = 0.04  # 2 x 20 ms one way, as benchmarks/offload.py
FRAME_PERIOD_S = 0.5
SLOS_S = (0.25, 0.15)  # the adaptive runs; 0.15 s is the tight SLO of benchmarks/offload.py
CUT_SLO_S = 0.15  # the cut probe: an optimistic estimate meets a slow link
LOOSE_CUT_SLO_S = 0.5  # ... and with time to spare: the whole body must go
KERNEL_VARIANTS = ("kernel-acked", "kernel-wallclock", "kernel-notsent-lowat")
VARIANTS = (*KERNEL_VARIANTS, "app-emulator")
STEP_HIGH, STEP_LOW = 1.6, 0.4  # the levels of the 'step' trace of emulation.make_trace
STEP_EVERY_S = 4.0  # ... toggled every 4 s here (make_trace: 10 s) for several drops per run
PROGRESSIVE_LINK = (
    576,
    600,
)  # MTU, burst: a kernel bucket as close to the app's 300 B as tbf allows
LIMIT_BYTES = 100_000  # tbf queue; large enough that nothing is dropped
# (name, mtu, burst bytes, mode); tbf's burst must hold the largest packet (MTU + 14 B header).
LINKS = (
    ("uplink-mtu1500", 1500, 1600, "uplink"),
    ("both-mtu1500", 1500, 1600, "both"),
    ("uplink-mtu576", 576, 600, "uplink"),
)
# (name, indices: "server:k" or "all", codec, quality)
SETTINGS = (
    ("server-k4-webp50", "server:4", "webp", 50),
    ("server-k16-webp50", "server:16", "webp", 50),
    ("full-webp10", "all", "webp", 10),
    ("full-png", "all", "png", None),
)
NOT_PERMITTED_RC = 3
VARIANT_HOW = {
    "kernel-acked": "default client: waits for the kernel's acknowledgements (SIOCOUTQ) before "
    "each later segment and decides at the delivery rate (tcp_progress.DeliveryPacer)",
    "kernel-wallclock": "delivery_pacing=False: decides on the wall clock of the socket writes "
    "(the client before the pacing)",
    "kernel-notsent-lowat": "delivery_pacing=False and TCP_NOTSENT_LOWAT=128 via "
    "httpx.HTTPTransport(socket_options)",
    "app-emulator": "app-level LinkEmulator (burst 300 B) on the same trace, no kernel shaping",
}


# -- namespace and tc plumbing ------------------------------------------------------------------
def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _tc(*args: str) -> None:
    done = _run(["tc", *args])
    if done.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} failed: {done.stderr.strip()}")


def _bits(rate_bytes_per_s: float) -> str:
    return f"{round(rate_bytes_per_s * 8)}bit"


def shape(mode: str, rate_bytes_per_s: float, burst: int, mtu: int, port: int) -> None:
    """Replace lo's qdisc: tbf (handle 10:) at the root ('both') or on the uplink class only."""
    _run(["tc", "qdisc", "del", "dev", "lo", "root"])
    done = _run(["ip", "link", "set", "lo", "mtu", str(mtu), "up"])
    if done.returncode != 0:
        raise RuntimeError(f"ip link set lo failed: {done.stderr.strip()}")
    tbf = ["tbf", "rate", _bits(rate_bytes_per_s), "burst", str(burst), "limit", str(LIMIT_BYTES)]
    if mode == "both":
        _tc("qdisc", "add", "dev", "lo", "root", "handle", "10:", *tbf)
        return
    _tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "20")
    for cls in ("1:10", "1:20"):
        _tc(
            "class", "add", "dev", "lo", "parent", "1:", "classid", cls,
            "htb", "rate", "10gbit", "quantum", "60000",
        )  # fmt: skip
    _tc("qdisc", "add", "dev", "lo", "parent", "1:10", "handle", "10:", *tbf)
    _tc(
        "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1",
        "u32", "match", "ip", "dport", str(port), "0xffff", "flowid", "1:10",
    )  # fmt: skip


def change_rate(mode: str, rate_bytes_per_s: float, burst: int) -> None:
    parent = ["root"] if mode == "both" else ["parent", "1:10"]
    _tc(
        "qdisc", "change", "dev", "lo", *parent, "handle", "10:",
        "tbf", "rate", _bits(rate_bytes_per_s), "burst", str(burst), "limit", str(LIMIT_BYTES),
    )  # fmt: skip


def unshape() -> None:
    _run(["tc", "qdisc", "del", "dev", "lo", "root"])


def tbf_stats() -> dict[str, int]:
    """Bytes, packets and drops the tbf qdisc (handle 10:) has counted so far."""
    done = _run(["tc", "-s", "-j", "qdisc", "show", "dev", "lo"])
    for q in json.loads(done.stdout or "[]"):
        if q.get("kind") == "tbf":
            return {k: int(q.get(k, 0)) for k in ("bytes", "packets", "drops", "overlimits")}
    raise RuntimeError("no tbf qdisc on lo")


TCP_IP_ETH_HEADER_BYTES = 66  # per packet on lo: Ethernet 14 + IPv4 20 + TCP 20 + timestamps 12
_SS_COUNTERS = ("bytes_sent", "bytes_retrans", "segs_out", "data_segs_out")


def tcp_counters(port: int) -> dict[str, dict[str, int]]:
    """Per direction ('up': client sockets to `port`, 'down': the server's), from `ss -ti`."""
    out = {}
    for direction, match in (("up", f"dport = :{port}"), ("down", f"sport = :{port}")):
        done = _run(["ss", "-tinH", "state", "established", f"( {match} )"])
        totals = dict.fromkeys((*_SS_COUNTERS, "retrans_segs"), 0)
        for token in done.stdout.split():
            key, _, value = token.partition(":")
            if key in _SS_COUNTERS and value.isdigit():
                totals[key] += int(value)
            elif key == "retrans" and "/" in value:  # retrans:in_flight/total
                totals["retrans_segs"] += int(value.split("/")[1])
        out[direction] = totals
    return out


def wire_bytes(before: dict[str, int], after: dict[str, int]) -> tuple[float, float, int]:
    """(data bytes sent once, incl. per-packet headers; pure-ACK bytes; retransmitted segments)."""
    d = {k: after[k] - before[k] for k in after}
    payload = d["bytes_sent"] - d["bytes_retrans"]
    packets = d["data_segs_out"] - d["retrans_segs"]
    acks = d["segs_out"] - d["data_segs_out"]
    return (
        float(payload + TCP_IP_ETH_HEADER_BYTES * packets),
        float(TCP_IP_ETH_HEADER_BYTES * acks),
        d["retrans_segs"],
    )


def probe() -> str | None:
    """None when lo + tbf work in this namespace, else why not."""
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    done = _run(["ip", "link", "set", "lo", "up"])
    if done.returncode != 0:
        return f"cannot bring lo up in the namespace: {done.stderr.strip()}"
    tbf = ["tbf", "rate", "100kbit", "burst", "1600", "limit", str(LIMIT_BYTES)]
    done = _run(["tc", "qdisc", "add", "dev", "lo", "root", *tbf])
    if done.returncode != 0:
        return f"`tc qdisc add ... tbf` is not permitted or tbf is missing: {done.stderr.strip()}"
    unshape()
    return None


def qdisc_support() -> dict[str, bool]:
    out = {}
    for kind in ("tbf", "htb", "netem"):
        extra = ["rate", "1mbit", "burst", "1600", "limit", "10000"] if kind == "tbf" else []
        out[kind] = _run(["tc", "qdisc", "add", "dev", "lo", "root", kind, *extra]).returncode == 0
        unshape()
    return out


# -- server ----------------------------------------------------------------------------------------
class DelayedApp:
    """ASGI wrapper: each HTTP response starts `delay_s` late (the round trip netem can't add)."""

    def __init__(self, app: Any, delay_s: float) -> None:
        self.app, self.delay_s = app, delay_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.delay_s <= 0:
            await self.app(scope, receive, send)
            return

        async def delayed(message: Any) -> None:
            if message["type"] == "http.response.start":
                await asyncio.sleep(self.delay_s)
            await send(message)

        await self.app(scope, receive, delayed)


def start_server(port: int, rtt_s: float) -> tuple[Any, threading.Thread, DelayedApp]:
    import uvicorn

    from edgesplit.offload.server import ServerConfig, create_app, load_pipeline

    pipeline, order = load_pipeline()
    app = DelayedApp(create_app(pipeline, ServerConfig(port=port), patch_order=order), rtt_s)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the offload server did not start")
        time.sleep(0.05)
    return server, thread, app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until(t: float) -> None:
    wait = t - time.monotonic()
    if wait > 0:
        time.sleep(wait)


# -- one-shot settings -----------------------------------------------------------------------------
def one_shot(
    url: str,
    port: int,
    images: np.ndarray,
    link: tuple[str, int, int, str],
    settings: tuple[tuple[str, str, str, int | None], ...],
    num_requests: int,
    rtt_s: float,
    rate: float,
) -> dict[str, Any]:
    from edgesplit.offload.client import OffloadClient
    from edgesplit.offload.emulation import TokenBucket, make_trace
    from edgesplit.offload.policy import predicted_round_s

    name, mtu, burst, mode = link
    shape(mode, rate, burst, mtu, port)
    origin = time.monotonic()  # tbf starts full; the replay's bucket fills before request 1
    bucket = TokenBucket(make_trace("steady", rate), burst_bytes=float(burst))
    rows: dict[str, Any] = {}
    with OffloadClient(url, rtt_s=rtt_s) as client:
        info = client.info()
        _wait_until(time.monotonic() + 0.3)  # let the bucket refill after the handshake
        for setting, which, codec, quality in settings:
            if which == "all":
                indices = list(range(info.num_patches))
            else:
                indices = [int(i) for i in info.patch_order[: int(which.split(":")[1])]]
            reqs: list[dict[str, float]] = []
            snapshot = (tbf_stats()["bytes"], tcp_counters(port))
            t_next = time.monotonic() + FRAME_PERIOD_S
            for i in range(num_requests + 1):
                _wait_until(t_next)
                t_next += FRAME_PERIOD_S
                now = (tbf_stats()["bytes"], tcp_counters(port))
                if reqs:  # the previous request, its answer and every ACK are done by now
                    up, up_acks, up_retrans = wire_bytes(snapshot[1]["up"], now[1]["up"])
                    down, down_acks, down_retrans = wire_bytes(snapshot[1]["down"], now[1]["down"])
                    reqs[-1].update(
                        tbf_bytes=float(now[0] - snapshot[0]),
                        up_bytes=up,
                        down_bytes=down,
                        up_ack_bytes=up_acks,
                        down_ack_bytes=down_acks,
                        retrans_segs=float(up_retrans + down_retrans),
                    )
                snapshot = now
                if i == num_requests:
                    break
                start = time.monotonic() - origin
                answer, stats = client.send_round(
                    images[i % len(images)],
                    indices,
                    codec=codec,  # type: ignore[arg-type]
                    quality=quality,
                    patch_size=info.patch_size,
                )
                reqs.append(
                    {
                        "start_s": start,
                        "body_bytes": float(stats.body_bytes),
                        "measured_s": stats.elapsed_s,
                        "server_s": answer.server_compute_s,
                        "model_s": predicted_round_s(
                            stats.body_bytes, answer.server_compute_s, rate, rtt_s
                        ),
                    }
                )
            for r in reqs:  # the app's token bucket fed the bytes each direction really sent
                if mode == "uplink":  # the request; the client's ACKs come after it
                    done = bucket.transmit(r["up_bytes"], r["start_s"]) + r["server_s"] + rtt_s
                else:  # one bucket: request + server ACKs, then (after the delay) the answer
                    up = r["up_bytes"] + r["down_ack_bytes"]
                    done = bucket.transmit(up, r["start_s"]) + r["server_s"] + rtt_s
                    done = bucket.transmit(r["down_bytes"] + r["up_ack_bytes"], done)
                r["replay_s"] = done - r["start_s"]
            rows[setting] = summarise(reqs, rate, burst)
            print(
                f"[{name}] {setting}: body {rows[setting]['body_bytes']:.0f} B, wire "
                f"{rows[setting]['up_bytes']:.0f}/{rows[setting]['down_bytes']:.0f} B up/down, retx "
                f"{rows[setting]['retransmitted_segments']}, measured {rows[setting]['measured_s']:.3f}"
                f" s, model {rows[setting]['model_s']:.3f} s, replay "
                f"{rows[setting]['replay_s']:.3f} s",
                flush=True,
            )
    counted = tbf_stats()
    unshape()
    return {"mtu": mtu, "burst_bytes": burst, "mode": mode, "tbf": counted, "settings": rows}


def summarise(reqs: list[dict[str, float]], rate: float, burst: int) -> dict[str, Any]:
    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in reqs]))

    measured = np.array([r["measured_s"] for r in reqs])
    model = np.array([r["model_s"] for r in reqs])
    replay = np.array([r["replay_s"] for r in reqs])
    return {
        "num_requests": len(reqs),
        "body_bytes": mean("body_bytes"),
        "up_bytes": mean("up_bytes"),
        "down_bytes": mean("down_bytes"),
        "tbf_bytes": mean("tbf_bytes"),
        "retransmitted_segments": int(sum(r["retrans_segs"] for r in reqs)),
        "server_s": mean("server_s"),
        "measured_s": float(measured.mean()),
        "measured_p50_s": float(np.median(measured)),
        "measured_max_s": float(measured.max()),
        "model_s": float(model.mean()),
        "replay_s": float(replay.mean()),
        "ratio_measured_model": float(np.median(measured / model)),
        "ratio_measured_replay": float(np.median(measured / replay)),
        # the least the kernel must have taken: body beyond one full bucket at the rate
        "shaped_floor_s": max(0.0, (mean("body_bytes") - burst) / rate),
        "requests": [
            {k: round(v, 5) for k, v in r.items() if k != "server_s"} | {"server_s": r["server_s"]}
            for r in reqs
        ],
    }


# -- how far a socket write runs ahead of the link ---------------------------------------------
def socket_probe(
    mtu: int, burst: int, rate: float, lowat: bool, total: int = 4000
) -> dict[str, Any]:
    """Write `total` bytes in 100 B writes through a tbf at `rate` (idle, full bucket) with a
    socket timeout (as httpx: Python polls for writability first); return how many bytes the
    writes had handed over vs the receiver had got, over time. The excess is what a cut decided
    on write progress cannot see."""
    shape("both", rate, burst, mtu, 0)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    received: list[tuple[float, int]] = []

    def receive() -> None:
        conn, _ = listener.accept()
        got = 0
        while got < total:
            data = conn.recv(65536)
            if not data:
                break
            got += len(data)
            received.append((time.monotonic(), got))
        conn.close()

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    sender = socket.socket()
    if lowat:
        sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 128)
    sender.settimeout(10.0)
    sender.connect(listener.getsockname())
    time.sleep(0.5)  # let the bucket refill after the handshake
    t0 = time.monotonic()
    written: list[tuple[float, int]] = []
    for i in range(total // 100):
        sender.sendall(b"x" * 100)
        written.append((time.monotonic(), 100 * (i + 1)))
    reader.join(timeout=30)
    sender.close()
    listener.close()
    unshape()
    times = np.array([t for t, _ in received])
    counts = np.array([n for _, n in received])

    def delivered(t: float) -> int:
        i = int(np.searchsorted(times, t, side="right"))
        return int(counts[i - 1]) if i else 0

    ahead = [n - delivered(t) for t, n in written]
    first_block = next(
        (n - 100 for (t, n), (tp, _) in zip(written[1:], written, strict=False) if t - tp > 0.005),
        total,
    )
    return {
        "mtu": mtu,
        "burst_bytes": burst,
        "notsent_lowat": 128 if lowat else None,
        "accepted_before_first_block_bytes": int(first_block),
        "max_ahead_of_receiver_bytes": int(max(ahead)),
        "median_ahead_of_receiver_bytes": float(np.median(ahead[len(ahead) // 2 :])),
        "write_done_s": round(written[-1][0] - t0, 4),
        "delivered_s": round(float(times[-1]) - t0, 4),
    }


# -- progressive round 1 under a rate step -------------------------------------------------------
def progressive(
    url: str,
    port: int,
    images: np.ndarray,
    labels: np.ndarray,
    app: DelayedApp,
    variant: str,
    num_frames: int,
    rtt_s: float,
    rate: float,
    slo_s: float,
) -> dict[str, Any]:

    from edgesplit.offload import load_tables
    from edgesplit.offload.client import LinkEmulator, OffloadClient
    from edgesplit.offload.emulation import BandwidthTrace, TokenBucket

    options = load_tables().options
    mtu, burst = PROGRESSIVE_LINK
    transport = None
    link = None
    if variant == "app-emulator":
        unshape()
        app.delay_s = 0.0  # the emulator adds the one-way delays itself
        step_s = 0.05
        rates = np.array([_level(i * step_s) for i in range(round(2 * STEP_EVERY_S / step_s))])
        trace = BandwidthTrace("step", step_s, rates * rate)
        link = LinkEmulator(TokenBucket(trace, burst_bytes=300.0), rtt_s / 2)
    else:
        app.delay_s = rtt_s
        shape("uplink", STEP_HIGH * rate, burst, mtu, port)
        transport = _transport(variant)
    frames: list[dict[str, Any]] = []
    with OffloadClient(
        url,
        rtt_s=rtt_s,
        link=link,
        transport=transport,
        initial_bandwidth_bytes_per_s=rate / 2,
        delivery_pacing=variant == "kernel-acked",
    ) as client:
        client.info()
        start = time.monotonic() + 0.3
        if link is not None:
            link.origin_s = start
        stop = threading.Event()
        stepper = threading.Thread(
            target=_toggle_rate, args=(start, num_frames * FRAME_PERIOD_S, rate, burst, stop)
        )
        if variant != "app-emulator":
            stepper.start()
        for f in range(num_frames):
            arrival = start + f * FRAME_PERIOD_S
            _wait_until(arrival)
            result = client.classify(images[f], options, slo_s=slo_s)
            latency = time.monotonic() - arrival
            cap = next(o for o in options if o.name == result.option_name).k1
            frames.append(
                {
                    "t_s": round(f * FRAME_PERIOD_S, 2),
                    "latency_s": round(latency, 4),
                    "option": result.option_name,
                    "progressive": result.option_name.startswith("progressive"),
                    "cap": cap,
                    "received": result.response.num_received,
                    "rounds": len(result.rounds),
                    "bytes": result.total_bytes,
                    "correct": bool(result.response.label == int(labels[f])),
                }
            )
        stop.set()
        if stepper.is_alive():
            stepper.join()
    app.delay_s = rtt_s
    unshape()

    def part(rows: list[dict[str, Any]]) -> dict[str, Any]:
        lat = np.array([r["latency_s"] for r in rows])
        prog = [r for r in rows if r["progressive"]]
        return {
            "frames": len(rows),
            "slo_attainment": float((lat <= slo_s).mean()),
            "accuracy": float(np.mean([r["correct"] for r in rows])),
            "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p95_s": float(np.percentile(lat, 95)),
            "latency_max_s": float(lat.max()),
            "mean_patches_received": float(np.mean([r["received"] for r in rows])),
            "mean_bytes": float(np.mean([r["bytes"] for r in rows])),
            "progressive_frames": len(prog),
            "cut_frames": sum(r["received"] < r["cap"] for r in prog),
        }

    high = [r for r in frames if _level(r["t_s"]) == STEP_HIGH]
    low = [r for r in frames if _level(r["t_s"]) == STEP_LOW]
    for r in frames:
        r["rate_factor"] = _level(r["t_s"])
    summary = {"all": part(frames), "high_rate": part(high), "low_rate": part(low)}
    a = summary["all"]
    print(
        f"[adaptive {variant} SLO {slo_s}] met {a['slo_attainment']:.0%}, p95 {a['latency_p95_s']:.3f} s,"
        f" patches high {summary['high_rate']['mean_patches_received']:.1f}, low "
        f"{summary['low_rate']['mean_patches_received']:.1f}, cut {a['cut_frames']}"
        f"/{a['progressive_frames']}",
        flush=True,
    )
    return {
        "slo_s": slo_s,
        "link": {"mtu": mtu, "burst_bytes": burst},
        "summary": summary,
        "frames": frames,
    }


def _transport(variant: str) -> Any:
    """The httpx transport of a variant: TCP_NOTSENT_LOWAT=128 on its sockets, or the default."""
    import httpx

    if variant != "kernel-notsent-lowat":
        return None
    return httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 128)])


def cut_probe(
    url: str,
    port: int,
    images: np.ndarray,
    app: DelayedApp,
    variant: str,
    num_frames: int,
    rtt_s: float,
    rate: float,
    slo_s: float = CUT_SLO_S,
) -> dict[str, Any]:
    """One progressive option (cap 64, one round) sent with an estimate of 1.6x the rate over a
    link at 0.4x: only the rate measured during the upload itself can save the deadline."""
    from edgesplit.offload import load_tables
    from edgesplit.offload.client import LinkEmulator, OffloadClient
    from edgesplit.offload.emulation import TokenBucket, make_trace
    from edgesplit.offload.policy import Decision

    option = next(o for o in load_tables().options if o.progressive and o.k2 == 0 and o.k1 == 64)
    mtu, burst = PROGRESSIVE_LINK
    link = None
    if variant == "app-emulator":
        app.delay_s = 0.0
        bucket = TokenBucket(make_trace("steady", STEP_LOW * rate), burst_bytes=300.0)
        link = LinkEmulator(bucket, rtt_s / 2)
    else:
        shape("uplink", STEP_LOW * rate, burst, mtu, port)
    frames = []
    with OffloadClient(
        url,
        rtt_s=rtt_s,
        transport=_transport(variant),
        link=link,
        delivery_pacing=variant == "kernel-acked",
    ) as client:
        info = client.info()
        start = time.monotonic() + 0.3
        for f in range(num_frames):
            arrival = start + f * FRAME_PERIOD_S
            _wait_until(arrival)
            answer, stats = client.send_progressive(
                images[f],
                Decision(option, 0.0, 0.0, True, option.accuracy),
                info,
                slo_s=slo_s,
                frame_start_s=arrival,
                request_id=f"cut-{variant}-{slo_s:g}-{f}",
                rate_bytes_per_s=STEP_HIGH * rate,
            )
            frames.append(
                {
                    "latency_s": round(time.monotonic() - arrival, 4),
                    "received": answer.num_received,
                    "body_bytes": stats.body_bytes,
                }
            )
    app.delay_s = rtt_s
    unshape()
    lat = np.array([r["latency_s"] for r in frames])
    summary = {
        "option": option.name,
        "slo_s": slo_s,
        "link_rate_bytes_per_s": STEP_LOW * rate,
        "estimate_bytes_per_s": STEP_HIGH * rate,
        "slo_attainment": float((lat <= slo_s).mean()),
        "latency_p50_s": float(np.median(lat)),
        "latency_max_s": float(lat.max()),
        "mean_patches_received": float(np.mean([r["received"] for r in frames])),
        "mean_body_bytes": float(np.mean([r["body_bytes"] for r in frames])),
    }
    print(
        f"[cut probe {variant} SLO {slo_s:g}] met {summary['slo_attainment']:.0%}, p50 "
        f"{summary['latency_p50_s']:.3f} s, patches {summary['mean_patches_received']:.1f}, "
        f"body {summary['mean_body_bytes']:.0f} B",
        flush=True,
    )
    return {"summary": summary, "frames": frames}


def _level(t_s: float) -> float:
    """Rate factor of the toggled step trace at time t_s (high first)."""
    return STEP_HIGH if int(t_s // STEP_EVERY_S) % 2 == 0 else STEP_LOW


def _toggle_rate(
    start: float, duration_s: float, rate: float, burst: int, stop: threading.Event
) -> None:
    """`tc qdisc change` the uplink tbf's rate at each step of the toggled trace."""
    t = STEP_EVERY_S
    while t < duration_s:
        if stop.wait(max(0.0, start + t - time.monotonic())):
            return
        change_rate("uplink", _level(t) * rate, burst)
        t += STEP_EVERY_S


# -- plot ------------------------------------------------------------------------------------------
def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 2, figsize=(13, 8.5))
    ax = grid[0][0]
    links = result["one_shot"]
    settings = list(next(iter(links.values()))["settings"])
    width = 0.8 / (2 * len(links))
    x = np.arange(len(settings))
    for li, (lname, data) in enumerate(links.items()):
        for ki, key in enumerate(("ratio_measured_model", "ratio_measured_replay")):
            ax.bar(
                x + (2 * li + ki - len(links) + 0.5) * width,
                [data["settings"][s][key] for s in settings],
                width,
                color=f"C{li}",
                alpha=1.0 if ki else 0.45,
                label=f"{lname}: / {'model' if ki == 0 else 'bucket replay'}",
            )
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(x, settings, fontsize=8)
    ax.set_ylabel("measured / predicted round time (median)")
    ax.set_title("(a) one-shot rounds through kernel tbf (100 kbit/s)")
    ax.legend(fontsize=6.5, ncol=2)

    ax = grid[0][1]
    for vi, (variant, data) in enumerate(result["cut_probe"].items()):
        lat = [r["latency_s"] for r in data["frames"]]
        got = [r["received"] for r in data["frames"]]
        ax.scatter(got, lat, color=f"C{vi}", label=variant, alpha=0.7)
        loose = result.get("cut_probe_loose", {}).get(variant)
        if loose is not None:
            ax.scatter(
                [r["received"] for r in loose["frames"]],
                [r["latency_s"] for r in loose["frames"]],
                color=f"C{vi}",
                marker="x",
                alpha=0.7,
                label=f"{variant}, SLO {loose['summary']['slo_s']:g} s",
            )
            ax.axhline(loose["summary"]["slo_s"], color="red", lw=0.8, ls=":")
    slo = next(iter(result["cut_probe"].values()))["summary"]["slo_s"]
    ax.axhline(slo, color="red", lw=0.8)
    ax.set_xlim(0, 68)
    ax.set_xlabel("patches the server received (cap 64)")
    ax.set_ylabel("frame latency (s); SLOs in red")
    ax.set_title("(b) cut probe: estimate 160 kbit/s, link 40 kbit/s")
    ax.legend(fontsize=7)

    prog = result["progressive"]
    duration = max(r["t_s"] for data in prog.values() for r in data["frames"]) + FRAME_PERIOD_S
    for ax, key, label in (
        (grid[1][0], "latency_s", "frame latency (s); SLOs dotted"),
        (grid[1][1], "received", "patches the server received"),
    ):
        names = list(dict.fromkeys(v.split("@")[0] for v in prog))  # one colour per client
        for variant, data in prog.items():
            vi = names.index(variant.split("@")[0])
            times = [r["t_s"] for r in data["frames"]]
            style = "-" if data["slo_s"] == max(SLOS_S) else "--"
            ax.plot(
                times,
                [r[key] for r in data["frames"]],
                style,
                marker=".",
                ms=3,
                lw=0.8,
                color=f"C{vi}",
                label=variant,
            )
        t = STEP_EVERY_S
        while t < duration:
            if _level(t) == STEP_LOW:
                ax.axvspan(t, min(t + STEP_EVERY_S, duration), color="grey", alpha=0.15, lw=0)
            t += STEP_EVERY_S
        ax.set_xlabel("frame time (s); shaded: 40 kbit/s, else 160 kbit/s")
        ax.set_ylabel(label)
        ax.legend(fontsize=6.5, ncol=2)
    for slo_s in SLOS_S:
        grid[1][0].axhline(slo_s, color="red", lw=0.8, ls=":")
    grid[1][0].set_title("(c) adaptive classify (progressive round 1 allowed)")
    grid[1][1].set_title("(d) where round 1 ended")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- entry points ----------------------------------------------------------------------------------
def run_in_netns(args: argparse.Namespace) -> int:
    why = probe()
    if why is not None:
        print(f"kernel shaping check not possible: {why}; nothing written", file=sys.stderr)
        return NOT_PERMITTED_RC
    import torch

    torch.set_num_threads(1)
    from edgesplit.offload.data import load_fashion_mnist, upscale

    support = qdisc_support()
    _run(["ip", "link", "set", "lo", "mtu", "1500", "up"])
    num_requests = 3 if args.smoke else (6 if args.quick else 12)
    num_frames = 16 if args.quick else 40
    raw, labels = load_fashion_mnist("test")
    images = upscale(raw[: max(num_frames, num_requests)])
    port = _free_port()
    rtt_s = args.rtt_ms / 1000
    rate = args.rate_kbit * 1000 / 8
    server, thread, app = start_server(port, rtt_s)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    result: dict[str, Any] = {
        "one_shot": {},
        "socket_probe": [],
        "cut_probe": {},
        "cut_probe_loose": {},
        "progressive": {},
    }
    try:
        links = LINKS[:1] if args.smoke else LINKS
        settings = (("full-raw", "all", "raw", None),) if args.smoke else SETTINGS
        for link in links:
            result["one_shot"][link[0]] = one_shot(
                url, port, images, link, settings, num_requests, rtt_s, rate
            )
        cut_frames = 4 if args.smoke else num_requests
        for variant in ("kernel-acked", "kernel-wallclock"):
            result["cut_probe_loose"][variant] = cut_probe(
                url, port, images, app, variant, cut_frames, rtt_s, rate, LOOSE_CUT_SLO_S
            )
        for variant in VARIANTS if not args.smoke else ("kernel-acked", "kernel-wallclock"):
            result["cut_probe"][variant] = cut_probe(
                url, port, images, app, variant, cut_frames, rtt_s, rate
            )
        if not args.smoke:
            result["socket_probe"] = [
                socket_probe(mtu, burst, STEP_LOW * rate, lowat)
                for mtu, burst in ((1500, 1600), PROGRESSIVE_LINK)
                for lowat in (True, False)
            ]
            for row in result["socket_probe"]:
                print(f"[socket probe] {row}", flush=True)
            for slo_s in SLOS_S:
                for variant in VARIANTS:
                    result["progressive"][f"{variant}@{slo_s:g}"] = progressive(
                        url, port, images, labels, app, variant, num_frames, rtt_s, rate, slo_s
                    )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        unshape()
    method = {
        "namespace": "unshare -n (fresh network namespace; lo only)",
        "qdiscs_available": support,
        "rate_bytes_per_s": rate,
        "rtt_s": rtt_s,
        "rtt_how": "application level: ASGI wrapper delays each response start"
        + (" (netem is not available in this kernel)" if not support["netem"] else ""),
        "links": {n: {"mtu": m, "burst_bytes": b, "mode": mode} for n, m, b, mode in LINKS},
        "modes": {
            "uplink": "htb root; u32 filter on the server's port -> tbf class (client->server "
            "packets: request and the client's ACKs); everything else unshaped",
            "both": "tbf at the root of lo: request, response and all ACKs share one bucket",
        },
        "one_shot": f"send_round every {FRAME_PERIOD_S} s, {num_requests} requests per setting "
        "(test images 0..n-1); measured = RoundStats.elapsed_s (POST to answer, encoding "
        "excluded); model = policy.predicted_round_s(body, that request's server compute, rate, "
        "rtt) with 300 B HTTP overhead; replay = emulation.TokenBucket(steady trace, the kernel's "
        "burst) fed the bytes each direction sent once (`ss -ti` bytes_sent - bytes_retrans + 66 B "
        "per data packet; tbf's own counter agrees) at the request's real start time, + rtt + "
        "server compute; 'both' mode: request + server ACKs, then rtt + compute, then answer + "
        "client ACKs through the same bucket",
        "progressive": f"OffloadClient.classify (robust default) over the committed tables, SLO "
        f"{'/'.join(f'{x:g}' for x in SLOS_S)} s, {num_frames} frames every {FRAME_PERIOD_S} s "
        f"(test images 0..), uplink tbf (MTU {PROGRESSIVE_LINK[0]}, burst {PROGRESSIVE_LINK[1]} "
        f"B) toggled between {STEP_HIGH}x and {STEP_LOW}x the rate every {STEP_EVERY_S} s by "
        "`tc qdisc change` from a second thread; variants: "
        + "; ".join(f"{k}: {v}" for k, v in VARIANT_HOW.items()),
        "cut_probe": f"send_progressive of the one-round progressive option with cap 64 (ends "
        f"4/8/16/32/64), SLO {CUT_SLO_S} s ('cut_probe', every variant) and {LOOSE_CUT_SLO_S} s "
        "('cut_probe_loose', kernel-acked and kernel-wallclock), rate_bytes_per_s = "
        f"{STEP_HIGH}x the rate (an estimate from before a drop) over an uplink tbf at "
        f"{STEP_LOW}x (MTU {PROGRESSIVE_LINK[0]}, burst {PROGRESSIVE_LINK[1]} B), frames every "
        f"{FRAME_PERIOD_S} s, {cut_frames} frames per probe; app-emulator: steady {STEP_LOW}x, "
        "burst 300 B, no kernel shaping",
        "socket_probe": "raw TCP: 4000 B in 100 B sendall calls (socket timeout set, as httpx "
        f"does) through root tbf at {STEP_LOW}x the rate after 0.5 s idle; 'ahead' = bytes the "
        "writes had handed over minus bytes the receiver had got at that moment",
        "torch_threads": 1,
    }
    result["wall_s"] = round(time.monotonic() - started, 1)
    if args.smoke:
        Path(args.out).write_text(json.dumps({"method": method, **result}, indent=1))
        return 0
    from common import DOCS, write_result

    write_result(NAME, _compact({"method": method, **result}), command=args.command)
    plot(result, DOCS / "offload_tbf.png")
    print(f"[done] {time.monotonic() - started:.0f} s", flush=True)
    return 0


def _compact(result: dict[str, Any]) -> dict[str, Any]:
    """The committed JSON: summaries, and per frame only what the plot draws."""
    for link in result["one_shot"].values():
        for row in link["settings"].values():
            row.pop("requests", None)
    plotted = ("t_s", "rate_factor", "latency_s", "received", "option")
    for run in result["progressive"].values():
        run["frames"] = [{k: f[k] for k in plotted} for f in run["frames"]]
    compacted: dict[str, Any] = _rounded(result)
    return compacted


def _rounded(value: Any) -> Any:
    """Floats to 4 significant digits, recursively (keeps the JSON small)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests and frames")
    parser.add_argument("--smoke", action="store_true", help="test mode: one setting, --out")
    parser.add_argument("--out", type=Path, help="JSON path for --smoke")
    parser.add_argument("--rate-kbit", type=float, default=RATE_BYTES_PER_S * 8 / 1000)
    parser.add_argument("--rtt-ms", type=float, default=RTT_S * 1000)
    parser.add_argument("--replot", action="store_true", help="redraw the plot from the JSON")
    parser.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--command", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out")
    if args.replot:
        from common import DOCS, RESULTS

        plot(json.loads((RESULTS / f"{NAME}.json").read_text()), DOCS / "offload_tbf.png")
        return 0
    if args.in_netns:
        return run_in_netns(args)
    if shutil.which("unshare") is None:
        print("kernel shaping check not possible: `unshare` is not installed; nothing written")
        return NOT_PERMITTED_RC
    command = "python benchmarks/offload_tbf.py " + " ".join(sys.argv[1:])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
    done = subprocess.run(
        ["unshare", "-n", *child, "--in-netns", "--command", command.strip()], env=env, check=False
    )
    if done.returncode != 0 and done.returncode != NOT_PERMITTED_RC:
        probe_run = _run(["unshare", "-n", "true"])
        if probe_run.returncode != 0:
            print(
                "kernel shaping check not possible: `unshare -n` is not permitted "
                f"({probe_run.stderr.strip()}); needs root or CAP_SYS_ADMIN; nothing written",
                file=sys.stderr,
            )
            return NOT_PERMITTED_RC
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
