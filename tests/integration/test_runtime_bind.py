"""The embedded local Ray and the stages listen on 127.0.0.1 only (issue 15, item 6).

Starts a fresh embedded Ray in a child process (the session's Ray is a multi-node emulation)
and lists the TCP listeners of every process under it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_PROBE = """
import json, os
from edgesplit.runtime.cluster import RaySession
from edgesplit.runtime.config import RuntimeConfig


def descendants(root):
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            pass
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def listening_inodes():
    result = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    result[fields[9]] = fields[1].rsplit(":", 1)[0]
    return result


session = RaySession.open(RuntimeConfig(), [])
actor = session.start_actor("probe")
session.get(actor.call("configure", {
    "index": 0, "device": "probe", "start": 0, "end": 1, "epoch": 0, "compute": "emulated",
    "run_key_hex": "00" * 32}), 120)
inodes = listening_inodes()
listeners = []
for pid in descendants(os.getpid()):
    try:
        name = open(f"/proc/{pid}/comm").read().strip()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                listeners.append([name, inodes[link[8:-1]]])
    except OSError:
        pass
session.kill(actor)
del actor
session.close()
print(json.dumps(listeners))
"""


def test_embedded_ray_listens_on_loopback_only() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    listeners = json.loads(done.stdout.strip().splitlines()[-1])
    names = {name for name, _ in listeners}
    assert {"gcs_server", "raylet"} <= names, listeners
    assert len(listeners) >= 5, listeners  # Ray's servers and the stage's stream listener
    # /proc/net/tcp writes addresses as hex in host byte order: 0100007F = 127.0.0.1, and
    # ::ffff:127.0.0.1 ends in the same word in tcp6.
    exposed = [(n, ip) for n, ip in listeners if not ip.endswith("0100007F")]
    assert exposed == [], exposed
