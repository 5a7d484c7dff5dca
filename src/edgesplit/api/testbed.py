"""A heterogeneous cluster on one host, and the survey that writes `cluster.toml` + `profile.json`.

- `start_testbed` / `describe_testbed` / `stop_testbed`: every device of a cluster file a Ray
  node in its own network namespace, under a CPU quota, behind kernel-shaped links;
  `preview_testbed` says what `start_testbed` would create, creating nothing (no root needed).
- `survey_cluster`: profile a model's units on every device of a running Ray cluster (a testbed
  or real boards) and measure every pair's link with the runtime's transport (testbed/survey.py).
- `survey_generation_profile`: a decoder's decode/prefill unit times measured in place on every
  device of a surveyed cluster, per kind: the `generate plan` input, with nothing typed.
- `planning_cluster`: the latency the testbed cannot put on the wire (the runtime adds it at
  the sender: `RuntimeConfig.link_shaping = "latency"`).

Ray is imported only when a survey runs (it reads its auth mode when first imported).

Example:
    >>> from pathlib import Path
    >>> from edgesplit.api import testbed
    >>> state = testbed.start_testbed(Path("examples/testbed.toml"))  # doctest: +SKIP
    >>> result = testbed.survey_cluster(state.address, "vit-base", Path("out"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgesplit.core.cluster import Cluster, load_cluster
from edgesplit.errors import ConfigError
from edgesplit.testbed import TestbedLayout, TestbedState, TestbedStatus, plan_layout
from edgesplit.testbed import down as _down
from edgesplit.testbed import restart_node as _restart_node
from edgesplit.testbed import status as _status
from edgesplit.testbed import up as _up
from edgesplit.testbed.cgroups import CFS_PERIOD_US, quota_us
from edgesplit.testbed.latency import planning_cluster
from edgesplit.testbed.layout import check_name
from edgesplit.testbed.state import DEFAULT_STATE_DIR, state_path
from edgesplit.testbed.system import CPU_CGROUP_MOUNT, check_host

if TYPE_CHECKING:
    from edgesplit.planners.generation import GenerationProfile
    from edgesplit.testbed.survey import SurveyOptions, SurveyProgress, SurveyResult

__all__ = [
    "DEFAULT_STATE_DIR",
    "TestbedLayout",
    "TestbedPreview",
    "TestbedState",
    "TestbedStatus",
    "check_survey",
    "describe_testbed",
    "planning_cluster",
    "preview_testbed",
    "restart_device",
    "running_testbed",
    "start_testbed",
    "stop_testbed",
    "survey_cluster",
    "survey_generation_profile",
    "survey_options",
    "token_file_for",
]


def start_testbed(
    cluster_file: Path,
    *,
    name: str = "tb",
    subnet: str | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
    timeout_s: float = 300.0,
    cpu_shares: int = 1024,
    cfs_period_us: int = 100_000,
    progress: Callable[[str], None] | None = None,
) -> TestbedState:
    """Stand up `cluster_file` as testbed `name`; see `edgesplit.testbed.up`.

    Raises:
        ConfigError: not root, a tool missing, a bad file, or the testbed already up.
        DeviceUnavailableError: a Ray node did not start or join in time.
    """
    check_name(name)  # before the root check: a bad name is the first thing to fix
    return _up(
        cluster_file,
        name=name,
        subnet=subnet,
        state_dir=state_dir,
        timeout_s=timeout_s,
        cpu_shares=cpu_shares,
        cfs_period_us=cfs_period_us,
        progress=progress,
    )


@dataclass(frozen=True, slots=True)
class TestbedPreview:
    """What `start_testbed` would create for a cluster file (`testbed up --dry-run`).

    `layout` names every namespace, veth pair, address, cgroup and shaped link; the quotas are
    cfs_quota_us per `cfs_period_us` (-1: no quota). `host_problem` is why this host cannot run
    it now (not root, a tool or the cpu controller missing), `already_up` whether testbed
    `layout.name` has a state file here.
    """

    cluster: Cluster
    layout: TestbedLayout
    cpu_shares: int
    cfs_period_us: int
    cgroup_mount: Path
    state_file: Path
    host_problem: str | None
    already_up: bool

    def quota_us(self, cpu_quota: float | None) -> int:
        """A device's cfs_quota_us for `cpu_quota` cores (-1: unlimited)."""
        return quota_us(cpu_quota, self.cfs_period_us)


