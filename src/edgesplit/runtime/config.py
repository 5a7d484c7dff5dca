"""Runtime knobs (`RuntimeConfig`) and scheduled fault injections (`ScheduledFault`).

Every duration carries its unit in the name. Fault injection is a separate argument of
`run_plan`, never a field of the production config. Imports core only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from edgesplit.core.cluster import Cluster
from edgesplit.core.schema import FrozenModel
from edgesplit.errors import ConfigError

__all__ = [
    "ComputeMode",
    "FaultAction",
    "LinkShaping",
    "RuntimeConfig",
    "ScheduledFault",
    "check_run_devices",
    "parse_fault",
    "parse_kill",
    "unfired_note",
]

logger = logging.getLogger(__name__)

ComputeMode = Literal["real", "emulated"]
# full: bandwidth and latency of cluster.toml emulated by the sender; latency: only the latency
# (the links' bandwidth is shaped elsewhere, e.g. by the kernel's htb on the testbed); off: none.
LinkShaping = Literal["full", "latency", "off"]
Positive = Annotated[float, Field(gt=0)]


class RuntimeConfig(FrozenModel):
    """How a plan is executed. Defaults suit the embedded local cluster.

    `time_scale` shrinks emulated time: compute sleeps `profiled × time_scale`, links move
    `bandwidth / time_scale` and wait `latency × time_scale`, so a 5 s period can be measured in
    0.1 s. Reported measured figures are divided back by `time_scale` (`scaled: true` in reports).
    """

    compute: ComputeMode = "emulated"
    max_in_flight: Annotated[int, Field(ge=1, le=256)] = 4  # unacked micro-batches per link
    time_scale: Positive = 1.0
    link_shaping: LinkShaping = "full"
    ray_address: str | None = None  # None: embedded local cluster (or the one already running)
    placement: Literal["auto", "resource", "local"] = "auto"
    host: str = "127.0.0.1"  # address the driver and local stages bind; node IP across machines
    # Ray's own node health checks (docs/architecture.md §6.4): seconds, not Ray's default tens.
    health_check_period_ms: Annotated[int, Field(ge=50)] = 500
    health_check_timeout_ms: Annotated[int, Field(ge=50)] = 500
    health_check_failure_threshold: Annotated[int, Field(ge=1)] = 3
    worker_niceness: Annotated[int, Field(ge=0, le=19)] = 0  # Ray's default, 15, starves stages
    heartbeat_period_s: Positive = 0.25
    hang_timeout_s: Positive = 2.0  # an actor silent this long is declared hung and killed
    stream_loss_grace_s: Positive = 0.5  # a stream closed by its peer this long -> peer failed
    batch_deadline_s: Positive = 3.0  # a micro-batch computing longer than this (plus its
    # profiled time) marks its stage stalled
    startup_timeout_s: Positive = 180.0
    halt_timeout_s: Positive = 10.0
    standby_devices: tuple[str, ...] = ()
    replan: bool = True  # on failure, re-plan over survivors when no standby is left
    seed: int = 0
    # No trust in what arrives (docs/runtime.md): a stage refuses a frame declaring more than
    # `frame_bound_factor` x the largest tensor bytes its plan sends it (at least 1 MiB, at most
    # `max_frame_bytes`), admits `max_connections` peers, retries a request whose executor
    # raised `max_retries` times, and is declared failed after `failing_after_errors` in a row.
    frame_bound_factor: Annotated[float, Field(ge=1)] = 8.0
    max_frame_bytes: Annotated[int, Field(gt=0)] = 64 << 20
    max_connections: Annotated[int, Field(ge=1)] = 4
    max_retries: Annotated[int, Field(ge=0, le=3)] = 1
    failing_after_errors: Annotated[int, Field(ge=1)] = 5
    progress_period_s: Positive = 0.5

    def shaped_link(
        self, bandwidth_bytes_per_s: float, latency_s: float
    ) -> tuple[float | None, float] | None:
        """What the sender emulates of a link (`link_shaping`, time-scaled): (bytes/s or None
        = no bandwidth limit, latency seconds), or None for an unshaped link."""
        if self.link_shaping == "off":
            return None
        latency = latency_s * self.time_scale
        if self.link_shaping == "latency":
            return (None, latency) if latency > 0 else None
        return bandwidth_bytes_per_s / self.time_scale, latency

    def shaped(self, cluster: Cluster, a: str, b: str) -> tuple[float | None, float] | None:
        """`shaped_link` of the cluster's link a -> b (None on one device: no link)."""
        return None if a == b else self.shaped_link(*cluster.link(a, b))


