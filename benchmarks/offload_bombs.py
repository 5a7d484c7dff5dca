"""Server memory under concurrent worst-case requests (issue 19): bombs of every codec.

Starts `python -m edgesplit.offload.server` (bundled weights, one torch thread) on 127.0.0.1,
warms it with valid requests, then for each kind of request sends ROUNDS waves of CONCURRENCY
identical requests at once and reads the server's resident memory from /proc: VmRSS before and
the peak VmHWM during the waves (the peak is reset through /proc/PID/clear_refs before each
kind, so each kind's peak is its own). Kinds:
  * valid-max    — a valid frame of all 64 patches, raw codec (the largest honest request)
  * zlib-bomb    — a zlib payload of the body limit (256 KiB) that inflates to 250 MiB
  * png-bomb     — a PNG whose IHDR declares 20000x20000
  * jpeg-bomb    — a JPEG whose SOF declares 65000x65000
  * webp-bomb    — a WebP whose VP8X canvas declares 16384x16384
  * body-max     — 256 KiB of garbage (the body limit; refused as a bad frame)
`--before-src DIR` also measures another checkout's server (a worktree of the commit before
issue 19), first, so before and after come from the same script on the same machine.

    python benchmarks/offload_bombs.py                                   # ~1 min
    git worktree add /tmp/before 6c527b0
    python benchmarks/offload_bombs.py --before-src /tmp/before/src      # + the old server
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
from PIL import Image

from common import ROOT, write_result
from edgesplit.offload.codec import encode_patches
from edgesplit.offload.data import load_fashion_mnist, upscale
from edgesplit.offload.patches import patchify
from edgesplit.offload.protocol import CONTENT_TYPE, PatchRequestHeader, encode_frame

NAME = "offload_bombs"
TOKEN = "bench"
CONCURRENCY = 8
ROUNDS = 3
MAX_BODY_BYTES = 256 * 1024  # the server's default limit
KINDS = ("valid-max", "zlib-bomb", "png-bomb", "jpeg-bomb", "webp-bomb", "body-max")


def _frame(payload: bytes, codec: str, request_id: str) -> bytes:
    header = PatchRequestHeader.model_validate(
        {
            "request_id": request_id,
            "image_size": 64,
            "patch_size": 8,
            "codec": codec,
            "indices": list(range(64)),
            "payload_bytes": len(payload),
        }
    )
    return encode_frame(header, payload)


def _png_bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 20_001 * 200, 9)  # 200 rows of zeros
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buffer, format="JPEG", quality=50)
    data = bytearray(buffer.getvalue())
    struct.pack_into(">HH", data, data.index(b"\xff\xc0") + 5, 65_000, 65_000)
    return bytes(data)


def _webp_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, format="WEBP", lossless=True)
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (16383).to_bytes(3, "little") * 2
    body = b"WEBP" + vp8x + buffer.getvalue()[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _zlib_bomb() -> bytes:
    """The largest inflation that fits the body limit: ~250 MiB of zeros in < 256 KiB."""
    return zlib.compress(bytes(250 * 1024 * 1024), 9)


def bodies(kind: str, index: int) -> bytes:
    """One request body of `kind`; `index` keeps request ids distinct."""
    request_id = f"{kind}-{index}"
    if kind == "valid-max":
        image = upscale(load_fashion_mnist("test")[0][:1])[0]
        return _frame(encode_patches(patchify(image, 8), "raw"), "raw", request_id)
    if kind == "zlib-bomb":
        return _frame(_zlib_bomb(), "zlib", request_id)
    if kind == "png-bomb":
        return _frame(_png_bomb(), "png", request_id)
    if kind == "jpeg-bomb":
        return _frame(_jpeg_bomb(), "jpeg", request_id)
    if kind == "webp-bomb":
        return _frame(_webp_bomb(), "webp", request_id)
    return b"ESPL" + bytes(MAX_BODY_BYTES - 4)


def _status_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(port: int, server_src: Path, log: Path) -> subprocess.Popen[bytes]:
    """The server in a subprocess; its log goes to a file (a full pipe would block it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(server_src)}
    command = [sys.executable, "-m", "edgesplit.offload.server", "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "--token", TOKEN], env=env, stdout=subprocess.DEVNULL, stderr=sink
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            threading.Event().wait(0.2)
    process.kill()
    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")


def _wave(url: str, payloads: list[bytes]) -> list[int]:
    """Send all payloads at once (one thread each); the statuses."""
    statuses = [0] * len(payloads)
    barrier = threading.Barrier(len(payloads))

    def send(i: int) -> None:
        headers = {"authorization": f"Bearer {TOKEN}", "content-type": CONTENT_TYPE}
        barrier.wait()
        try:
            response = httpx.post(
                f"{url}/v1/infer", content=payloads[i], headers=headers, timeout=120
            )
            statuses[i] = response.status_code
        except httpx.HTTPError:
            statuses[i] = -1

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def measure(server_src: Path) -> dict[str, object]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="offload_bombs_")) / "server.log"
    process = _start(port, server_src, log)
    try:
        _wave(url, [bodies("valid-max", -i - 1) for i in range(CONCURRENCY)])  # warm up
        rows = []
        for kind in KINDS:
            payloads = [bodies(kind, i) for i in range(CONCURRENCY * ROUNDS)]
            before = _status_kb(process.pid)
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # reset VmHWM to VmRSS
            start = time.monotonic()
            statuses = []
            for r in range(ROUNDS):
                statuses += _wave(url, payloads[r * CONCURRENCY : (r + 1) * CONCURRENCY])
            after = _status_kb(process.pid)
            rows.append(
                {
                    "kind": kind,
                    "body_bytes": len(payloads[0]),
                    "statuses": sorted(set(statuses)),
                    "rss_before_mb": round(before["VmRSS"] / 1024, 1),
                    "peak_rss_mb": round(after["VmHWM"] / 1024, 1),
                    "peak_growth_mb": round((after["VmHWM"] - before["VmRSS"]) / 1024, 1),
                    "rss_after_mb": round(after["VmRSS"] / 1024, 1),
                    "wall_s": round(time.monotonic() - start, 2),
                }
            )
            print(rows[-1], flush=True)
        healthy = httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok"
    finally:
        process.terminate()
        process.wait(timeout=20)
    errors = log.read_text(errors="replace").count("Traceback")
    return {"rows": rows, "healthy_after": healthy, "tracebacks_in_server_log": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-src", type=Path, default=None)
    args = parser.parse_args()
    result: dict[str, object] = {}
    if args.before_src is not None:
        result["before"] = measure(args.before_src)
    result["after"] = measure(ROOT / "src")
    result["method"] = {
        "concurrency": CONCURRENCY,
        "rounds": ROUNDS,
        "kinds": list(KINDS),
        "server": "python -m edgesplit.offload.server (bundled weights, defaults but --token)",
        "memory": "VmRSS before each kind; VmHWM (peak) after, reset via clear_refs 5",
        "before": "the server of --before-src (the commit before issue 19)",
    }
    command = "python benchmarks/offload_bombs.py" + (
        " --before-src <worktree of 6c527b0>/src" if args.before_src else ""
    )
    print(write_result(NAME, result, command))


if __name__ == "__main__":
    main()
