"""Ray's driver-side notices go to our log, and a death we caused on purpose is not one of them."""

from __future__ import annotations

import logging

import pytest
from ray._private import worker as ray_worker

from edgesplit.runtime import cluster

NOTICE = (
    "A worker died or was killed while executing a task by an unexpected system error. "
    "Worker IP address: 127.0.0.1 Worker port: 41427 Worker PID: {pid} Worker exit type: "
    "SYSTEM_ERROR ... (1) the process was killed by the OOM killer due to high memory usage"
)


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Ray's printer replaced by a recorder, then routed as a session does."""
    printed: list[dict[str, object]] = []
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, _: printed.append(data))
    monkeypatch.setattr(cluster, "_EXPECTED_EXITS", set())
    cluster._route_ray_notices()
    return printed


def test_a_death_we_caused_is_not_announced(
    routed: list[dict[str, object]], caplog: pytest.LogCaptureFixture
) -> None:
    cluster.expect_exit({"device": "b", "pid": 4242})
    with caplog.at_level(logging.DEBUG, logger=cluster.__name__):
        ray_worker.print_to_stdstream(
            {"lines": [NOTICE.format(pid=4242)], "pid": "raylet", "is_err": False}, False
        )
    assert routed == []
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_another_death_is_a_warning_on_stderr_not_stdout(
    routed: list[dict[str, object]], caplog: pytest.LogCaptureFixture
) -> None:
    cluster.expect_exit({"device": "b", "pid": 4242})
    with caplog.at_level(logging.WARNING, logger=cluster.__name__):
        ray_worker.print_to_stdstream(
            {"lines": [NOTICE.format(pid=777)], "pid": "raylet", "is_err": False}, False
        )
    assert routed == []
    assert len(caplog.records) == 1
    assert "Worker PID: 777" in caplog.records[0].getMessage()


def test_worker_logs_pass_through_and_routing_is_installed_once(
    routed: list[dict[str, object]],
) -> None:
    cluster._route_ray_notices()  # a second session: not wrapped twice
    data = {"lines": ["hello"], "pid": 99, "is_err": False}
    ray_worker.print_to_stdstream(data, False)
    assert routed == [data]
