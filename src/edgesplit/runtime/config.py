"""Runtime knobs (`RuntimeConfig`) and scheduled fault injections (`ScheduledFault`).

Every duration carries its unit in the name. Fault injection is a separate argument of
`run_plan`, never a field of the production config. Imports core only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from edgesplit.core.schema import FrozenModel
from edgesplit.errors import ConfigError

__all__ = ["ComputeMode", "FaultAction", "RuntimeConfig", "ScheduledFault", "parse_kill"]

ComputeMode = Literal["real", "emulated"]
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
    shape_links: bool = True
    ray_address: str | None = None  # None: embedded local cluster (or the one already running)
    placement: Literal["auto", "resource", "local"] = "auto"
    host: str = "127.0.0.1"  # address the driver and local stages bind; node IP across machines
    # Ray's own node health checks (docs/architecture.md §6.4): seconds, not Ray's default tens.
    health_check_period_ms: Annotated[int, Field(ge=50)] = 500
    health_check_timeout_ms: Annotated[int, Field(ge=50)] = 500
    health_check_failure_threshold: Annotated[int, Field(ge=1)] = 3
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
    progress_period_s: Positive = 0.5


FaultAction = Literal["kill", "stop"]


@dataclass(frozen=True)
class ScheduledFault:
    """At `at_s` after the first request, do `action` to `device`'s stage process.

    `kill` = SIGKILL of the stage process (ray.kill when it is not on this host); `stop` = SIGSTOP
    (a hang); a callable receives the stage's info dict ({"pid", "ip", "node_id", "device"}) and
    does anything else (crash a node, cut a link).
    """

    device: str
    at_s: float
    action: FaultAction | Callable[[dict[str, Any]], None] = "kill"


_KILL = re.compile(r"^(?P<device>[^@]+)@(?P<seconds>[0-9]*\.?[0-9]+)$")


def parse_kill(text: str) -> ScheduledFault:
    """'pi0@3.5' -> kill pi0's stage process 3.5 s into the run."""
    match = _KILL.match(text.strip())
    if not match:
        raise ConfigError(f"--kill expects DEVICE@SECONDS (e.g. pi0@3.5), got {text!r}")
    return ScheduledFault(device=match["device"], at_s=float(match["seconds"]))
