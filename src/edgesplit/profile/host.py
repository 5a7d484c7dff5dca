"""The device kind of this host, as profiles record it. Stdlib only."""

from __future__ import annotations

import re

from edgesplit.envinfo import environment

__all__ = ["host_device_kind"]


def host_device_kind() -> str:
    """e.g. "host-amd-epyc-2c": CPU model (shortened) and core count."""
    env = environment()
    cpu = re.sub(r"[^a-z0-9]+", "-", str(env["cpu"]).lower()).strip("-")
    cpu = re.sub(r"-(processor|cpu|with|radeon).*$", "", cpu)[:32].strip("-")
    return f"host-{cpu or 'cpu'}-{env['num_cpus']}c"