FaultAction = Literal["kill", "stop", "crash", "cut"]
FAULT_ACTIONS: tuple[FaultAction, ...] = ("kill", "stop", "crash", "cut")


@dataclass(frozen=True)
class ScheduledFault:
    """At `at_s` after the first request, do `action` to `device`'s stage.

    The stage actor executes the fault on itself (a Ray call), so it reaches any node:
    `kill` = SIGKILL of the stage process; `stop` = SIGSTOP (a hang); `crash` = SIGKILL of the
    device's Ray node (its raylet) and stage process, for a device on its own node; `cut` = the
    device's data streams and heartbeats go silent (a cut link). A callable receives the stage's
    info dict ({"pid", "host", "node_id", "device"}) and does anything else.
    """

    device: str
    at_s: float
    action: FaultAction | Callable[[dict[str, Any]], None] = "kill"

    @property
    def kind(self) -> str:
        return self.action if isinstance(self.action, str) else "custom"


_FAULT = re.compile(r"^(?P<kind>[a-z]+):(?P<device>[^@]+)@(?P<seconds>[0-9]*\.?[0-9]+)$")


def parse_kill(text: str) -> ScheduledFault:
    """'pi0@3.5' -> kill pi0's stage process 3.5 s into the run."""
    match = _FAULT.match(f"kill:{text.strip()}")  # the --fault form, its kind fixed
    if ":" in text or not match:
        raise ConfigError(f"--kill expects DEVICE@SECONDS (e.g. pi0@3.5), got {text!r}")
    return ScheduledFault(device=match["device"], at_s=float(match["seconds"]))


def parse_fault(text: str) -> ScheduledFault:
    """'stop:pi0@2' -> hang pi0's stage 2 s into the run (KIND in kill, stop, crash, cut)."""
    match = _FAULT.match(text.strip())
    if not match or match["kind"] not in FAULT_ACTIONS:
        raise ConfigError(
            f"--fault expects KIND:DEVICE@SECONDS with KIND in {', '.join(FAULT_ACTIONS)} "
            f"(e.g. stop:pi0@2), got {text!r}"
        )
    kind: FaultAction = match["kind"]  # type: ignore[assignment]  # checked just above
    return ScheduledFault(device=match["device"], at_s=float(match["seconds"]), action=kind)


def check_run_devices(
    stage_devices: Sequence[str],
    standbys: Sequence[str] = (),
    faults: Sequence[ScheduledFault] = (),
) -> None:
    """No standby already runs a stage, and every fault names a device that runs a stage or
    stands by (else it would silently never fire: a drill that exercised nothing); a
    ConfigError names the first device that breaks this."""
    for name in standbys:
        if name in stage_devices:
            raise ConfigError(
                f"standby device '{name}' already runs a stage; stage devices: "
                f"{list(stage_devices)}"
            )
    for fault in faults:
        if fault.device not in stage_devices and fault.device not in standbys:
            extra = f", standbys: {list(standbys)}" if standbys else ""
            raise ConfigError(
                f"fault for '{fault.device}', which runs no stage; stage devices: "
                f"{list(stage_devices)}{extra}"
            )


def unfired_note(faults: Sequence[ScheduledFault], ended_s: float) -> str:
    """The report note (also logged) for faults the run ended before: nothing was injected."""
    if not faults:
        return ""
    names = ", ".join(f"{f.kind}:{f.device}@{f.at_s:g}" for f in faults)
    note = f"fault(s) {names} did not fire: the run ended first (at {ended_s:.2f} s)"
    logger.warning(note)
    return note
