"""Reference data vendored with edgesplit, each folder with its upstream licence.

- `pipeedge/` (BSD-3-Clause, University of Southern California): PipeEdge's published per-sublayer
  measurements of ViT-Base/Large on two edge boards (`models.yml`, `device_types.yml`).
- `protran/` (BSD-3-Clause, Shikhar Tuli and Jha Lab): ProTran's measured latency, energy and peak
  power of 686 BERT-style architectures on 7 devices (EdgeTran).

See README.md in this folder for what each file holds. Nothing here is code; no other edgesplit
module is imported.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATA_DIR", "PIPEEDGE_DIR", "PROTRAN_DIR"]

DATA_DIR = Path(__file__).resolve().parent
PIPEEDGE_DIR = DATA_DIR / "pipeedge"
PROTRAN_DIR = DATA_DIR / "protran"