def preview_testbed(
    cluster_file: Path,
    *,
    name: str = "tb",
    subnet: str | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
    cpu_shares: int = 1024,
    cfs_period_us: int = CFS_PERIOD_US,
) -> TestbedPreview:
    """The namespaces, bridge, subnet, cgroup quotas and shaped links `start_testbed` would
    create, computed and checked (cluster file, name, subnet) without creating anything or
    needing root; the host's readiness is read, not changed.

    Raises:
        ConfigError: a bad cluster file, name or subnet (as `start_testbed` would).
    """
    check_name(name)
    cluster = load_cluster(cluster_file)
    layout = plan_layout(cluster, name, subnet)
    try:
        check_host()
        problem = None
    except ConfigError as e:
        problem = str(e)
    return TestbedPreview(
        cluster=cluster,
        layout=layout,
        cpu_shares=cpu_shares,
        cfs_period_us=cfs_period_us,
        cgroup_mount=CPU_CGROUP_MOUNT,
        state_file=state_path(name, state_dir),
        host_problem=problem,
        already_up=state_path(name, state_dir).exists(),
    )


def describe_testbed(name: str = "tb", state_dir: Path = DEFAULT_STATE_DIR) -> TestbedStatus:
    """The recorded testbed with live process counts.

    Raises:
        ConfigError: a bad name, or no testbed of that name is up.
    """
    check_name(name)
    return _status(name, state_dir)


def stop_testbed(name: str = "tb", state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Remove every trace of testbed `name` (also after a crash); returns what was removed.

    Raises:
        ConfigError: a bad name (checked before anything is looked at), or not root.
    """
    check_name(name)
    return _down(name, state_dir)


def restart_device(name: str, device: str, state_dir: Path = DEFAULT_STATE_DIR) -> None:
    """Start a crashed, hung or cut-off device's Ray node again (its link back up)."""
    _restart_node(name, device, state_dir)


def survey_options(
    *,
    batch_size: int = 1,
    min_window_s: float = 1.0,
    link_seconds: float = 1.0,
    kind_tolerance: float = 0.15,
    overhead_window_s: float = 2.0,
) -> SurveyOptions:
    """`SurveyOptions` without importing Ray in the caller."""
    from edgesplit.testbed.survey import SurveyOptions

    return SurveyOptions(
        batch_size=batch_size,
        min_window_s=min_window_s,
        link_seconds=link_seconds,
        kind_tolerance=kind_tolerance,
        overhead_window_s=overhead_window_s,
    )


def _token_auth(token_file: Path | None) -> None:
    # Ray reads its auth mode once, when first imported: set it before.
    if "ray" in sys.modules and os.environ.get("RAY_AUTH_MODE") != "token":
        raise ConfigError(
            "Ray was imported before token auth was set; run with RAY_AUTH_MODE=token in the "
            "environment (`export RAY_AUTH_MODE=token`, as `edgesplit testbed up` prints)"
        )
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if token_file is not None:
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file)


def check_survey(address: str, model: str, token_file: Path | None = None) -> None:
    """The checks a survey's inputs fail in seconds, for a caller to run before it shows any
    progress: `model` names a preset or checkpoint, `address` is HEAD_IP:PORT and something
    listens there.

    Raises:
        ConfigError: an unknown model (with the nearest name) or a malformed address.
        DeviceUnavailableError: nothing listens at `address`.
    """
    from edgesplit.models import model_spec_from_name

    model_spec_from_name(model)
    _token_auth(token_file)
    # The same check `join_cluster` makes before Ray's minutes-long retry loop.
    from edgesplit.runtime.cluster import check_reachable

    check_reachable(address)


