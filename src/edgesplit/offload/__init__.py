"""A-MOT adaptive offloading: a weak device sends sampled patches; the edge server reconstructs.

Public surface (what `api.serve_offload` and the CLI use); see docs/offload.md. Importing this
package is cheap: torch-heavy modules load only when a function needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgesplit.offload.policy import OffloadTables

if TYPE_CHECKING:
    from edgesplit.offload.server import ServerConfig

__all__ = ["DEFAULT_WEIGHTS_DIR", "load_tables", "serve"]

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def load_tables(weights_dir: Path | None = None) -> OffloadTables:
    """The policy's offline-measured options (tables.json beside the checkpoints).

    Raises:
        ConfigError: no tables there (run `make models`, which runs the benchmark's calibration).
    """
    from edgesplit.core.schema import read_json_file

    path = (weights_dir or DEFAULT_WEIGHTS_DIR) / "tables.json"
    return read_json_file(OffloadTables, path)


def serve(config: ServerConfig, weights_dir: Path | None = None, *, tiny: bool = False) -> None:
    """Run the edge server (FastAPI + uvicorn) until interrupted; see server.serve."""
    from edgesplit.offload.server import serve as _serve

    _serve(config, weights_dir, tiny=tiny)
