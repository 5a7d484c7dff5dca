"""`testbed up --dry-run` says what the testbed does not emulate, and `--subnet` takes what the
help says (review session 12, F14): without cpu_quota the nodes are not heterogeneous, memory is
declared and not enforced, a subnet wider than a /24 is refused. Nothing is created."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgesplit.api import testbed as api_testbed
from edgesplit.cli.main import _register, app
from edgesplit.core.cluster import load_cluster
from edgesplit.errors import ConfigError
from edgesplit.testbed.layout import plan_layout
from tests.unit.testbed.test_testbed_cli import nothing_is_touched  # noqa: F401 (autouse)

_register()
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _flat(text: str) -> str:
    return " ".join(re.sub(r"[│┃║|]", " ", text).split())


def _dry_run(monkeypatch: pytest.MonkeyPatch, cluster: Path) -> str:
    monkeypatch.setattr(api_testbed, "check_host", lambda: None)
    result = runner.invoke(app, ["testbed", "up", str(cluster), "--dry-run", "--name", "t1"])
    assert result.exit_code == 0, result.output
    return _flat(result.output)


def test_no_cpu_quota_says_the_nodes_are_not_heterogeneous(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flat = _dry_run(monkeypatch, EXAMPLES / "cluster.toml")  # no device sets cpu_quota
    assert "no device sets cpu_quota: every node runs at this host's full speed" in flat
    assert "the nodes are not heterogeneous (kinds and [[kinds]] slowdowns are not emulated" in flat
    assert "memory MB declared" in flat
    assert "memory is not enforced (no memory cgroup)" in flat


def test_quotas_everywhere_need_no_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    flat = _dry_run(monkeypatch, EXAMPLES / "testbed.toml")
    assert "cpu_quota" not in flat
    assert "memory is not enforced" in flat


def test_some_devices_without_a_quota_are_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = (EXAMPLES / "testbed.toml").read_text()
    (tmp_path / "c.toml").write_text(text.replace("cpu_quota = 0.1\n", "", 1))
    flat = _dry_run(monkeypatch, tmp_path / "c.toml")
    assert "no cpu_quota on cam0: they run at this host's full speed" in flat
    assert "not heterogeneous" not in flat


@pytest.mark.parametrize("subnet", ["10.0.0.0/16", "192.168.0.0/23"])
def test_a_subnet_wider_than_a_24_is_refused(subnet: str) -> None:
    argv = ["testbed", "up", str(EXAMPLES / "testbed.toml"), "--dry-run", "--subnet", subnet]
    result = runner.invoke(app, argv)
    assert isinstance(result.exception, ConfigError), result.output
    assert f"subnet {subnet} is wider than a /24" in str(result.exception)


def test_a_24_or_smaller_is_taken() -> None:
    cluster = load_cluster(EXAMPLES / "testbed.toml")
    assert plan_layout(cluster, "t1", "10.99.1.0/24").head_ip == "10.99.1.1"
    assert plan_layout(cluster, "t1", "10.99.1.16/28").nodes[-1].ip == "10.99.1.22"