def survey_cluster(
    address: str,
    model: str,
    out_dir: Path,
    *,
    options: SurveyOptions | None = None,
    source: str | None = None,
    devices: list[str] | None = None,
    token_file: Path | None = None,
    progress: SurveyProgress | None = None,
) -> tuple[SurveyResult, Path, Path]:
    """Survey the Ray cluster at `address` for `model` (a preset or checkpoint directory) and
    write `out_dir/cluster.toml` and `out_dir/profile.json`.

    Returns:
        (the measurements, the cluster file, the profile file).

    Raises:
        ConfigError: an unknown model or source device.
        DeviceUnavailableError: no device nodes, or a probe failed or timed out.
    """
    _token_auth(token_file)
    from edgesplit.models import model_spec_from_name
    from edgesplit.testbed.survey import survey, write_survey

    result = survey(
        address,
        model_spec_from_name(model),
        options=options,
        source=source,
        devices=devices,
        out_dir=out_dir,
        progress=progress,
    )
    header = (
        f"Written by `edgesplit cluster survey --address {address} -m {model}`: kinds and\n"
        "memory per device, every pair's bandwidth (transport goodput) and latency (half the\n"
        "median round trip) as measured. Re-run the survey after devices join or leave."
    )
    testbed = running_testbed(address)
    if testbed is not None:
        # No netem here: the runtime adds the file's latency at the sender (`run --link-shaping
        # latency`), so the plan must count it next to what the wire showed.
        result = result.model_copy(
            update={"cluster": planning_cluster(result.cluster, testbed.cluster)}
        )
        header += (
            f"\nTestbed '{testbed.name}': each link's latency = measured + the testbed file's\n"
            "latency, which the runtime adds at the sender: run with --link-shaping latency."
        )
    cluster_path, profile_path = write_survey(result, out_dir, header)
    return result, cluster_path, profile_path


def survey_generation_profile(
    address: str,
    model: str,
    surveyed: Cluster,
    out_dir: Path,
    *,
    prompt_length: int = 32,
    cache_length: int = 128,
    repeats: int = 5,
    token_file: Path | None = None,
) -> tuple[GenerationProfile, Path]:
    """Measure `model`'s decode and prefill unit times in place on every device of `surveyed`
    (the cluster a survey wrote) and write `out_dir/generation_profile.json`, one time per kind
    (the mean over the kind's devices), for `plan_generation` / `edgesplit generate plan`.

    Raises:
        DeviceUnavailableError: a device has no live node, or its probe failed or timed out.
    """
    import statistics

    from edgesplit.core.profile import ModelProfile
    from edgesplit.core.schema import write_json_file
    from edgesplit.models import model_spec_from_name
    from edgesplit.planners.generation import GenerationProfile
    from edgesplit.testbed.survey import survey_generation

    if token_file is not None:
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    names = list(surveyed.device_names)
    raw = survey_generation(
        address,
        model_spec_from_name(model),
        names,
        prompt_length=prompt_length,
        cache_length=cache_length,
        repeats=repeats,
    )
    by_kind: dict[str, list[str]] = {}
    for name in names:
        by_kind.setdefault(surveyed.device(name).kind, []).append(name)

    def merged(phase: str) -> ModelProfile:
        first: ModelProfile = raw[names[0]][phase]
        units = []
        for index, unit in enumerate(first.units):
            times = {
                kind: statistics.fmean(raw[d][phase].units[index].time_s[d] for d in devices)
                for kind, devices in by_kind.items()
            }
            units.append(unit.model_copy(update={"time_s": times, "cpu_time_s": None}))
        return ModelProfile.model_validate(
            {
                **first.model_dump(),
                "units": [u.model_dump() for u in units],
                "source": "edgesplit survey in place on every device (median step / CPU share)",
            }
        )

    profile = GenerationProfile(
        model=model,
        decode=merged("decode"),
        prefill=merged("prefill"),
        prompt_length=prompt_length,
        cache_length=cache_length,
        kv_bytes_per_token=tuple(raw[names[0]]["kv_bytes_per_token"]),
    )
    path = write_json_file(profile, out_dir / "generation_profile.json")
    return profile, path


def running_testbed(address: str, state_dir: Path = DEFAULT_STATE_DIR) -> TestbedState | None:
    """The testbed whose Ray head is `address`, if one is up on this host."""
    if not state_dir.is_dir():
        return None
    from edgesplit.testbed.state import load_state

    for path in sorted(state_dir.glob("*.json")):
        state = load_state(path.stem, state_dir)
        if state is not None and state.address == address:
            return state
    return None


def token_file_for(address: str, state_dir: Path = DEFAULT_STATE_DIR) -> Path | None:
    """The token file of the testbed whose Ray head is `address`, if one is up on this host."""
    state = running_testbed(address, state_dir)
    return None if state is None else Path(state.token_path)
