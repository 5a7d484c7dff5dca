"""`edgesplit testbed` without creating anything (review session 12, F7): `up --dry-run` prints
the layout, `status` / `down` take no cluster file and check --name like `up` does.

Every function that could create or remove a kernel object is replaced by one that fails the
test, so these run safely as root too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NoReturn

import pytest
from typer.testing import CliRunner

from edgesplit.api import testbed as api_testbed
from edgesplit.cli.main import _register, app
from edgesplit.errors import ConfigError
from edgesplit.testbed import cgroups, lifecycle, network

_register()
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
TESTBED = Path(__file__).resolve().parents[3] / "examples" / "testbed.toml"


def _flat(text: str) -> str:
    return " ".join(re.sub(r"[│┃║|]", " ", text).split())


@pytest.fixture(autouse=True)
def nothing_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object, **_kwargs: object) -> NoReturn:
        raise AssertionError("a testbed command reached the host")

    for module, name in [
        (api_testbed, "_up"),
        (api_testbed, "_down"),
        (api_testbed, "_status"),
        (lifecycle, "up"),
        (lifecycle, "down"),
        (network, "build_network"),
        (network, "remove_network"),
        (cgroups, "create_group"),
        (cgroups, "remove_tree"),
    ]:
        monkeypatch.setattr(module, name, fail)


def test_up_dry_run_prints_what_it_would_create(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_testbed, "check_host", lambda: None)  # a ready host
    argv = ["testbed", "up", str(TESTBED), "--dry-run", "--name", "t1"]
    result = runner.invoke(app, [*argv, "--subnet", "10.99.1.0/24", "--cfs-period-ms", "20"])
    assert result.exit_code == 0, result.output
    flat = _flat(result.output)
    assert "dry run: nothing created" in flat
    assert "bridge est1br on subnet 10.99.1.0/24, address 10.99.1.1" in flat
    assert "/sys/fs/cgroup/cpu/edgesplit-testbed-t1 (cpu.shares 1024)" in flat
    assert "quotas per 20 ms CFS period" in flat
    # one row per device: namespace, bridge-side veth, address, cgroup, quota (cfs_quota_us)
    assert "cam0 es-t1-0 est1h0 10.99.1.2 node0 0.1 core (2000) 1024" in flat, result.output
    assert "pi0 es-t1-1 est1h1 10.99.1.3 node1 0.15 core (3000) 2048" in flat
    assert "5 device node(s)" in flat
    assert "28 shaped direction(s)" in flat  # 5 x 4 between devices + 4 back to the driver + 4 out
    assert "driver pi0 10.99.1.3" in flat
    assert "cannot run it yet" not in flat


def test_up_dry_run_says_why_this_host_cannot_run_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_root() -> None:
        raise ConfigError("the testbed ... needs root")

    monkeypatch.setattr(api_testbed, "check_host", not_root)
    result = runner.invoke(app, ["testbed", "up", str(TESTBED), "--dry-run"])
    assert result.exit_code == 0, result.output
    flat = _flat(result.output)
    assert "estbbr" in flat
    assert "this host cannot run it yet: the testbed ... needs root" in flat


def test_up_dry_run_checks_the_name_and_subnet() -> None:
    bad_name = runner.invoke(app, ["testbed", "up", str(TESTBED), "--dry-run", "--name", "TB"])
    assert isinstance(bad_name.exception, ConfigError)
    assert "1-5 lower-case letters or digits" in str(bad_name.exception)
    argv = ["testbed", "up", str(TESTBED), "--dry-run", "--subnet", "8.8.8.0/24"]
    public = runner.invoke(app, argv)
    assert isinstance(public.exception, ConfigError)
    assert "private" in str(public.exception)


@pytest.mark.parametrize("command", ["status", "down"])
def test_status_and_down_take_no_cluster_file(command: str) -> None:
    result = runner.invoke(app, ["testbed", command, "cluster.toml"])
    assert isinstance(result.exception, ConfigError), result.output
    message = str(result.exception)
    assert f"`testbed {command}` takes no cluster file" in message
    assert "--name" in message
    assert "Ignored" not in _flat(runner.invoke(app, ["testbed", command, "--help"]).output)


@pytest.mark.parametrize("command", ["status", "down"])
@pytest.mark.parametrize("name", ["TB", "toolongname", "", "a/b", "../x"])
def test_status_and_down_check_the_name_first(command: str, name: str) -> None:
    result = runner.invoke(app, ["testbed", command, "--name", name])
    assert isinstance(result.exception, ConfigError), result.output
    assert "1-5 lower-case letters or digits" in str(result.exception)


def test_status_of_a_valid_name_reads_its_state(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no testbed 'zz9'"):
        lifecycle.status("zz9", tmp_path)  # the real function: reads a state file, nothing else
