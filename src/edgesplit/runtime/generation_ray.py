"""`RayLauncher`: generation stages as Ray actors, one per device, on the device's Ray node.

The `WorkerLauncher` of runtime/generation.py for the Ray engine. Each stage is a `num_cpus=0`
actor placed on the node carrying the device's custom resource (when some node carries it, else
locally) that runs `generation_worker` as its child process, so `kill -9` of a stage is a real
process death, seen by the driver as soon as the actor's `wait()` returns. Ray comes through
runtime/cluster.py (the only module that imports it); the driver, streams and replay are
`GenerationPipeline`'s, unchanged.

Example:
    >>> launcher = RayLauncher()  # doctest: +SKIP
    >>> with GenerationPipeline(spec, stages, launcher=launcher) as pipe:  # doctest: +SKIP
    ...     pipe.generate(requests)
    >>> launcher.close()  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgesplit.runtime.cluster import RaySession
from edgesplit.runtime.config import RuntimeConfig
from edgesplit.runtime.generation import WorkerHandle

__all__ = ["RayLauncher"]


@dataclass
class RayLauncher:
    """Launch each device's generation stage under a Ray actor (joins or starts Ray lazily)."""

    config: RuntimeConfig = field(default_factory=RuntimeConfig)
    env: dict[str, str] = field(default_factory=dict)
    preload: bool = True  # standbys import torch/transformers and warm up while they wait
    _session: RaySession | None = None

    @property
    def session(self) -> RaySession:
        if self._session is None:
            self._session = RaySession.open(self.config, [])
        return self._session

    def launch(
        self, device: str, driver_address: tuple[str, int], standby: bool = False
    ) -> WorkerHandle:
        argv = [
            "--driver",
            f"{driver_address[0]}:{driver_address[1]}",
            "--device",
            device,
            *(["--preload"] if self.preload and standby else []),
        ]
        return self.session.start_generation_worker(device, argv, self.env)

    def close(self) -> None:
        """Shut Ray down if this launcher started it (a joined cluster is left running)."""
        if self._session is not None:
            self._session.close()
            self._session = None
