"""A head address nobody listens on fails in seconds with edgesplit's own message (not Ray's
minutes-long GCS retry loop)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from edgesplit.errors import DeviceUnavailableError
from edgesplit.runtime.cluster import check_reachable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on exit: connecting is refused


def test_closed_port_is_device_unavailable() -> None:
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(DeviceUnavailableError, match=r"cluster up --head") as info:
        check_reachable(address)
    assert f"no Ray cluster at {address}" in str(info.value)


def test_listening_port_and_auto_pass() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        check_reachable(f"127.0.0.1:{s.getsockname()[1]}")
        check_reachable(f"ray://127.0.0.1:{s.getsockname()[1]}")
    check_reachable("auto")


def test_cluster_status_fails_fast_on_a_wrong_address() -> None:
    address = f"127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "edgesplit.cli.main", "cluster", "status", "--address", address],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == DeviceUnavailableError.exit_code, result.stderr
    assert f"no Ray cluster at {address}" in result.stderr
    assert "edgesplit cluster up --head" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - start < 30  # Ray's own loop takes minutes
